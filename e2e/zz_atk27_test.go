package e2e

import (
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Was a DEFECT (atk27; cc99c8b's keep rule, real brokers; about 65 s), fixed: after a broker's
// ordinary shutdown, a principal that held the client ID until the stop is
// left out of the next finding. conflict_window 1m. Alice holds "held-27"
// on broker-a; she also connects on broker-b with the same client ID and
// leaves at once: her seen record is that short connection, ended at E.
// Carol uses "held-27" on broker-b at E+31 s (flagged with alice; her
// write keeps the seen hash another minute). broker-a keeps alice's device
// until E+61 s and is stopped (SIGTERM): its cleanup writes alice's end
// only over an OLDER connection's record, so the short broker-b record
// (connected later, ended earlier) is kept and her use stays ended at E.
// Bob taking "held-27" right after the stop is flagged with carol only,
// though alice held it a second before (and with no carol, once the hash
// outlives E+window, he would not be flagged at all).
func TestAtk27ShutdownKeepsAnEarlierEndedRecord(t *testing.T) {
	a := envWithoutBroker(t)
	a.addUser("carol", "carol-pw")
	a.broker = startBroker(t, a.conf("auth_opt_broker_name broker-a", "auth_opt_conflict_window 1m"))
	b := &env{t: t, dir: a.dir, redis: a.redis, passwd: a.passwd}
	b.broker = startBroker(t, b.conf("auth_opt_broker_name broker-b", "auth_opt_conflict_window 1m"))
	_, code := a.dial(as("127.0.93.1", "held-27", "alice", "alice-pw")) // held until broker-a stops
	require.EqualValues(t, accepted, code)
	a.waitLive("held-27", 1)
	require.EqualValues(t, accepted, b.connect(as("127.0.93.2", "held-27", "alice", "alice-pw")))
	var shortEnd float64
	eventually(t, 5*time.Second, func() bool {
		rec := b.seenRecord("held-27", "alice")
		e, ok := rec["disconnected_ms"].(float64)
		shortEnd = e
		return ok
	}, "alice's short connection on broker-b has ended")
	e := time.UnixMilli(int64(shortEnd))

	time.Sleep(time.Until(e.Add(31 * time.Second)))
	require.EqualValues(t, accepted, b.connect(as("127.0.93.4", "held-27", "carol", "carol-pw")))
	f := b.waitFindings(1)
	assert.JSONEq(t, `["alice","carol"]`, f[0]["principals"])

	time.Sleep(time.Until(e.Add(61 * time.Second)))
	stop := time.Now().UnixMilli()
	require.NoError(t, a.broker.Signal(syscall.SIGTERM))
	_, done := a.broker.Wait(5 * time.Second)
	require.True(t, done, "broker-a did not stop")
	rec := b.seenRecord("held-27", "alice")
	require.NotNil(t, rec)
	end, _ := rec["disconnected_ms"].(float64)
	assert.GreaterOrEqual(t, int64(end), stop, "alice held held-27 on broker-a until its stop: %v", rec)

	require.EqualValues(t, accepted, b.connect(as("127.0.93.3", "held-27", "bob", "bob-pw")))
	f = b.waitFindings(2)
	assert.JSONEq(t, `["alice","bob","carol"]`, f[1]["principals"], "alice held held-27 until a second before bob")
}
