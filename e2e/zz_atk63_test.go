package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// DEFECT. atk61's precedent (TestAtk61UserWithoutTimeLetStart): a user
// that may not run a command of the plugin's scripts is to stop the start
// naming redis_username. A user with every command but PEXPIRE (~* +@all
// -pexpire) starts the broker: the start check's probes (SET ... PX, TIME)
// need no PEXPIRE, while the automatic ban's offence count (ratelimit's
// incrExpire: "ratelimit: ban written, count offence: ERR The user
// executing the script can't run this command"), known sources' PEXPIRE
// and the connection scripts fail on every use: bans never double, the
// throttle's known sources are never kept. Cause: store/settings.go
// checkWrite (the probes stand for SET and TIME only). The store test
// TestAtk63NoPexpireUserPassesCheck shows the runtime refusal.
func TestAtk63UserWithoutPexpireLetStart(t *testing.T) {
	e := envWithoutBroker(t)
	e.redis.CLI("ACL", "SETUSER", "nopx", "on", ">px-pw", "~*", "&*", "+@all", "-pexpire")
	out := testenv.StartMosquittoExpectFail(t, e.conf("auth_opt_redis_username nopx", "auth_opt_redis_password px-pw"), 3*time.Second)
	assert.Contains(t, out, "option redis_username")
}

// HOLDS. The same user given PEXPIRE back (~* +@all) starts the broker:
// the control for the test above.
func TestAtk63UserWithPexpireStarts(t *testing.T) {
	e := envWithoutBroker(t)
	e.redis.CLI("ACL", "SETUSER", "px", "on", ">px-pw", "~*", "&*", "+@all")
	m := testenv.StartMosquitto(t, e.conf("auth_opt_redis_username px", "auth_opt_redis_password px-pw"))
	assert.True(t, m.WaitOutput("mosquitto-guard: ready", 5*time.Second), "not ready:\n%s", m.Output())
	assert.False(t, strings.Contains(m.Output(), "option redis_username"))
}
