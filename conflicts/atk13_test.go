package conflicts

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// hungStore is a store whose connection writes wait until let is closed:
// Redis slow or stopped (SIGSTOP) while a burst's batch is written.
type hungStore struct {
	*memStore
	in  chan struct{} // closed when a write first waits
	let chan struct{}
}

func (h *hungStore) WriteConns(ctx context.Context, ws []store.ConnWrite, w time.Duration) ([]store.State, error) {
	select {
	case <-h.in:
	default:
		close(h.in)
	}
	<-h.let
	return h.memStore.WriteConns(ctx, ws, w)
}

// Attack on d228753: the heap release waits while TrimDue says the worker
// holds a burst's buffers. It held them, grown for the burst, from the
// moment it took the batch, but said so only once the batch's round trip
// to Redis was over: with Redis slow or stopped for that round trip the
// broker's allocation is quiet, and the release came at its first quiet
// tick, the buffers live at its collection (what d228753 was to prevent).
func TestAtk13TrimDueWhileBatchWaitsForRedis(t *testing.T) {
	st := &hungStore{memStore: newMemStore(), in: make(chan struct{}), let: make(chan struct{})}
	c, clk, _ := tracker(t, st, testOptions())
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { c.Run(stop); close(done) }()
	released := false
	release := func() {
		if !released {
			released = true
			close(st.let)
		}
	}
	defer func() { release(); close(stop); <-done }()
	for i := 0; i < 3000; i++ { // one linger's worth: a batch of 3000
		c.Connected(fmt.Sprintf("dev-%d", i), c.NewConn("alice", "192.0.2.1", clk.now()), nil)
	}
	select {
	case <-st.in:
	case <-time.After(5 * time.Second):
		t.Fatal("the batch never reached the store")
	}
	_, h := c.events.Caps()
	require.Greater(t, h, trimAbove, "the batch's buffer, grown for the burst")
	assert.True(t, c.TrimDue(), "the worker holds a burst's buffers (its round trip to Redis waits), TrimDue false")
	release()
	require.Eventually(t, c.TrimDue, time.Second, time.Millisecond, "the burst's buffers held after the batch, TrimDue false")
	require.Eventually(t, func() bool { return !c.TrimDue() }, idleTrim+time.Second, time.Millisecond, "trimmed, TrimDue still true")
}

// A fleet's burst is followed by stragglers: a connection event every few
// hundred ms. Each small batch re-armed the idle trim (the batch scratch,
// grown for the burst, kept the caps over trimAbove), so the burst's
// buffers were held, and TrimDue true, until the sweep (sweepEvery, 10 s):
// the heap release waited its whole bound and then ran with them live.
func TestAtk13TrimsDespiteATrickle(t *testing.T) {
	require.Greater(t, sweepEvery, 5*time.Second)
	c, clk, _ := tracker(t, newMemStore(), testOptions())
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { c.Run(stop); close(done) }()
	defer func() { close(stop); <-done }()
	for i := 0; i < 3000; i++ {
		c.Connected(fmt.Sprintf("dev-%d", i), c.NewConn("alice", "192.0.2.1", clk.now()), nil)
	}
	require.Eventually(t, c.TrimDue, 5*time.Second, time.Millisecond, "the burst's buffers held, TrimDue false")
	start := time.Now()
	trimmed := time.Duration(0)
	for i := 0; time.Since(start) < 3*time.Second; i++ {
		c.Connected(fmt.Sprintf("late-%d", i), c.NewConn("bob", "192.0.2.2", clk.now()), nil)
		time.Sleep(200 * time.Millisecond)
		if trimmed == 0 && !c.TrimDue() {
			trimmed = time.Since(start)
		}
	}
	if assert.NotZero(t, trimmed, "a straggler every 200 ms: the burst's buffers still held 3 s after it") {
		t.Logf("trimmed %v after the burst, stragglers every 200 ms", trimmed.Round(time.Millisecond))
		assert.Less(t, trimmed, idleTrim+time.Second)
	}
}
