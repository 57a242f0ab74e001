package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// DEFECT. A Redis user refused EVAL (~* &* +@all -eval) starts the broker
// once the start check's one-line probe script is in Redis's script cache
// (shared by every user: another broker, or any client, ran it): the probe
// runs it with EVALSHA and asks EVAL only on NOSCRIPT. The plugin's own
// scripts (redis_rate's, the offence count) are not cached on this fresh
// Redis: their EVALSHA answers NOSCRIPT, their EVAL NOPERM, and a source
// failing its password well past fail_limit is never banned. Either the
// start stops naming redis_username, or the ban is written. Cause:
// store/settings.go checkWrite (scriptProbe.Run: EVAL not asked when the
// script is cached).
func TestAtk65NoEvalUserStartsWhenProbeCached(t *testing.T) {
	e := envWithoutBroker(t)
	e.redis.CLI("ACL", "SETUSER", "noeval", "on", ">ne-pw", "~*", "&*", "+@all", "-eval")
	e.redis.CLI("SCRIPT", "LOAD", "return redis.call('PTTL', KEYS[1])")
	conf := e.conf("auth_opt_redis_username noeval", "auth_opt_redis_password ne-pw", "auth_opt_fail_limit 2",
		"auth_opt_clientid_conflict off", "auth_opt_username_fail_limit 0")
	b := testenv.StartMosquitto(t, conf)
	if !b.WaitOutput("mosquitto-guard: ready", 5*time.Second) {
		assert.Contains(t, b.Output(), "option redis_username", "stopped, but not naming redis_username")
		return
	}
	e.broker = b
	for i := 0; i < 6; i++ {
		e.connect(as("127.0.0.65", fmt.Sprint("e65-", i), "alice", "wrong"))
	}
	banned := assert.Eventually(t, func() bool { return e.redis.CLI("EXISTS", "guard:block:ip:127.0.0.65") == "1" }, 3*time.Second, 20*time.Millisecond,
		"the broker started with a user refused EVAL, and 6 failures over fail_limit 2 wrote no ban; log:\n%s", b.Output())
	require.True(t, banned)
}
