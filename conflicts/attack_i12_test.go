package conflicts

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// Events queued just before the broker stops are still written: the worker
// that is lingering when stop closes handles what it gathered, as the
// channel-based worker did (its batch returned on stop and was handled).
// Close waits for the worker (closeBound), so the write has time to land.
func TestAttackI12StopHandlesLingeringBatch(t *testing.T) {
	st := newMemStore()
	c, clk, _ := tracker(t, st, testOptions())
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { c.Run(stop); close(done) }()
	time.Sleep(20 * time.Millisecond) // the worker parked, its lease renewed

	conn := c.NewConn("alice", "192.0.2.1", clk.now())
	c.Connected("dev-1", conn, nil)
	time.Sleep(10 * time.Millisecond) // the worker woke and lingers (linger is 100 ms)
	close(stop)
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("the worker did not stop")
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	assert.Positive(t, st.writes, "the connect queued before stop was dropped at stop")
}
