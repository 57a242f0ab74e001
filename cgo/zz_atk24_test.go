package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// A hostile tester's attack on 648cb9a and b6cbe47 (branch atk24): issue
// 12's target that a cache hit allocates nothing, over the inputs a
// CONNECT can bring under the interning bound (internMax: client ID,
// username and address together), not the two client IDs
// TestBasicAuthHitAllocs tries: client IDs and usernames of every length
// class around the known-source key's stack buffer (recentKeyBuf, 128
// bytes with the 8-byte length and the source's kind), empty client IDs,
// bytes that are not UTF-8, and the address forms a broker gives
// (IPv4, IPv6, IPv4-mapped IPv6, non-canonical IPv6 text), with conflict
// tracking off and on.
func TestAtk24HitAllocsAnyInput(t *testing.T) {
	testenv.Need(t, "redis-server", "mosquitto_passwd")
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	redis := testenv.StartRedis(t)
	dir := t.TempDir()
	hash := passwdHash(t, dir)
	userLens := []int{1, 8, 50, 64, 100, 119, 120, 150}
	users := make([]string, len(userLens))
	for i, n := range userLens {
		users[i] = strings.Repeat(string(rune('a'+i)), n)
	}
	idOf := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(0x80 + (i*7)%120) // not UTF-8, no NUL
		}
		return string(b)
	}
	addrs := []string{"127.1.0.9", "::1", "2001:db8::7", "::ffff:127.1.0.9", "2001:DB8:0:0:0:0:0:7", "fe80::1%eth0"}
	// Without tracking, every length class; with it, whose worker's own
	// allocations on the runs' events count too (the counts are the
	// process's), a few, each after the worker is idle.
	for _, conflict := range []string{"off", "flag"} {
		t.Run(conflict, func(t *testing.T) {
			idLens, settle := []int{0, 1, 23, 55, 56, 64, 100, 111, 120, 150}, time.Duration(0)
			users := users
			if conflict != "off" {
				idLens, users, settle = []int{9, 64}, users[1:2], 300*time.Millisecond
			}
			ab := newAuthBenchWithUsers(t, redis, dir, hash, users, conflict)
			type input struct {
				c    authClient
				what string
			}
			var ins []input
			for _, u := range users {
				for _, idLen := range idLens {
					for _, addr := range addrs {
						id := idOf(idLen)
						if len(u)+len(id)+len(addr) > internMax {
							continue
						}
						c := authClient{handle: _Ctype_uintptr_t(0x7f0000100000 + 0x400*uintptr(len(ins))), id: cChars(id),
							addr: cChars(addr), username: cChars(u), password: cChars("bench-pw")}
						ab.connect(t, c) // verified once (first user), cached from then on
						ab.disconnect(c)
						ins = append(ins, input{c, fmt.Sprintf("username %d bytes, client ID %d, address %q", len(u), idLen, addr)})
					}
				}
			}
			// The guard's background work on the warm-ups (known sources'
			// and tracking's writes, lingering 100 ms) done before the runs.
			time.Sleep(time.Second)
			var bad []string
			n := len(ins)
			for _, in := range ins {
				c := in.c
				time.Sleep(settle)
				got := hitAllocs(t, ab, c, 40)
				if got >= 0.5 {
					bad = append(bad, fmt.Sprintf("%s: %.2f objects", in.what, got))
				}
			}
			t.Logf("%d inputs tried", n)
			if len(bad) > 0 {
				t.Errorf("cache hits that allocate (%d of %d):\n%s", len(bad), n, strings.Join(bad, "\n"))
			}
		})
	}
}

// newAuthBenchWithUsers is newAuthBenchOf with the users named users.
func newAuthBenchWithUsers(t *testing.T, redis *testenv.Redis, dir, hash string, users []string, conflict string) *authBench {
	return newAuthBenchOf(t, redis, dir, hash, len(users), conflict, func(i int) string { return users[i] })
}
