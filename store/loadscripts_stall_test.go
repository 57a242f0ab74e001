package store

import (
	"context"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// stallProxy forwards loopback connections to addr; on the first one it
// holds Redis's bytes after its first reply (the handshake's) for stall:
// past the loading calls' timeout, and within the next command's.
func stallProxy(t *testing.T, addr string, stall time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	var first atomic.Bool
	first.Store(true)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r, err := net.Dial("tcp", addr)
			if err != nil {
				c.Close()
				continue
			}
			hold := first.Swap(false)
			go func() { _, _ = io.Copy(r, c); r.Close() }()
			go func() {
				defer c.Close()
				buf := make([]byte, 64<<10)
				for n := 0; ; n++ {
					k, err := r.Read(buf)
					if k > 0 {
						if hold && n == 1 {
							time.Sleep(stall)
						}
						if _, err := c.Write(buf[:k]); err != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

// A new connection whose loading calls' replies do not come within its
// timeout is failed, and go-redis closes it: kept (atk87), its next
// command read the first loading call's reply (a Lua error for a SET), and
// every command after it the reply of the one before.
func TestLoadScriptsTimeoutClosesTheConnection(t *testing.T) {
	r := testenv.StartRedis(t)
	addr := stallProxy(t, r.Addr, 450*time.Millisecond)
	s := New(Options{Addrs: []string{addr}, Timeout: 300 * time.Millisecond, BackgroundTimeout: 300 * time.Millisecond, Tracking: true}, keys.Builder{Prefix: "guard:"}).Background()
	t.Cleanup(func() { s.Close() })
	rdb := s.Client()
	ctx := context.Background()
	err := rdb.Set(ctx, "guard:a", "1", 0).Err()
	if err != nil {
		assert.NotContains(t, err.Error(), "user_script", "the SET read a loading call's reply")
	}
	time.Sleep(600 * time.Millisecond) // the stall over
	for i := range 8 {
		k := "guard:k" + string(rune('a'+i))
		require.NoError(t, rdb.Set(ctx, k, k, 0).Err(), "set %d", i)
		v, err := rdb.Get(ctx, k).Result()
		require.NoError(t, err)
		require.Equal(t, k, v, "a reply out of step")
	}
	assert.True(t, strings.HasPrefix(strings.TrimSpace(r.CLI("GET", "guard:ka")), "guard:ka"))
}
