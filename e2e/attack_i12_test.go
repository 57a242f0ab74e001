package e2e

import (
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A connection the broker let through just before it stops is still
// recorded: the tracking worker, lingering when cleanup stops it, writes
// what it gathered (cleanup waits for it, closeBound). With the batchq
// worker as first written, the event was dropped and the client ID's use
// never reached guard:seen.
func TestAttackI12ConnectJustBeforeStopRecorded(t *testing.T) {
	e := newEnv(t)
	assert.EqualValues(t, accepted, e.connect(as("127.0.90.1", "late-1", "alice", "alice-pw")))
	require.NoError(t, e.broker.Signal(syscall.SIGTERM)) // within the worker's 100 ms linger
	_, done := e.broker.Wait(3 * time.Second)
	require.True(t, done, "mosquitto did not stop")
	assert.Equal(t, "1", e.redis.CLI("HLEN", "guard:seen:late-1"), "the connect before the stop was not recorded")
}
