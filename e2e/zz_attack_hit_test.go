package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A hostile tester's attacks on issue 12's cache-hit cuts (branch atk-hit).

// hitSrc is a distinct loopback source per attempt, so that no fail limit
// of one address decides in place of the password.
func hitSrc(i int) string { return fmt.Sprintf("127.0.%d.%d", 60+i/200, 1+i%200) }

// The verification cache's hash-sum memo (7308f7c) against a password file
// rewritten over and over: each round gives alice a new password whose hash
// has the same length as the last (mosquitto_passwd's $7$), reloads, and
// warms the cache with the new password many times (the memo holds the new
// string, the old one's string is dropped by the reload and its memory
// free for the collector to reuse). The old password must be refused on
// the first CONNECT after the reload is in force, never by a stale hit.
func TestAtkHitFileRotationOldPasswordRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a broker")
	}
	e := newEnv(t, "auth_opt_fail_limit 1000000", "auth_opt_username_fail_limit 1000000")
	const rounds = 12
	n := 0
	prev := "alice-pw"
	for r := 0; r < rounds; r++ {
		// Warm the cache and the memo with the current password.
		for i := 0; i < 20; i++ {
			require.EqualValues(t, accepted, e.connect(as(hitSrc(n), fmt.Sprintf("w%d", n), "alice", prev)), "round %d warm", r)
			n++
		}
		next := fmt.Sprintf("rot-%02d-pw", r)
		line := passwdLine(t, "alice", next)
		bob := passwdLine(t, "bob", "bob-pw")
		require.NoError(t, os.WriteFile(e.passwd, []byte(line+"\n"+bob+"\n"), 0o600))
		mark := strings.Count(e.broker.Output(), "loaded 2 users from")
		e.broker.Reload()
		eventually(t, 5*time.Second, func() bool {
			return strings.Count(e.broker.Output(), "loaded 2 users from") > mark
		}, "round %d: reload", r)
		// From here on the old password is refused: every try, no stale hit.
		for i := 0; i < 5; i++ {
			require.EqualValues(t, refused, e.connect(as(hitSrc(n), fmt.Sprintf("o%d", n), "alice", prev)), "round %d: old password %q let in after the reload", r, prev)
			n++
			require.EqualValues(t, accepted, e.connect(as(hitSrc(n), fmt.Sprintf("n%d", n), "alice", next)), "round %d: new password", r)
			n++
		}
		prev = next
	}
	t.Logf("%d CONNECTs over %d rotations: no old password let in", n, rounds)
}

// The same against the redis backend: a user's hash changed with redis-cli
// SET to another of the same length. Once the new password works (the
// replica has the change), the old one never does.
func TestAtkHitRedisUserRotationOldPasswordRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a broker")
	}
	e := newEnv(t, "auth_opt_backend redis", "auth_opt_fail_limit 1000000", "auth_opt_username_fail_limit 1000000")
	hashOf := func(pw string) string { return strings.SplitN(passwdLine(t, "dave", pw), ":", 2)[1] }
	prev := "dave-0"
	e.redis.CLI("SET", "guard:user:dave", hashOf(prev))
	n := 0
	eventually(t, 5*time.Second, func() bool {
		n++
		return e.connect(as(hitSrc(n), "d0", "dave", prev)) == accepted
	}, "dave's first hash")
	const rounds = 15
	for r := 1; r <= rounds; r++ {
		for i := 0; i < 10; i++ {
			require.EqualValues(t, accepted, e.connect(as(hitSrc(n), fmt.Sprintf("w%d", n), "dave", prev)))
			n++
		}
		next := fmt.Sprintf("dave-%d", r)
		h := hashOf(next)
		e.redis.CLI("SET", "guard:user:dave", h)
		start := time.Now()
		eventually(t, 5*time.Second, func() bool {
			n++
			return e.connect(as(hitSrc(n), fmt.Sprintf("p%d", n), "dave", next)) == accepted
		}, "round %d: new hash in force", r)
		took := time.Since(start)
		for i := 0; i < 5; i++ {
			require.EqualValues(t, refused, e.connect(as(hitSrc(n), fmt.Sprintf("o%d", n), "dave", prev)), "round %d: old password let in after the new one worked", r)
			n++
		}
		if r == 1 || r == rounds {
			t.Logf("round %d: new hash in force after %v", r, took.Round(time.Millisecond))
		}
		prev = next
	}
}
