package replica

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// reloadWaits syncs a replica of n block keys from a real Redis and
// measures the emulated broker thread's waits (testenv.BrokerThread: a
// replica lookup after 200 µs in a system call, round after round) with
// GOMAXPROCS procs: for idle with no reload, then for d of full reloads one
// after another (the subscription killed, as after Redis was flushed or
// restarted; a reload of every replica_resync does the same work). noGC:
// the collector off while measuring, so that only the reload's own hold of
// a P counts, not the runtime's mark workers.
func reloadWaits(t *testing.T, n, procs int, noGC bool, idle, d time.Duration) (still, reload testenv.Waits, reloads int) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
	srv := testenv.StartRedis(t)
	srv.CLI("EVAL", fmt.Sprintf("for i=1,%d do redis.call('SET','guard:block:clientid:dev-'..i,'r') end return 1", n), "0")
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	r := New(kb)
	s := NewSync(r, rdb, Options{ResyncEvery: time.Hour, OnManyChanges: func() {}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	require.Eventually(t, s.Healthy, 60*time.Second, 5*time.Millisecond)
	require.Equal(t, n, r.Len())
	runtime.GC()
	if noGC {
		defer debug.SetGCPercent(debug.SetGCPercent(-1))
	}

	qq := q("dev-7", "198.51.100.7", "bob")
	lookup := func() { r.Lookup(qq, time.Now()) } // a CONNECT's replica lookup
	var stop atomic.Bool
	ch := testenv.BrokerThread(t, 200*time.Microsecond, &stop, lookup)
	time.Sleep(idle)
	stop.Store(true)
	still = <-ch

	stop.Store(false)
	ch = testenv.BrokerThread(t, 200*time.Microsecond, &stop, lookup)
	for end := time.Now().Add(d); time.Now().Before(end); reloads++ {
		s.healthy.Store(false)
		srv.CLI("CLIENT", "KILL", "TYPE", "pubsub")
		require.Eventually(t, s.Healthy, 60*time.Second, time.Millisecond)
	}
	stop.Store(true)
	return still, <-ch, reloads
}

// A full reload held a P for long stretches: its loops (fetching and
// storing 2 000 keys a pipeline, comparing the old replica with the new)
// never yielded, so Go's scheduler took the P back only at the end of its
// 10 ms time slice, and debug.FreeOSMemory after the swap scavenged the
// whole heap in one call that cannot be preempted (26 to 39 ms with 300 000
// keys). The broker thread, coming back into Go from Mosquitto's code with
// its P taken meanwhile, waited for one that long: every CONNECT and every
// other callback of the broker stalled. Now the reload fetches and stores
// walkChunk keys at a time and yields after each chunk, and leaves freed
// memory to the background scavenger.
//
// Measured here with GOMAXPROCS 1 (the P the broker thread needs is then
// always the one the reload holds) and the collector off (its mark workers
// are the runtime's, not the reload's): 100 000 keys, 3 s of reloads (2 or
// 3 of them). Waits over 5 ms per reload, shared 2-core machine
// (2026-12-03): before, 11 to 20 (max 16-48 ms); after, 0.3 to 5.5 (max
// 5-10 ms), once 16 while other tests loaded the machine: with one P, a
// kernel that preempts the thread holding it makes the broker thread wait
// too. So the bound is 8 per reload, and a second attempt is made when the
// first misses it; before the fix both miss it.
//
// Not under the race detector (make test runs it again without).
func TestReloadLeavesTheBrokerThreadAP(t *testing.T) {
	if raceEnabled {
		t.Skip("timing: the race detector slows the reload's chunks several times")
	}
	const perReload = 8
	var over, reloads int
	for attempt := 1; attempt <= 2; attempt++ {
		var still, reload testenv.Waits
		still, reload, reloads = reloadWaits(t, 100_000, 1, true, time.Second, 3*time.Second)
		over = reload.Over(5 * time.Millisecond)
		t.Logf("attempt %d: no reload: %v", attempt, still)
		t.Logf("attempt %d: %d reloads: %v", attempt, reloads, reload)
		require.Positive(t, reloads)
		if over <= perReload*reloads {
			return
		}
	}
	t.Errorf("the broker thread waited over 5 ms for a P %d times in %d reloads (bound %d a reload), twice", over, reloads, perReload)
}

// The same at the plugin's own setting (GOMAXPROCS 2, the collector on)
// with 300 000 keys. Seen on a shared 2-core machine (2026-12-03): before,
// max 5.5 to 130 ms (17, 12, 8.7, 130, 16, 57, 5.5 in seven runs), p99 0.5
// to 1.4 ms; after, max 4 to 13 ms, p99 0.2 to 0.6 ms. What is left is the
// collector's: with GOMAXPROCS 2 Go runs no dedicated mark worker but a
// fractional one on each P, which holds it for up to about 8 ms at a time
// while the replica's large heap is marked.
func TestReloadLeavesTheBrokerThreadAPLarge(t *testing.T) {
	if os.Getenv("ATK_LOAD") == "" || raceEnabled {
		t.Skip("a long load test: ATK_LOAD=1 runs it, without -race")
	}
	still, reload, reloads := reloadWaits(t, 300_000, 2, false, 2*time.Second, 4*time.Second)
	t.Logf("no reload: %v", still)
	t.Logf("%d reloads: %v", reloads, reload)
	require.Positive(t, reloads)
	assert.Less(t, reload.Max(), 25*time.Millisecond, "the broker thread waited %v for a P during a reload", reload.Max())
}
