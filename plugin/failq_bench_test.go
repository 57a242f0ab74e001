package plugin

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/ratelimit"
)

// nopCounter counts nothing, keeps nothing.
type nopCounter struct{}

func (nopCounter) FailAttempt(context.Context, keys.Scope, string, *ratelimit.Attempt) (*ratelimit.Ban, error) {
	return nil, nil
}
func (nopCounter) ThrottleFailAttempt(context.Context, string, int, *ratelimit.Attempt) (*ratelimit.Throttle, error) {
	return nil, nil
}
func (nopCounter) Reset(context.Context, keys.Scope, string) error { return nil }

// BenchmarkFailedConnect is a refused CONNECT with a wrong password, each
// from a new IP (no local limit stops it before its count), under every
// fail scope: what a flood of guesses costs the broker thread, its queued
// failure included. Short: a device's client ID and username; long:
// 60 000 bytes of each.
func BenchmarkFailedConnect(b *testing.B) {
	path := filepath.Join(b.TempDir(), "passwd")
	if err := os.WriteFile(path, []byte(alicePasswd), 0o600); err != nil {
		b.Fatal(err)
	}
	addrs := make([]string, 1<<17)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("10.%d.%d.%d", i>>16, i>>8&255, i&255)
	}
	for _, c := range []struct {
		name string
		n    int
	}{{"short", 8}, {"long", 60000}} {
		b.Run(c.name, func(b *testing.B) {
			cfg, err := config.Parse(map[string]string{"password_file": path, "fail_scopes": "ip,clientid,username"})
			if err != nil {
				b.Fatal(err)
			}
			g, err := NewWith(cfg, Output{Log: func(Level, string) {}}, Deps{Store: newFakeStore(), Counter: nopCounter{}})
			if err != nil {
				b.Fatal(err)
			}
			defer g.Close()
			// One buffer for the client ID and the username, as cgo's
			// connectStrings makes them, rewritten for each CONNECT: a new
			// source, a new client ID, a new username each time.
			buf := []byte(strings.Repeat("i", c.n) + strings.Repeat("u", c.n))
			ids := unsafe.String(&buf[0], len(buf))
			c := Client{Handle: 1, ClientID: ids[:c.n], Username: ids[c.n:], IDs: ids, HasUsername: true, Password: []byte("wrong")}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				c.Address = addrs[i%len(addrs)]
				putHex(buf, i)
				putHex(buf[len(c.ClientID):], i)
				if g.Authenticate(c).Result != Deny {
					b.Fatal("let in")
				}
			}
		})
	}
}

// putHex writes i's 8 low hex digits at the start of b.
func putHex(b []byte, i int) {
	for k := 7; k >= 0; k-- {
		b[k] = "0123456789abcdef"[i&15]
		i >>= 4
	}
}
