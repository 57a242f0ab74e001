package e2e

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestAtk50TwinFlashesUncounted: DEFECT (see conflicts'
// TestAtk50TwinsQuietFoldedNotCounted for the unit form). Under
// clientid_conflict flag, takeover_limit 3: alice's device 1 connects to
// broker-a and leaves (broker-a's read: quiet); device 2 connects to
// broker-b and stays. Then, within 10 s of broker-a's quiet read, device
// 1 connects to broker-a ten times, each connection closed at once after
// its CONNACK (a one-shot publisher sharing the device's client ID), each
// live beside device 2. Expected: each connect counted as a duplicate
// (e27b97f: "a device of the same principal live on another broker is a
// takeover, counted"), a duplicate-connection finding. Observed: the
// count printed; a connect whose end reaches the worker in the same
// batch is folded away with it (no command, not evaluated):
// guard:takeovers "" (none of 10) and no finding, where the held control
// counts 10 and reports. Runs: failed 3 of 3 (control passed 1 of 1).
func TestAtk50TwinFlashesUncounted(t *testing.T) {
	t.Skip("within 10 s of the quiet read, a stated limit (README, \"A device reconnecting in a loop is checked against its twins every 10 s\"); its bound: TestFoldedTwinFlashesCountedWithin10s")
	atk50TwinFlashes(t, "atk50-twin-flash", 0)
}

// TestAtk50TwinFlashesHeldCounted: HOLDS (the control). The same, each of
// device 1's connections held 300 ms (its connect and end in two
// batches): counted, a duplicate-connection finding.
func TestAtk50TwinFlashesHeldCounted(t *testing.T) {
	atk50TwinFlashes(t, "atk50-twin-held", 300*time.Millisecond)
}

func atk50TwinFlashes(t *testing.T, id string, hold time.Duration) {
	a, b := twoBrokers(t, "auth_opt_clientid_conflict flag", "auth_opt_takeover_limit 3", "auth_opt_takeover_window 1m")
	d1, code := a.dial(as("127.0.150.1", id, "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	a.waitLive(id, 1)
	_ = d1.Disconnect()
	d1.Close()
	a.waitLive(id, 0)
	d2, code := b.dial(as("127.0.150.2", id, "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	t.Cleanup(func() { d2.Close() })
	b.waitLive(id, 1)
	start := time.Now()
	for i := range 10 {
		c, code := atk29Dial(a, as("127.0.150.1", id, "alice", "alice-pw"))
		require.EqualValues(t, accepted, code, "flash %d", i)
		time.Sleep(hold)
		_ = c.Disconnect()
		c.Close()
		time.Sleep(200 * time.Millisecond)
	}
	loop := time.Since(start)
	time.Sleep(2 * time.Second)
	n := atk47LoggedKind(id, "duplicate-connection", a, b)
	t.Logf("hold %v: 10 flashes in %.1f s beside device 2; guard:takeoverconns=%q; duplicate findings %d", hold, loop.Seconds(), a.redis.CLI("HLEN", "guard:takeoverconns:"+id), n)
	assert.NotZero(t, n, "device 1's ten connections were each live beside device 2 on broker-b (takeover_limit 3): a duplicate-connection finding is due")
}
