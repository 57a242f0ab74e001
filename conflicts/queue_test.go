package conflicts

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

type batchCounter struct {
	*memStore
	mu      sync.Mutex
	batches []int
}

func (b *batchCounter) WriteConns(ctx context.Context, ws []store.ConnWrite, w time.Duration) ([]store.State, error) {
	b.mu.Lock()
	b.batches = append(b.batches, len(ws))
	b.mu.Unlock()
	return b.memStore.WriteConns(ctx, ws, w)
}

func (b *batchCounter) total() (events, batches int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, n := range b.batches {
		events += n
	}
	return events, len(b.batches)
}

// The broker thread wakes the worker once per batch, not once per
// connection: a fleet connecting through one linger is one wake-up. (With
// a channel, every event made the worker runnable: a futex wake-up and a
// scheduler round on the broker's core per CONNECT.)
func TestEventsWakeWorkerOncePerBatch(t *testing.T) {
	st := &batchCounter{memStore: newMemStore()}
	c, clk, _ := tracker(t, st, testOptions())
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { c.Run(stop); close(done) }()
	defer func() { close(stop); <-done }()
	time.Sleep(50 * time.Millisecond) // the worker parked, its lease renewed

	// Events spaced as CONNECTs come (a worker that keeps up parks between
	// them), by spinning: the test's own goroutine must not park either.
	// 1 200 events, 120 ms: the background's wakes WakesDuring cannot
	// subtract grow as the square root of the time, the defect's with it.
	const n, gap = 1200, 100 * time.Microsecond
	conns := make([]Conn, n)
	for i := range conns {
		conns[i] = c.NewConn(fmt.Sprintf("user-%d", i), "192.0.2.1", clk.now())
	}
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%d", i)
	}
	// The collector's own goroutines are made runnable too when it runs
	// (a fresh-clone CI run under -race counted 9 against a bound of 3):
	// WakesDuring turns it off, and subtracts the process's background.
	woken := testenv.WakesDuring(n*gap, func() {
		for i := range conns {
			c.Connected(ids[i], conns[i], nil)
			for t0 := time.Now(); time.Since(t0) < gap; {
			}
		}
	})
	require.Eventually(t, func() bool { ev, _ := st.total(); return ev == n },
		5*time.Second, 10*time.Millisecond, "every event reaches Redis")
	// A wake per event: n/8 sampled (150); once per batch (and the linger's
	// timer): about batches/4.
	_, batches := st.total()
	assert.Less(t, woken, uint64(20), "goroutines made runnable (1 in 8 sampled) while %d events were queued in %d batches", n, batches)
	assert.Less(t, batches, n/20, "events batched")
}

// Run's tick sweeps the quiet marks and trims the queue: after a burst of
// connections that ended with a large batch, both are gone within a tick
// (sweepEvery, shortened here), whether or not anything else happens.
func TestRunTicksSweepAndTrim(t *testing.T) {
	was := sweepEvery
	sweepEvery = 50 * time.Millisecond
	defer func() { sweepEvery = was }()
	st := newGatedStore()
	c, clk, _ := tracker(t, st, testOptions())
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { c.Run(stop); close(done) }()
	for i := 0; i < 3000; i++ { // one linger's worth: a batch of 3000, or a few
		c.Connected(fmt.Sprintf("dev-%d", i), c.NewConn("alice", "192.0.2.1", clk.now()), nil)
	}
	burstHandled(t, c, st, 3000)
	clk.advance(2 * quietFor) // the quiet marks are old now
	require.Eventually(t, func() bool { f, h := c.events.Caps(); return f <= 256 && h <= 256 },
		5*time.Second, 10*time.Millisecond, "the tick trims the buffers")
	// A tick since the clock moved. The marks are the worker's own: read
	// once it has stopped, and started again until a tick has come (under
	// -race, with other packages' tests on the CPUs, 3 sweepEvery once
	// passed without one), for at most 5 s.
	for deadline := time.Now().Add(5 * time.Second); ; {
		time.Sleep(3 * sweepEvery)
		close(stop)
		<-done
		if c.quietMarks() == 0 || time.Now().After(deadline) {
			break
		}
		stop, done = make(chan struct{}), make(chan struct{})
		go func() { c.Run(stop); close(done) }()
	}
	assert.Zero(t, c.quietMarks(), "the tick swept the quiet marks")
}

