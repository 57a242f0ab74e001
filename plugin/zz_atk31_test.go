package plugin

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// atk31Gated is a conflict store whose worker writes wait until open is
// closed, and then succeed (Redis slow, but answering): the live entries
// written are kept as liveWrites keeps them.
type atk31Gated struct {
	*liveWrites
	open chan struct{}
}

func (s atk31Gated) WriteConns(ctx context.Context, ws []store.ConnWrite, w time.Duration) ([]store.State, error) {
	<-s.open
	return s.liveWrites.WriteConns(ctx, ws, w)
}

// Was a DEFECT (fixed: a connect the full queue drops asks for a relist): connections whose connect the tracker's queue dropped (a burst
// while Redis was slow, but answering) are never recorded live, and no
// relist is asked for. README: "A running broker records its connections
// in Redis again whenever they may have gone from there, or were never
// written: when a renewal finds its own lease lapsed ..., when Redis did
// not take a batch of the conflict worker's writes, and when the replica
// ..."; a connect the queue dropped (conflicts/tracker.go enqueue: "a full
// queue drops the event") was never written, and none of the triggers
// (plugin/relist.go relistNow's callers) fires: every batch Redis got, it
// took. Before 7be1db9, Redis back after being down asked for a relist;
// now nothing does, and under clientid_conflict deny another principal
// may take these client IDs for as long as they are held.
//
// Observed: thousands of the 70 000 held connections live nowhere, 3 s
// after the worker has written all it was given. Expected: each held
// connection recorded (a relist asked for after the drops).
func TestAtk31DroppedConnectsNeverRelisted(t *testing.T) {
	cfg, st := aliceFlagStore(t)
	lw := atk31Gated{liveWrites: &liveWrites{live: map[string]string{}}, open: make(chan struct{})}
	var logs sync.Map
	var opened sync.Once
	open := func() { opened.Do(func() { close(lw.open) }) }
	t.Cleanup(open)
	g, err := NewWith(cfg, Output{Log: func(_ Level, m string) { logs.Store(m, true) }}, Deps{Store: st, Counter: &fakeCounter{}, Conflicts: lw})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	const n = 70000
	for i := 1; i <= n; i++ {
		require.Equal(t, Allow, g.Authenticate(cl(uintptr(i), "192.0.2.1", fmt.Sprintf("dev-%d", i), "alice", "alice-pw")).Result)
	}
	open() // Redis answers again: every batch it is given it takes
	require.Eventually(t, func() bool { return g.tracker.Room() == 65536 }, 20*time.Second, 10*time.Millisecond, "the queue drained")
	time.Sleep(3 * time.Second) // a relist, had one been asked for (relistGap: 1 s)
	lw.mu.Lock()
	missing := 0
	for i := 1; i <= n; i++ {
		if _, ok := lw.live[fmt.Sprintf("dev-%d", i)]; !ok {
			missing++
		}
	}
	lw.mu.Unlock()
	dropped := false
	logs.Range(func(k, _ any) bool {
		if strings.Contains(k.(string), "drop") || strings.Contains(k.(string), "full") {
			t.Logf("log: %.200s", k)
			dropped = true
		}
		return true
	})
	t.Logf("missing %d of %d; a drop logged: %v", missing, n, dropped)
	assert.Zero(t, missing, "held connections never recorded live")
}

