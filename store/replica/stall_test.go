package replica

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// threadSched reads the calling thread's schedstat (ns on a CPU, ns
// runnable and waiting for one) with a raw system call: the broker thread
// emulated below must not leave its P to read it.
type threadSched struct{ fd int }

func openThreadSched(t *testing.T) threadSched {
	fd, err := syscall.Open("/proc/thread-self/schedstat", syscall.O_RDONLY, 0)
	require.NoError(t, err)
	return threadSched{fd}
}

func (s threadSched) read() (cpu, delay time.Duration) {
	var buf [128]byte
	n, _, errno := syscall.RawSyscall6(syscall.SYS_PREAD64, uintptr(s.fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), 0, 0, 0)
	if errno != 0 {
		return 0, 0
	}
	f := strings.Fields(string(buf[:n]))
	if len(f) < 2 {
		return 0, 0
	}
	c, _ := strconv.ParseInt(f[0], 10, 64)
	d, _ := strconv.ParseInt(f[1], 10, 64)
	return time.Duration(c), time.Duration(d)
}

// brokerThread emulates Mosquitto's thread calling into the plugin: a
// goroutine locked to its thread spends gap in a system call (the thread in
// Mosquitto's C code, its P in the system-call state, which Go's sysmon
// hands to waiting goroutines), then looks a client up in r (a CONNECT's
// replica lookup), until stop. A round's wait is the time the thread slept
// beyond gap: asleep, neither in the system call nor runnable, it waited in
// Go's scheduler for a P (or on a lock). The kernel's own delays (run
// delay: other processes on a shared machine) are left out; only Go's
// waits count.
func brokerThread(t *testing.T, r *Replica, gap time.Duration, stop *atomic.Bool) <-chan []time.Duration {
	out := make(chan []time.Duration, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		ts := openThreadSched(t)
		defer syscall.Close(ts.fd)
		req := syscall.Timespec{Nsec: gap.Nanoseconds()}
		qq := q("dev-7", "198.51.100.7", "bob")
		var waits []time.Duration
		for !stop.Load() {
			c0, d0 := ts.read()
			s := time.Now()
			_, _, _ = syscall.Syscall(syscall.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&req)), 0, 0)
			r.Lookup(qq, s)
			wall := time.Since(s)
			c1, d1 := ts.read()
			waits = append(waits, max(0, wall-(c1-c0)-(d1-d0)-gap))
		}
		out <- waits
	}()
	return out
}

type waitStats struct {
	n, over  int // rounds, and those that waited over 5 ms
	p99, max time.Duration
}

func statsOf(w []time.Duration) waitStats {
	s := append([]time.Duration(nil), w...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	st := waitStats{n: len(s)}
	if len(s) == 0 {
		return st
	}
	st.p99, st.max = s[len(s)*99/100], s[len(s)-1]
	for _, x := range s {
		if x > 5*time.Millisecond {
			st.over++
		}
	}
	return st
}

func (s waitStats) String() string {
	return fmt.Sprintf("%d rounds, p99 %v, max %v, %d over 5 ms", s.n, s.p99.Round(time.Microsecond), s.max.Round(time.Microsecond), s.over)
}

// reloadWaits syncs a replica of n block keys from a real Redis and
// measures the emulated broker thread's waits (a round every 200 µs) with
// GOMAXPROCS procs: for idle with no reload, then for d of full reloads one
// after another (the subscription killed, as after Redis was flushed or
// restarted; a reload of every replica_resync does the same work). noGC:
// the collector off while measuring, so that only the reload's own hold of
// a P counts, not the runtime's mark workers.
func reloadWaits(t *testing.T, n, procs int, noGC bool, idle, d time.Duration) (still, reload waitStats, reloads int) {
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

	var stop atomic.Bool
	ch := brokerThread(t, r, 200*time.Microsecond, &stop)
	time.Sleep(idle)
	stop.Store(true)
	still = statsOf(<-ch)

	stop.Store(false)
	ch = brokerThread(t, r, 200*time.Microsecond, &stop)
	for end := time.Now().Add(d); time.Now().Before(end); reloads++ {
		s.healthy.Store(false)
		srv.CLI("CLIENT", "KILL", "TYPE", "pubsub")
		require.Eventually(t, s.Healthy, 60*time.Second, time.Millisecond)
	}
	stop.Store(true)
	return still, statsOf(<-ch), reloads
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
// are the runtime's, not the reload's): 100 000 keys, 3 s of reloads (3 of
// them), waits over 5 ms: 42 and 43 before, 4 and 5 after; max 17-19 ms
// before, 8-9 ms after (the rest: this shared machine's other processes).
//
// Not under the race detector (make test runs it again without).
func TestReloadLeavesTheBrokerThreadAP(t *testing.T) {
	if raceEnabled {
		t.Skip("timing: the race detector slows the reload's chunks several times")
	}
	still, reload, reloads := reloadWaits(t, 100_000, 1, true, time.Second, 3*time.Second)
	t.Logf("no reload: %v", still)
	t.Logf("%d reloads: %v", reloads, reload)
	require.Positive(t, reloads)
	assert.LessOrEqual(t, reload.over, 4*reloads, "the broker thread waited over 5 ms for a P %d times in %d reloads", reload.over, reloads)
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
	assert.Less(t, reload.max, 25*time.Millisecond, "the broker thread waited %v for a P during a reload", reload.max)
}
