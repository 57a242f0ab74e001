package e2e

import (
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Was a DEFECT (missed finding; fixed: a relist evaluates the live connections), with real brokers and Redis: Redis restarts
// empty (FLUSHALL) while alice holds flag-30 on broker-a, and bob takes
// flag-30 on broker-b before broker-a records its connections again (here
// broker-a is held with SIGSTOP for that second, as a slow or busy broker
// would be). broker-a's relist then writes alice live beside bob: both
// principals hold the client ID at once, as in TestConflictAcrossBrokers,
// where bob's connect is flagged. Nobody flags it now: a relist is "not
// evaluated" (conflicts/tracker.go Relisted; conflicts/lease.go
// relistConns). README: the worker "writes each as its connect did".
//
// Observed: two live entries, no finding for flag-30. Expected: a
// cross-principal finding naming alice and bob.
func TestAtk30RelistBesideAnotherPrincipalNotFlagged(t *testing.T) {
	a, b := twoBrokers(t, "auth_opt_broker_lease 3s")
	eventually(t, 5*time.Second, func() bool { return a.redis.CLI("ZCARD", "guard:brokers") == "2" }, "both brokers hold a lease")
	alice, code := a.dial(as("127.0.130.1", "flag-30", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	a.waitLive("flag-30", 1)
	time.Sleep(time.Second)

	require.NoError(t, a.broker.Signal(syscall.SIGSTOP))
	cont := func() { _ = a.broker.Signal(syscall.SIGCONT) }
	t.Cleanup(cont)
	a.redis.CLI("FLUSHALL") // Redis restarted empty
	_, code = b.dial(as("127.0.130.2", "flag-30", "bob", "bob-pw"))
	require.EqualValues(t, accepted, code, "flag mode; alice's entry is gone")
	b.waitLive("flag-30", 1)
	time.Sleep(500 * time.Millisecond) // bob's connect handled by broker-b's worker
	cont()

	eventually(t, 10*time.Second, func() bool { return a.redis.CLI("HLEN", "guard:conn:flag-30") == "2" }, "broker-a records alice again")
	a.logLine("mosquitto-guard: recording this broker's 1 live connections in redis again")
	time.Sleep(2 * time.Second)
	n := 0
	for _, f := range a.findings() {
		if f["clientid"] == "flag-30" {
			n++
		}
	}
	assert.NotZero(t, n, "alice (broker-a) and bob (broker-b) hold flag-30 at once: a finding is due")
	require.NoError(t, alice.Ping(t.Context()), "alice is still connected")
}
