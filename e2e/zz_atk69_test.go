package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// atk69Others polls alice's CONNECTs for d after one of bob's, and counts
// those refused.
func atk69Others(e *env, round int, d time.Duration) int {
	refused := 0
	deadline := time.Now().Add(d)
	for i := 0; time.Now().Before(deadline); i++ {
		if e.connect(as("127.0.77.3", fmt.Sprintf("alice-%d-%d", round, i), "alice", "alice-pw")) != accepted {
			refused++
		}
		time.Sleep(15 * time.Millisecond)
	}
	return refused
}

// DEFECT: a reply about ONE key that is not WRONGTYPE still marks Redis
// down. An operator's stray string under redis_rate's key of one username
// (rate:guard:fail:anysource:username:bob = "not-a-number": a key of the right type,
// a value redis_rate's script cannot read) makes the script fail with an
// error reply ("ERR user_script:... bad argument #1 to 'max'"). The failure
// queue gives it to health.down (plugin/failures.go: failureQueue.lost), which
// spares only WRONGTYPE (plugin/health.go: health.down): Redis is marked
// down, "unreachable: it refuses the plugin's commands" is logged, and under
// redis_unavailable deny every client is refused until the next ping. Any
// client that says "bob" with a wrong password, from anywhere, keeps the
// broker refusing everyone, as atk68's WRONGTYPE did.
func TestAtk69ScriptErrorOnOneRateKeyIsNoOutage(t *testing.T) {
	e := envWithoutBroker(t)
	e.redis.CLI("SET", "rate:guard:fail:anysource:username:bob", "not-a-number")
	e.broker = startBroker(t, e.conf("auth_opt_redis_unavailable deny"))
	require.True(t, e.broker.WaitOutput("replica loaded", 10*time.Second))
	require.EqualValues(t, accepted, e.connect(as("127.0.77.2", "alice-0", "alice", "alice-pw")), "control")
	refused := 0
	for i := 0; i < 5; i++ {
		// Each from its own address: no IP ban; bob's username is never
		// banned (its count fails).
		e.connect(as(fmt.Sprintf("127.0.77.%d", 10+i), fmt.Sprintf("bob-%d", i), "bob", "wrong"))
		refused += atk69Others(e, i, 250*time.Millisecond)
	}
	out := e.broker.Output()
	assert.NotContains(t, out, "unreachable", "a reply about one key is no outage")
	assert.Zero(t, refused, "alice refused after bob's failures:\n%s", out)
}

// HOLDS (no outage) / DEFECT (the key is not named): an operator's hash
// under redis_rate's key of one username. redis_rate's script meets a
// WRONGTYPE, which health.down spares now (store.IsWrongType), but the
// failure counter's error names no key ("ratelimit: count failure:
// WRONGTYPE ... script: <sha>, on @user_script:1."): the line says
// "delete or rename it" without saying which key, where b55d2c0 made the
// lookup's, live conns' and the claim throttle's name it
// (ratelimit/ratelimit.go: Limiter.Fail, ThrottleFailTracked).
func TestAtk69FailCountWrongTypeLineNamesKey(t *testing.T) {
	e := envWithoutBroker(t)
	e.redis.CLI("HSET", "rate:guard:fail:anysource:username:bob", "f", "a hash where redis_rate's string belongs")
	e.broker = startBroker(t, e.conf("auth_opt_redis_unavailable deny"))
	require.True(t, e.broker.WaitOutput("replica loaded", 10*time.Second))
	require.EqualValues(t, accepted, e.connect(as("127.0.77.2", "alice-0", "alice", "alice-pw")), "control")
	refused := 0
	for i := 0; i < 3; i++ {
		e.connect(as(fmt.Sprintf("127.0.77.%d", 20+i), fmt.Sprintf("bob-%d", i), "bob", "wrong"))
		refused += atk69Others(e, i, 250*time.Millisecond)
	}
	require.True(t, e.broker.WaitOutput("a key of another type", 5*time.Second))
	out := e.broker.Output()
	assert.NotContains(t, out, "unreachable")
	assert.Zero(t, refused)
	var line string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "a key of another type") {
			line = l
		}
	}
	assert.Contains(t, line, `"rate:guard:fail:anysource:username:bob"`, "the line names the key")
}
