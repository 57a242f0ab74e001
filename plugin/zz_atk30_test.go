package plugin

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// atk30Gate is a real Redis conflict store whose worker writes wait while
// the gate is shut (Redis hung): the worker's queue then fills.
type atk30Gate struct {
	*store.Store
	mu   sync.Mutex
	open chan struct{}
}

func (s *atk30Gate) shut() {
	s.mu.Lock()
	s.open = make(chan struct{})
	s.mu.Unlock()
}

func (s *atk30Gate) release() {
	s.mu.Lock()
	if s.open != nil {
		close(s.open)
		s.open = nil
	}
	s.mu.Unlock()
}

func (s *atk30Gate) WriteConns(ctx context.Context, ws []store.ConnWrite, w time.Duration) ([]store.State, error) {
	s.mu.Lock()
	ch := s.open
	s.mu.Unlock()
	if ch != nil {
		select {
		case <-ch:
		case <-time.After(60 * time.Second): // bounded: the test opens it long before
		}
	}
	return s.Store.WriteConns(ctx, ws, w)
}

// Was a DEFECT (fixed: Relisted forgets the dropped connect; the last check waits, bounded, for the spilled end) (through the plugin, real Redis, clientid_conflict flag): Redis
// hangs and the tracker's queue fills, so the connect of device T is
// dropped; Redis answers and the relist records T live (as it should: T
// is held); Redis hangs again and T disconnects while the queue is full:
// its DISCONNECT is dropped too, because the spill still remembers its
// connect as dropped ("nothing to undo", conflicts/tracker.go enqueue),
// though the relist wrote it. T stays live in Redis, and in the worker's
// memo (so no later relist removes it), for as long as the broker runs.
// Same defect as conflicts' TestAtk30RelistedThenSpilledDisconnectStaysLive.
// README: "so a connection that ends meanwhile is never written live after
// its end".
func TestAtk30RelistedDroppedConnectLeftLiveAfterEnd(t *testing.T) {
	r := testenv.StartRedis(t)
	st := store.New(store.Options{Addrs: []string{r.Addr}, Timeout: 5 * time.Second}, keys.Builder{Prefix: "guard:"})
	t.Cleanup(func() { st.Close() })
	gate := &atk30Gate{Store: st}
	t.Cleanup(gate.release) // before g.Close (cleanups run last first)
	cfg, fs := aliceFlagStore(t)
	g, err := NewWith(cfg, Output{Log: func(Level, string) {}}, Deps{Store: fs, Counter: &fakeCounter{}, Conflicts: gate})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	gate.release()
	tracking(t, g, st, 1_000_000, "warm-up")
	ctx := context.Background()
	live := func(id string) int {
		l, err := st.LiveConns(ctx, id)
		require.NoError(t, err)
		return len(l)
	}

	// Redis hangs: connect until the queue is full, then T, then more.
	gate.shut()
	n := 0
	connect := func() {
		n++
		require.Equal(t, Allow, g.Authenticate(cl(uintptr(n), "192.0.2.1", fmt.Sprintf("dev-%d", n), "alice", "alice-pw")).Result)
	}
	for g.tracker.Room() > 0 && n < 200_000 {
		connect()
	}
	require.Zero(t, g.tracker.Room(), "the queue is full")
	connect()
	target := n // T: its connect is dropped
	for i := 0; i < 5000; i++ {
		connect()
	}
	gate.release()
	require.Eventually(t, func() bool { return g.tracker.Room() == 65536 }, 60*time.Second, 50*time.Millisecond, "the worker drains")
	time.Sleep(500 * time.Millisecond)
	tid := fmt.Sprintf("dev-%d", target)
	// (Since atk31's fix, a connect the full queue dropped asks for a
	// relist itself, which may have written T already: the relist below
	// makes sure of it.)

	// Redis answers: the relist records every held connection, T included.
	held, complete := g.relistConns()
	require.True(t, complete)
	require.GreaterOrEqual(t, held, n)
	require.Eventually(t, func() bool { return live(tid) == 1 }, 60*time.Second, 50*time.Millisecond, "the relist wrote T live")

	// Redis hangs again: the others disconnect until the queue is full,
	// then T ends.
	gate.shut()
	for i := 1; i <= n && g.tracker.Room() > 0; i++ {
		if i != target {
			g.Disconnected(uintptr(i))
		}
	}
	require.Zero(t, g.tracker.Room(), "the queue is full")
	g.Disconnected(uintptr(target))
	gate.release()
	require.Eventually(t, func() bool { return g.tracker.Room() == 65536 }, 60*time.Second, 50*time.Millisecond, "the worker drains")
	// The spilled end is written once the queue is drained, after the
	// batch in hand (a fixed second was short on a loaded machine; a
	// ghost would stay).
	assert.Eventually(t, func() bool { return live(tid) == 0 }, 15*time.Second, 50*time.Millisecond, "T ended: it must not stay live in Redis")
}

