package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// atk73: a lying client picks usernames under which an operator left a hash
// (guard:block:username:<name>) or a stray string sits at the throttle's
// counter (rate:guard:fail:anysource:username:<name>), rotating them and a
// 65 535-byte one, to pass an IP ban, stop its failures counting, or get
// others refused; across SIGHUP and FLUSHALL. Redis user without channels,
// redis_unavailable deny.
func TestAtk73LyingUsernamesOverStrayKeys(t *testing.T) {
	e := envWithoutBroker(t)
	e.redis.CLI("ACL", "SETUSER", "guard", "on", ">guard-pw", "~guard:*", "~rate:guard:*", "resetchannels", "+@all")
	long := strings.Repeat("L", 65535)
	sum := sha256.Sum256([]byte(long))
	longForm := "sha256:" + hex.EncodeToString(sum[:])
	names := []string{"evil-h", "evil-s", "evil-hs", long}
	plant := func() {
		e.redis.CLI("HSET", "guard:block:username:evil-h", "reason", "hash")
		e.redis.CLI("HSET", "guard:block:username:evil-hs", "reason", "hash")
		e.redis.CLI("SET", "rate:guard:fail:anysource:username:evil-s", "stray")
		e.redis.CLI("SET", "rate:guard:fail:anysource:username:evil-hs", "stray")
		e.redis.CLI("SET", "rate:guard:fail:anysource:username:"+longForm, "stray")
		e.redis.CLI("HSET", "guard:block:username:"+longForm, "reason", "hash")
	}
	plant()
	e.broker = startBroker(t, e.conf("auth_opt_redis_username guard", "auth_opt_redis_password guard-pw",
		"auth_opt_redis_unavailable deny", "auth_opt_fail_limit 5", "auth_opt_fail_window 1m"))
	require.True(t, e.broker.WaitOutput("replica loaded", 10*time.Second))
	n := 0
	round := func(tag string, banned, guesser, other string) {
		t.Helper()
		e.redis.CLI("SET", "guard:block:ip:"+banned, "operator ban")
		time.Sleep(300 * time.Millisecond)
		for i, u := range names {
			n++
			assert.EqualValues(t, refused, e.connect(as(banned, fmt.Sprintf("b-%d", n), u, "x")), "%s: banned IP with name %d", tag, i)
			assert.EqualValues(t, accepted, e.connect(as(other, fmt.Sprintf("a-%d", n), "alice", "alice-pw")), "%s: alice after name %d", tag, i)
		}
		// guesser: 8 wrong passwords over the rotating names, then the right one for bob.
		for i := 0; i < 8; i++ {
			n++
			e.connect(as(guesser, fmt.Sprintf("g-%d", n), names[i%len(names)], "wrong"))
			n++
			assert.EqualValues(t, accepted, e.connect(as(other, fmt.Sprintf("a-%d", n), "alice", "alice-pw")), "%s: alice after guess %d", tag, i)
		}
		n++
		assert.EqualValues(t, refused, e.connect(as(guesser, fmt.Sprintf("g-%d", n), "bob", "bob-pw")), "%s: 8 failures from %s must have banned it", tag, guesser)
	}
	round("start", "127.0.73.2", "127.0.73.3", "127.0.73.4")
	e.broker.Reload()
	require.True(t, e.broker.WaitOutput("Reloading config", 5*time.Second))
	time.Sleep(500 * time.Millisecond)
	round("sighup", "127.0.73.12", "127.0.73.13", "127.0.73.14")
	e.redis.CLI("FLUSHALL")
	time.Sleep(time.Second)
	plant()
	time.Sleep(500 * time.Millisecond)
	round("flushall", "127.0.73.22", "127.0.73.23", "127.0.73.24")
	out := e.broker.Output()
	assert.NotContains(t, out, "unreachable")
}

// atk73: a stray string at bob's throttle counter and a hash at his username
// ban must not stop his username's failures from every source counting: 25
// wrong guesses from 25 addresses throttle bob (username_fail_limit 20), so
// a new address with bob's password is refused while his known one passes;
// the same after FLUSHALL with the keys planted again.
func TestAtk73StrayThrottleCounterStillCounts(t *testing.T) {
	e := envWithoutBroker(t)
	e.redis.CLI("ACL", "SETUSER", "guard", "on", ">guard-pw", "~guard:*", "~rate:guard:*", "resetchannels", "+@all")
	plant := func() {
		e.redis.CLI("HSET", "guard:block:username:bob", "reason", "hash")
		e.redis.CLI("SET", "rate:guard:fail:anysource:username:bob", "stray")
	}
	plant()
	e.broker = startBroker(t, e.conf("auth_opt_redis_username guard", "auth_opt_redis_password guard-pw",
		"auth_opt_redis_unavailable deny", "auth_opt_fail_limit 5", "auth_opt_username_fail_limit 20"))
	require.True(t, e.broker.WaitOutput("replica loaded", 10*time.Second))
	for r, tag := range []string{"start", "flushall"} {
		base := 10 + r*100
		require.EqualValues(t, accepted, e.connect(as(fmt.Sprintf("127.0.74.%d", base-9), "bob-home", "bob", "bob-pw")), "%s: bob at home", tag)
		for i := 0; i < 25; i++ {
			e.connect(as(fmt.Sprintf("127.0.74.%d", base+i), fmt.Sprintf("g-%d-%d", r, i), "bob", "wrong"))
			assert.EqualValues(t, accepted, e.connect(as("127.0.75.1", fmt.Sprintf("a-%d-%d", r, i), "alice", "alice-pw")), "%s: alice after guess %d", tag, i)
		}
		assert.EqualValues(t, refused, e.connect(as(fmt.Sprintf("127.0.74.%d", base+50), "bob-new", "bob", "bob-pw")), "%s: bob throttled from a new address", tag)
		assert.EqualValues(t, accepted, e.connect(as(fmt.Sprintf("127.0.74.%d", base-9), "bob-home2", "bob", "bob-pw")), "%s: bob at home still", tag)
		if r == 0 {
			e.redis.CLI("FLUSHALL")
			time.Sleep(time.Second)
			plant()
			time.Sleep(500 * time.Millisecond)
		}
	}
	assert.NotContains(t, e.broker.Output(), "unreachable")
}
