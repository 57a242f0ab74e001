package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// clientid_max_bytes and username_max_bytes in a real broker: a CONNECT
// at the bound is let in, one byte over is refused (CONNACK 5) with its
// rule and bound in the log, and a wrong password over the bound is not
// checked, so it is not counted: with fail_limit 1, ten of them from one
// address ban nothing, where two checked ones do.
func TestTooLongClientIDAndUsernameRefused(t *testing.T) {
	e := newEnv(t, "auth_opt_clientid_max_bytes 256", "auth_opt_username_max_bytes 5", "auth_opt_fail_limit 1", "log_type all")
	id256, id257 := strings.Repeat("d", 256), strings.Repeat("d", 257)

	assert.EqualValues(t, accepted, e.connect(as("127.0.60.1", id256, "alice", "alice-pw")), "a client ID at the bound")
	assert.EqualValues(t, refused, e.connect(as("127.0.60.1", id257, "alice", "alice-pw")), "one byte over")
	e.logLine("event=refused", "ip=127.0.60.1", "rule=clientid-too-long", "max_bytes=256", "client_id_bytes=257")
	assert.EqualValues(t, refused, e.connect(as("127.0.60.1", "dev", "alice6", "x")), "a username over its bound")
	e.logLine("event=refused", "rule=username-too-long", "max_bytes=5")

	// Ten wrong passwords over the bound: never checked, never counted.
	for i := 0; i < 10; i++ {
		require.EqualValues(t, refused, e.connect(as("127.0.60.2", id257, "alice", "wrong")))
	}
	time.Sleep(300 * time.Millisecond) // a counted failure reaches Redis within a batch (100 ms)
	assert.Empty(t, e.redis.CLI("KEYS", "guard:block:ip:127.0.60.2"), "over-long CONNECTs counted as failures")
	assert.EqualValues(t, accepted, e.connect(as("127.0.60.2", id256, "alice", "alice-pw")), "the address is not banned")

	// Checked ones are: fail_limit 1, so the second bans the address.
	for i := 0; i < 2; i++ {
		require.EqualValues(t, refused, e.connect(as("127.0.60.3", "dev", "alice", "wrong")))
	}
	eventually(t, 3*time.Second, func() bool { return e.redis.CLI("EXISTS", "guard:block:ip:127.0.60.3") == "1" },
		"two checked failures did not ban 127.0.60.3")
}