// HOLDS: a relist of 100 000 held connections (a worker that writes at
// once) keeps the broker thread's waits for g.mu short: the longest wait
// of a goroutine taking g.mu as the broker thread does, over the whole
// relist, stays under 100 ms. Measured here (2 CPUs): 100 000 relisted in
// about 130 ms, some 390 holds of 256 entries (0.3 ms each); the longest
// waits, 5 to 38 ms, are the scheduler's and the garbage collector's (4 to
// 11 ms with GOGC=off; a 300 µs lock holder alone gives 1.5 to 2.5 ms), not
// a long hold. README: "the broker thread's lock is held for at most 256
// connections of its table at a time"; plugin/relist.go relistConns.
func TestAtk31Relist100kBrokerThreadWaits(t *testing.T) {
	cfg, err := config.Parse(map[string]string{"backend": "defer", "clientid_conflict": "flag"})
	require.NoError(t, err)
	g, err := NewWith(cfg, Output{Log: func(Level, string) {}}, Deps{Store: newFakeStore(), Counter: &fakeCounter{}, Conflicts: failingClaims{}})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	const n = 100000
	for i := 1; i <= n; i++ {
		admitRC(g, rc(uintptr(i), fmt.Sprintf("dev-%d", i), "alice"), false)
	}
	require.Eventually(t, func() bool { return g.tracker.Room() == 65536 }, 20*time.Second, 10*time.Millisecond)
	stop := make(chan struct{})
	var worst time.Duration
	var slow, waits int
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			start := time.Now()
			g.mu.Lock()
			w := time.Since(start)
			g.mu.Unlock()
			worst = max(worst, w)
			if w > 5*time.Millisecond {
				slow++
			}
			waits++
			time.Sleep(50 * time.Microsecond)
		}
	}()
	start := time.Now()
	held, complete := g.relistConns()
	took := time.Since(start)
	close(stop)
	wg.Wait()
	t.Logf("relisted %d in %v; the longest wait for g.mu %v; %d of %d waits over 5 ms", held, took, worst, slow, waits)
	require.True(t, complete)
	assert.Equal(t, n, held)
	// A hold of the whole relist makes the longest wait about the relist's
	// time; holds of 256 leave the scheduler's and the collector's pauses,
	// which under -race on some machines reach 100 to 190 ms (a local CI
	// run here, and eb7f60a alike): the bound is the larger of 100 ms and a
	// third of the relist.
	assert.Less(t, worst, max(100*time.Millisecond, took/3))
}

// atk31FailOnce is a conflict store that counts the connection writes and
// fails the first call after fail is set (one batch past its bound).
type atk31FailOnce struct {
	failingClaims
	n    *atomic.Int64
	fail *atomic.Bool
}

func (s atk31FailOnce) WriteConns(ctx context.Context, ws []store.ConnWrite, w time.Duration) ([]store.State, error) {
	if s.fail.CompareAndSwap(true, false) {
		return nil, context.DeadlineExceeded
	}
	s.n.Add(int64(len(ws)))
	return s.failingClaims.WriteConns(ctx, ws, w)
}

// HOLDS, as the README says ("when Redis did not take a batch of the
// conflict worker's writes"), with its cost measured: the load atk30 found
// for a health flap (TestAtk30OneTimeoutRelistsEverything) is now paid for
// one worker batch that times out. One connect whose batch Redis does not
// take, 2 000 held: a full relist, about 2 000 connection writes (the
// connect's own included), and a notice. conflicts/tracker.go handlePart
// (default case: t.relist()) relists everything, not the batch it lost.
// Checked: the relist comes (every held connection written again), within
// a few seconds, and only one.
func TestAtk31OneFailedBatchRelistsEverything(t *testing.T) {
	cfg, fs := aliceFlagStore(t)
	var writes, notices atomic.Int64
	var fail atomic.Bool
	logf := func(_ Level, msg string) {
		if strings.Contains(msg, "live connections in redis again") {
			notices.Add(1)
		}
	}
	g, err := NewWith(cfg, Output{Log: logf}, Deps{Store: fs, Counter: &fakeCounter{}, Conflicts: atk31FailOnce{n: &writes, fail: &fail}})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	const n = 2000
	for i := 1; i <= n; i++ {
		require.Equal(t, Allow, g.Authenticate(cl(uintptr(i), "192.0.2.1", fmt.Sprintf("dev-%d", i), "alice", "alice-pw")).Result)
	}
	require.Eventually(t, func() bool { return writes.Load() >= n && g.tracker.Room() == 65536 }, 10*time.Second, 10*time.Millisecond)
	time.Sleep(300 * time.Millisecond)
	before := writes.Load()
	fail.Store(true)
	require.Equal(t, Allow, g.Authenticate(cl(n+1, "192.0.2.1", "dev-new", "alice", "alice-pw")).Result)
	require.Eventually(t, func() bool { return writes.Load()-before >= n }, 5*time.Second, 10*time.Millisecond, "a full relist")
	time.Sleep(2 * time.Second)
	after := writes.Load() - before
	t.Logf("connection writes after one failed batch of one connect: %d; relist notices %d", after, notices.Load())
	assert.EqualValues(t, 1, notices.Load())
	assert.Less(t, after, int64(2*n), "one relist")
}
