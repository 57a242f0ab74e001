package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// atk53: a README audit (commit 648f3ea).

// DEFECT. README, Reloads (line 1286-1291): "Mosquitto re-checks every
// client it holds after a reload ... mosquitto-guard recognises these
// re-checks: a refusal then is logged but never counted toward bans, and a
// pass admits nothing. ... The re-check refuses by operators' bans only
// ... its refusals are logged with `reauth=true`." With
// redis_unavailable deny and Redis down, a SIGHUP (a logrotate) drops
// every connected client: the re-check is refused with
// rule=redis-unavailable (plugin/connect.go:59-60), logged without
// reauth=true. Redis down, README line 1257: "with `deny`, every client is
// refused" says nothing of the connected ones at a reload.
func TestAtk53SighupWhileRedisDownUnderDeny(t *testing.T) {
	e := newEnv(t, "auth_opt_redis_unavailable deny")
	c, code := e.dial(as("127.0.53.1", "atk53-dev", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	e.redis.Stop()
	time.Sleep(time.Second) // seen down (700 ms)
	require.False(t, c.Closed(200*time.Millisecond), "disconnected by Redis going down alone")
	e.broker.Reload()
	time.Sleep(time.Second)
	var lines []string
	for _, l := range strings.Split(e.broker.Output(), "\n") {
		if strings.Contains(l, "event=refused") {
			lines = append(lines, l)
		}
	}
	t.Logf("refusal lines: %q", lines)
	closed := c.Closed(500 * time.Millisecond)
	assert.False(t, closed, "README: the re-check after a SIGHUP refuses by operators' bans only; a connected device was dropped at SIGHUP while Redis was down")
	for _, l := range lines {
		assert.Contains(t, l, "reauth=true", "README: the re-check's refusals are logged with reauth=true")
	}
}
