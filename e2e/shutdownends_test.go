package e2e

import (
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A connection held when the broker stops gets its end in its principal's
// seen record, as its DISCONNECT would have written: the use counts for
// conflict_window from the shutdown, not from the connect (for a device
// connected longer than the window, before, it was forgotten at once).
func TestShutdownEndsHeldConnections(t *testing.T) {
	e := newEnv(t)
	_, code := e.dial(as("127.0.91.1", "held-1", "alice", "alice-pw")) // held open until the test ends
	require.EqualValues(t, accepted, code)
	e.waitLive("held-1", 1)
	rec := e.seenRecord("held-1", "alice")
	require.NotNil(t, rec)
	assert.Nil(t, rec["disconnected_ms"], "live: no end yet")

	before := time.Now().UnixMilli()
	require.NoError(t, e.broker.Signal(syscall.SIGTERM))
	_, done := e.broker.Wait(5 * time.Second)
	require.True(t, done, "mosquitto did not stop")
	after := time.Now().UnixMilli()

	assert.Equal(t, "0", e.redis.CLI("HLEN", "guard:conn:held-1"), "nothing left live")
	rec = e.seenRecord("held-1", "alice")
	require.NotNil(t, rec)
	end, ok := rec["disconnected_ms"].(float64)
	require.True(t, ok, "alice's record has an end: %v", rec)
	assert.GreaterOrEqual(t, int64(end), before)
	assert.LessOrEqual(t, int64(end), after)
}