// HOLDS: a relist of connections with 64 KB client IDs and 64 KB
// usernames (each hashed under g.mu: Relisted's keys.Tracking, connOf's
// principal) holds g.mu briefly: the broker thread's longest wait for it
// stays far below a millisecond-scale bound (plugin/relist.go walk:
// confirmHashMax bytes a hold). README: "the broker thread's lock is held
// for at most 256 connections of its table at a time".
//
// 256 connections, 32 MB hashed: held through all of it (confirmHashMax
// unbounded) the longest wait, counted from the waiter's last release of
// the lock, is the whole relist (0.999 to 1 of it, with and without -race
// on a 2-core machine; 64 connections, as this test had, waited 4.4 ms
// counted from the try, under the 20 ms bound it had then); with the
// bound, 0.17 to 0.29 of it under -race, a pause of the scheduler or the
// collector included. One of up to three relists must wait less than
// half of its own length, whatever the machine's speed. (So the test holds
// the relist to confirmHashMax bytes hashed a hold as well as to the
// README's 256 connections: 256 here, 32 MB.)
func TestAtk30RelistLongIDsHoldsLockBriefly(t *testing.T) {
	const n, long = 256, 65535
	big := func(i int, c string) string { return fmt.Sprintf("%04d", i) + strings.Repeat(c, long-4) }
	cfg, err := config.Parse(map[string]string{"backend": "defer", "clientid_conflict": "flag"})
	require.NoError(t, err)
	g, err := NewWith(cfg, Output{Log: func(Level, string) {}}, Deps{Store: newFakeStore(), Counter: &fakeCounter{}, Conflicts: &liveWrites{live: map[string]string{}}})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	for i := range n {
		admitRC(g, rc(uintptr(i+1), big(i, "x"), big(i, "u")), false)
	}
	require.Eventually(t, func() bool { return g.tracker.Room() == 65536 }, 5*time.Second, 10*time.Millisecond)
	least := 1.0 // the least of the tries' longest wait, as a share of the relist
	for try := 0; try < 3 && least >= 0.5; try++ {
		var stop atomic.Bool
		var worst atomic.Int64
		done, waiting := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(done)
			// The wait is counted from this goroutine's last release of
			// the lock, not from its try: descheduled while the relist
			// holds it, a wait counted from the try would start late.
			last := time.Now()
			for i := 0; !stop.Load(); i++ {
				g.mu.Lock()
				w := time.Since(last)
				g.mu.Unlock()
				last = time.Now()
				if int64(w) > worst.Load() {
					worst.Store(int64(w))
				}
				if i == 0 {
					close(waiting) // the relist starts with this goroutine already at it
				}
				time.Sleep(20 * time.Microsecond)
			}
		}()
		<-waiting
		start := time.Now()
		held, complete := g.relistConns()
		took := time.Since(start)
		stop.Store(true)
		<-done
		require.True(t, complete)
		assert.Equal(t, n, held)
		t.Logf("relisted %d in %v; the broker thread's longest wait for g.mu %v", held, took, time.Duration(worst.Load()))
		least = min(least, float64(worst.Load())/float64(took))
	}
	assert.Less(t, least, 0.5, "the broker thread's longest wait for g.mu, as a share of the relist")
}

// atk30Count is a conflict store that counts the connection writes.
type atk30Count struct {
	failingClaims
	n *atomic.Int64
}

func (s atk30Count) WriteConns(ctx context.Context, ws []store.ConnWrite, w time.Duration) ([]store.State, error) {
	s.n.Add(int64(len(ws)))
	return s.failingClaims.WriteConns(ctx, ws, w)
}

// Was a DEFECT (fixed: Redis back no longer asks for a relist; a failed worker write does) (load amplification; "Redis flapping (repeated relists)"): one
// transient error on any Redis call (a deny claim on the broker thread
// past redis_timeout, a lookup timing out: plugin/conflicts.go
// checkConflict and liveConns call g.health.down) marks Redis down; the
// next 200 ms probe finds it up and health.back (plugin/guard.go) asks
// for a full relist: every held connection is written again (live entry,
// brokerconns, the principal's seen record), though Redis lost nothing
// (a restart or flush is found anyway: the replica's lost session or flush,
// the lease found gone). Under load, each timeout costs Redis one write
// per held connection, which makes more timeouts. README: "and when
// Redis answers again after being down".
//
// Observed: 5 timeouts a second apart, 2 000 held connections: about
// 10 000 connection writes and five "recording this broker's 2000 live
// connections" notices. Expected: no full relist for a timeout while
// Redis kept its keys (a handful of writes).
func TestAtk30OneTimeoutRelistsEverything(t *testing.T) {
	cfg, fs := aliceFlagStore(t)
	var writes atomic.Int64
	var notices atomic.Int64
	logf := func(_ Level, msg string) {
		if strings.Contains(msg, "live connections in redis again") {
			notices.Add(1)
		}
	}
	g, err := NewWith(cfg, Output{Log: logf}, Deps{Store: fs, Counter: &fakeCounter{}, Conflicts: atk30Count{n: &writes}})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	const n = 2000
	for i := 1; i <= n; i++ {
		require.Equal(t, Allow, g.Authenticate(cl(uintptr(i), "192.0.2.1", fmt.Sprintf("dev-%d", i), "alice", "alice-pw")).Result)
	}
	require.Eventually(t, func() bool { return writes.Load() >= n && g.tracker.Room() == 65536 }, 10*time.Second, 10*time.Millisecond)
	time.Sleep(300 * time.Millisecond)
	before := writes.Load()
	for range 5 {
		g.health.down(errors.New("redis: i/o timeout")) // one claim or lookup past redis_timeout
		time.Sleep(time.Second)
	}
	after := writes.Load() - before
	t.Logf("connection writes after 5 transient timeouts: %d; relist notices %d", after, notices.Load())
	assert.Less(t, after, int64(n/10), "a timeout while Redis kept its keys should not write every held connection again")
}