// Issue 12: a burst's buffers go within idleTrim of its end, not at the
// next sweep (sweepEvery, 10 s here): a broker that just took a fleet's
// connections holds no queue buffers past them for long.
func TestRunTrimsWhenIdle(t *testing.T) {
	require.Greater(t, sweepEvery, 5*time.Second)
	st := newGatedStore()
	c, clk, _ := tracker(t, st, testOptions())
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { c.Run(stop); close(done) }()
	var once sync.Once
	end := func() { once.Do(func() { close(stop); <-done }) }
	defer end()
	for i := 0; i < 3000; i++ { // one linger's worth: a batch of 3000, or a few
		c.Connected(fmt.Sprintf("dev-%d", i), c.NewConn("alice", "192.0.2.1", clk.now()), nil)
	}
	burstHandled(t, c, st, 3000)
	// TrimDue says so while they are held (the heap release waits for it),
	// and no more once they are trimmed.
	require.Eventually(t, c.TrimDue, time.Second, time.Millisecond, "the burst's buffers held, TrimDue false")
	start := time.Now()
	require.Eventually(t, func() bool { f, h := c.events.Caps(); return f <= 256 && h <= 256 },
		idleTrim+time.Second, 10*time.Millisecond, "the buffers trimmed once idle")
	t.Logf("trimmed %v after the burst was handled", time.Since(start).Round(time.Millisecond))
	require.Eventually(t, func() bool { return !c.TrimDue() }, time.Second, time.Millisecond, "trimmed, TrimDue still true")
	end() // the worker's own fields, read once it has stopped
	assert.Zero(t, cap(c.sc.conns), "the batch's scratch arrays trimmed with them")
	assert.Zero(t, cap(c.sc.ws))
}

// A worker that stops holding a burst's buffers says no more that it will
// trim them: the heap release (cgo/heaprelease.go) would wait for it, up to
// its bound, at every burst.
func TestRunStopClearsTrimDue(t *testing.T) {
	c, clk, _ := tracker(t, newMemStore(), testOptions())
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { c.Run(stop); close(done) }()
	for i := 0; i < 3000; i++ {
		c.Connected(fmt.Sprintf("dev-%d", i), c.NewConn("alice", "192.0.2.1", clk.now()), nil)
	}
	require.Eventually(t, c.TrimDue, 5*time.Second, time.Millisecond, "the burst's buffers held, TrimDue false")
	close(stop)
	<-done
	assert.False(t, c.TrimDue(), "a stopped worker still due to trim")
}

// gatedStore holds the worker's first batch of more than trimAbove
// writes in WriteConns, after telling its size on big, until the test
// closes gate: the test reads the burst's buffers while the worker holds
// them. It polled for them (the handed-out buffer's cap at least 3000),
// and Run's tick, shortened to 50 ms in TestRunTicksSweepAndTrim, trimmed
// them first in a quarter to half of -count=20's runs, the worker of
// before pairBatch and after alike.
type gatedStore struct {
	*memStore
	big  chan int
	gate chan struct{}
	once sync.Once
}

func newGatedStore() *gatedStore {
	return &gatedStore{memStore: newMemStore(), big: make(chan int, 1), gate: make(chan struct{})}
}

func (g *gatedStore) WriteConns(ctx context.Context, ws []store.ConnWrite, window time.Duration) ([]store.State, error) {
	if len(ws) > trimAbove {
		g.once.Do(func() {
			g.big <- len(ws)
			select {
			case <-g.gate:
			case <-time.After(10 * time.Second): // a test that failed first
			}
		})
	}
	return g.memStore.WriteConns(ctx, ws, window)
}

// burstHandled requires that the worker handles a batch of more than
// trimAbove of a burst of n connects (one linger's worth: one batch, or a
// few), in a buffer of at least that batch, and waits until all n are
// written.
func burstHandled(t *testing.T, c *Tracker, g *gatedStore, n int) {
	t.Helper()
	select {
	case k := <-g.big:
		_, h := c.events.Caps()
		assert.GreaterOrEqual(t, h, k, "the batch in hand")
	case <-time.After(5 * time.Second):
		t.Fatal("no batch of the burst over trimAbove within 5 s")
	}
	close(g.gate)
	require.Eventually(t, func() bool { g.mu.Lock(); defer g.mu.Unlock(); return g.writes >= n },
		5*time.Second, 5*time.Millisecond, "the burst written")
}
