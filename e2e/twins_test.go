package e2e

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The bound of the quiet skip for connections shorter than the conflict
// worker's 100 ms batch (README, "A device reconnecting in a loop is
// checked against its twins every 10 s"), with real brokers: alice's
// device 1 connects to broker-a and leaves (broker-a's read: quiet);
// device 2 connects to broker-b and stays; device 1 then connects to
// broker-a every 500 ms for 13 s, each connection closed right after its
// CONNACK. Within 10 s of broker-a's quiet read none is counted (atk50's
// TestAtk50TwinFlashesUncounted); the first connect after that reads,
// finds device 2 live, and each after it is counted: a duplicate-connection
// finding (takeover_limit 3) comes within about 12 s.
func TestFoldedTwinFlashesCountedWithin10s(t *testing.T) {
	const id = "twin-flash-bound"
	a, b := twoBrokers(t, "auth_opt_clientid_conflict flag", "auth_opt_takeover_limit 3", "auth_opt_takeover_window 1m")
	d1, code := a.dial(as("127.0.151.1", id, "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	a.waitLive(id, 1)
	quietRead := time.Now()
	_ = d1.Disconnect()
	d1.Close()
	a.waitLive(id, 0)
	d2, code := b.dial(as("127.0.151.2", id, "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	t.Cleanup(func() { d2.Close() })
	b.waitLive(id, 1)
	var found time.Duration
	for time.Since(quietRead) < 13*time.Second {
		c, code := atk29Dial(a, as("127.0.151.1", id, "alice", "alice-pw"))
		require.EqualValues(t, accepted, code)
		_ = c.Disconnect()
		c.Close()
		if found == 0 && atk47LoggedKind(id, "duplicate-connection", a, b) > 0 {
			found = time.Since(quietRead)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if found == 0 && atk47LoggedKind(id, "duplicate-connection", a, b) > 0 {
		found = time.Since(quietRead)
	}
	t.Logf("duplicate-connection finding %v after broker-a's quiet read; guard:takeoverconns=%q", found, a.redis.CLI("HLEN", "guard:takeoverconns:"+id))
	require.NotZero(t, found, "device 1 flashing beside device 2 for 13 s: a duplicate-connection finding is due")
	assert.Less(t, found, 13*time.Second)
}
