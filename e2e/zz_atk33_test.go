package e2e

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Was a DEFECT (fixed: a relist evaluates nothing of a connection Redis listed before its write) (real brokers, about 15 s; the unit form is conflicts'
// TestAtk33RelistAfterLapseReReportsOldOverlap): a broker back from a
// pause past its lease re-reports, at its relist, an overlap that the
// other principal's own connect reported already, with nothing flushed.
// README, Client-ID conflicts: a relisted connection is "checked against
// the client ID's connections made since it was, live or ended within
// conflict_window: another principal that took the client ID while it was
// not listed (after a flush, before the relist) is flagged then, as its
// connect would have been had the entry been there"; findings_fold:
// "repeats of a finding within this are counted into it, not reported
// again". broker_lease 2s, findings_fold 1s.
//
// alice holds atk33-lapse on broker-a; bob connects it on broker-b while
// alice is listed (one finding: alice,bob) and leaves. 1.5 s later
// broker-a is paused (SIGSTOP) until broker-b has reaped it, then resumed:
// its renewal finds its lease gone and relists alice (twice: once more 6 s
// on).
//
// Observed: more findings for atk33-lapse after the relist (bob's one use
// reported again at each relist). Expected: one: bob used the client ID
// once, while alice was listed, and his connect reported it.
func TestAtk33PausedBrokerReReportsAtRelist(t *testing.T) {
	const id = "atk33-lapse"
	a, b := twoBrokers(t, "auth_opt_broker_lease 2s", "auth_opt_redis_timeout 2s", "auth_opt_findings_fold 1s")
	eventually(t, 5*time.Second, func() bool { return a.redis.CLI("ZCARD", "guard:brokers") == "2" }, "both brokers hold a lease")
	alice, code := a.dial(as("127.0.133.1", id, "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	a.waitLive(id, 1)
	time.Sleep(time.Second)
	require.EqualValues(t, accepted, b.connect(as("127.0.133.2", id, "bob", "bob-pw")))
	eventually(t, 5*time.Second, func() bool { return atk32Findings(a, id) == 1 }, "bob's connect reports alice,bob")
	eventually(t, 5*time.Second, func() bool {
		rec := b.seenRecord(id, "bob")
		return rec != nil && rec["disconnected_ms"] != nil
	}, "bob's use ended")
	time.Sleep(1500 * time.Millisecond) // past findings_fold

	require.NoError(t, a.broker.Signal(syscall.SIGSTOP))
	t.Cleanup(func() { _ = a.broker.Signal(syscall.SIGCONT) })
	eventually(t, 10*time.Second, func() bool {
		return a.redis.CLI("ZCARD", "guard:brokers") == "1" && a.redis.CLI("HLEN", "guard:conn:"+id) == "0"
	}, "broker-b reaps the paused broker-a")
	require.NoError(t, a.broker.Signal(syscall.SIGCONT))
	eventually(t, 10*time.Second, func() bool { return a.redis.CLI("HLEN", "guard:conn:"+id) == "1" }, "broker-a relists alice")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, alice.Ping(ctx), "alice is still connected to broker-a")
	time.Sleep(8 * time.Second) // the second relist, 6 s after the lapse

	n := atk32Findings(a, id)
	t.Logf("findings for %s: %d; %v", id, n, a.findings())
	assert.Equal(t, 1, n, "bob's one use, reported by his connect, is not reported again by broker-a's relist")
}
