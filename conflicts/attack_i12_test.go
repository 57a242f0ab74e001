package conflicts

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/mosquitto-guard/mosquitto-guard/store"
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

// slowStore answers every WriteConns after d, as a stalled Redis within
// the batch's timeout.
type slowStore struct {
	*memStore
	d time.Duration
}

func (s *slowStore) WriteConns(ctx context.Context, ws []store.ConnWrite, w time.Duration) ([]store.State, error) {
	time.Sleep(s.d)
	return s.memStore.WriteConns(ctx, ws, w)
}

// Stop is seen between batches: a worker with a backlog of many batches
// (a flood, Redis slow) returns after the batch in hand, not after the
// whole backlog, so that Close (closeBound 1.5 s) does not leave it
// writing to a closed store. The channel worker went back to its select
// after each batch.
func TestAttackI12StopSeenBetweenBatches(t *testing.T) {
	st := &slowStore{memStore: newMemStore(), d: 100 * time.Millisecond}
	c, clk, _ := tracker(t, st, testOptions())
	for i := 0; i < queueSize; i++ { // 16 batches
		c.Disconnected(fmt.Sprintf("dev-%d", i), c.NewConn("alice", "192.0.2.1", clk.now()))
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { c.Run(stop); close(done) }()
	time.Sleep(250 * time.Millisecond) // lingered, and handling its first batch
	start := time.Now()
	close(stop)
	select {
	case <-done:
		assert.Less(t, time.Since(start), 600*time.Millisecond, "the worker went on with its backlog after stop")
	case <-time.After(5 * time.Second):
		t.Fatal("the worker did not stop")
	}
}
