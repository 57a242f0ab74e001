package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// DEFECT. A right setup refused: under backend defer with
// clientid_conflict off the plugin never runs TYPE (guardctl alone does:
// explain, unban's delAuto), yet the start check's probe calls it always
// (README: "every key command the configuration uses there: SET, GET,
// PTTL, TYPE, ... always"), so a Redis user given every command but TYPE
// (~* &* +@all -type) stops the broker's start naming redis_username.
// Cause: store/settings.go writeProbe. The store test
// TestAtk64UnusedCommandsRefuseStart shows the same for ZSCORE,
// ZRANGEBYSCORE and ZREM with known sources and no conflict tracking.
func TestAtk64DeferUserWithoutTypeStarts(t *testing.T) {
	e := envWithoutBroker(t)
	e.redis.CLI("ACL", "SETUSER", "notype", "on", ">nt-pw", "~*", "&*", "+@all", "-type")
	m := testenv.StartMosquitto(t, e.conf("auth_opt_backend defer", "auth_opt_clientid_conflict off",
		"auth_opt_redis_username notype", "auth_opt_redis_password nt-pw"))
	assert.True(t, m.WaitOutput("mosquitto-guard: ready", 5*time.Second), "not ready:\n%s", m.Output())
	assert.False(t, strings.Contains(m.Output(), "option redis_username"))
}

// DEFECT. A user given every command but ZRANGE (~* &* +@all -zrange)
// starts the broker with known sources on (username_fail_limit 20, the
// default): the probe asks ZRANGEBYSCORE, while known sources load with
// ZRANGE ... BYSCORE (plugin/known.go startLoad), refused at every
// throttled username's load, which marks Redis down (health.down).
// atk61/atk63's precedent: such a user stops the start naming
// redis_username. Cause: store/settings.go writeProbe.
func TestAtk64UserWithoutZrangeLetStart(t *testing.T) {
	e := envWithoutBroker(t)
	e.redis.CLI("ACL", "SETUSER", "nozr", "on", ">zr-pw", "~*", "&*", "+@all", "-zrange")
	out := testenv.StartMosquittoExpectFail(t, e.conf("auth_opt_redis_username nozr", "auth_opt_redis_password zr-pw"), 3*time.Second)
	assert.Contains(t, out, "option redis_username")
}

// DEFECT. Under backend redis a user given every command but SCAN
// (~* &* +@all -scan) starts the broker, after the whole first-load wait
// (10 s on the broker thread): the replica's load is refused for good,
// and until a first load the redis backend refuses every client (README:
// "until it is allowed the redis backend refuses every client"), the
// failure the start check exists to stop (atk55: the broker started,
// Redis down for good). The check asks GET, SETNX, ... but never SCAN.
// Cause: store/settings.go checkAnswering/checkWrite (SCAN not asked;
// SettingsNeeds has no field for the replica's or redis backend's needs).
func TestAtk64RedisBackendUserWithoutScanLetStart(t *testing.T) {
	e := envWithoutBroker(t)
	e.redis.CLI("ACL", "SETUSER", "nosc", "on", ">sc-pw", "~*", "&*", "+@all", "-scan")
	out := testenv.StartMosquittoExpectFail(t, e.conf("auth_opt_backend redis",
		"auth_opt_redis_username nosc", "auth_opt_redis_password sc-pw"), 14*time.Second)
	assert.Contains(t, out, "option redis_username")
}

// DEFECT. The same for a user without scripting (~* &* +@all
// -@scripting), common where Lua is banned: under backend defer with
// clientid_conflict off the plugin runs no script at all (its scripts
// count failures, bans, known sources and conflicts), yet the start check
// runs one and stops the start naming redis_username. Cause:
// store/settings.go checkWrite (writeProbe run whatever SettingsNeeds).
func TestAtk64DeferUserWithoutScriptingStarts(t *testing.T) {
	e := envWithoutBroker(t)
	e.redis.CLI("ACL", "SETUSER", "nolua", "on", ">nl-pw", "~*", "&*", "+@all", "-@scripting")
	m := testenv.StartMosquitto(t, e.conf("auth_opt_backend defer", "auth_opt_clientid_conflict off",
		"auth_opt_redis_username nolua", "auth_opt_redis_password nl-pw"))
	assert.True(t, m.WaitOutput("mosquitto-guard: ready", 5*time.Second), "not ready:\n%s", m.Output())
}
