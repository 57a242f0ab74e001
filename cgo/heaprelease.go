package main

import (
	"fmt"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"syscall"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/plugin"
)

// After a burst of CONNECTs is over, the plugin hands the Go heap's free
// pages back to the system (issue 12: memory per connection). Without it,
// a broker holding 8 000 idle devices that had each connected once (a
// verification, ~6 KB of garbage apiece) kept the heap the collector had
// grown for that garbage, twice what stays live (GOGC 100), mapped for as
// long as the devices stayed idle: make bench's memory row measured the
// plugin's share at about 1.4 KB per live connection, of which about 0.2
// KB is the connections' own Go heap. Go's own background scavenger gives
// back only what lies above the next collection's goal, and with no
// allocation no collection comes (but Go's forced one every 2 minutes,
// which leaves the goal at twice the live heap again).
//
// The rule, checked every releaseTick by a goroutine of its own (never on
// the broker thread): the plugin's process allocated less than releaseQuiet
// in the last tick (a burst is over: a cache-miss CONNECT allocates 1 to
// 6 KB, more with a long password (a client's choice, up to 64 KiB), so
// under 40 to 250 a second; cache hits allocate nearly nothing), at least releaseChurn since the last release
// (there was a burst), and the heap holds at least max(releaseMin, live /
// releaseLiveShare) that a collection would free, has freed but not given
// back, or holds in spans no object uses (a large live heap: a release's
// collection costs in proportion to it, so it must give back as much). Then debug.FreeOSMemory: a collection, then every free page back.
// Its cost is bounded: the next release waits max(releaseEvery,
// releaseBackoff times what this one cost), so releases take at most a
// hundredth of one core (a 100 ms release of a large heap: the next after
// 10 s at the soonest; 5 ms for 4 000 devices' heap: after a second), and
// each needs releaseChurn of new allocation since the last. Its cost is
// the longer of its length and the CPU the process spent meanwhile: the
// collection marks on every idle P, so a release on a quiet broker takes
// up to GOMAXPROCS times its length in CPU (1.2 to 2 times seen with
// GOMAXPROCS 2: TestAtkReleaseBackoffCountsCPU).
//
// A burst's end also leaves the guard's background workers (the conflict
// tracker, the known-sources writer) holding their queues' and scratch
// buffers grown for it, which they give back after half a second without a
// batch (Guard.TrimDue). A release before that keeps them: they were live at
// its collection, and once dropped they are garbage that no release gives
// back, the next one waiting for releaseChurn more allocation. At 8 000
// devices that was up to 1 MB (0.12 KB a connection) in about half of the
// memory row's runs, as the two half-second timers fell. So the release
// waits while any instance's workers hold such buffers, at most
// releaseWaitMax after its first quiet tick: a worker that never trims
// delays it by that much, never forever.
//
// A slow, steady allocation is not a burst going on: a stranger sending
// refused CONNECTs with long strings (a 60 000-byte password, client ID or
// username) every 50 to 100 ms allocated over releaseQuiet a tick for as
// long as it went on, even from a banned address, and kept the release
// after the devices' burst away for as long (a README-only attack:
// TestZZR13StrangerTrickleHoldsTheRelease). So a release due but for the
// quiet tick comes once releaseSlowFor has passed, its last releaseSlowFor
// averaging under releaseSlow a tick (4 MB a second: a fleet's burst
// allocates more; slowDone); releaseWaitMax and the backoff still bound it.
// A trickle delays it by releaseSlowFor at most after the last burst in
// it. (A refused CONNECT's password no longer allocates at all: the spare
// password buffer keeps up to 64 KiB, cstrings.go.)
//
// What it does not bound: the peak. During a burst the heap grows to the
// collector's goal as before (GOGC; README, Installing); the release
// brings the RSS back to what is live once the burst is over, for as long
// as the broker stays quiet, and the next burst's garbage takes it up to
// the goal again. MOSQUITTO_GUARD_NO_RELEASE=1 turns it off (make bench's
// baseline).
const (
	releaseTick       = 250 * time.Millisecond
	releaseQuiet      = 256 << 10 // bytes allocated in a tick, at most (1 MB a second)
	releaseChurn      = 8 << 20   // bytes allocated since the last release, at least
	releaseMin        = 1 << 20   // bytes a release could give back, at least
	releaseLiveShare  = 8         // ... and at least the live heap over this
	releaseEvery      = time.Second
	releaseBackoff    = 100
	releaseBackoffMax = 10 * time.Minute
	releaseWaitMax    = time.Second                         // the longest a release waits for the workers' trims (busy)
	releaseSlow       = 1 << 20                             // bytes allocated in a tick under which a slow allocation ...
	releaseSlowFor    = 10 * time.Second                    // ... lets a due release come after this long without a quiet tick
	releaseSlowTicks  = int(releaseSlowFor/releaseTick) + 1 // ... judged on this many last ticks
)

// noRelease turns the release off (MOSQUITTO_GUARD_NO_RELEASE set to
// anything but empty in the broker's environment). Read once, at load.
var noRelease = os.Getenv("MOSQUITTO_GUARD_NO_RELEASE") != ""

var releaseOnce sync.Once

// startHeapRelease starts the release loop once per process (every
// instance shares the runtime); guardInit.
func startHeapRelease() {
	if noRelease {
		return
	}
	releaseOnce.Do(func() {
		r := newHeapRelease(readHeap, debug.FreeOSMemory, time.Now)
		r.busy = trimDue
		go r.loop(time.NewTicker(releaseTick).C)
	})
}

// trimDue reports whether any instance's guard holds a burst's buffers it
// gives back shortly (Guard.TrimDue).
func trimDue() bool {
	due := false
	instances.each(func(in *instance) {
		if in.guard != nil && in.guard.TrimDue() {
			due = true
		}
	})
	return due
}

// heapSample is what a release decision reads of the Go heap.
type heapSample struct {
	allocs uint64 // bytes allocated since the process started
	free   uint64 // heap pages free and not given back
	unused uint64 // bytes of spans in use that no object takes
	inUse  uint64 // bytes in heap objects, garbage not yet swept among them
	live   uint64 // bytes the last collection found live
}

var heapNames = []string{"/gc/heap/allocs:bytes", "/memory/classes/heap/free:bytes", "/memory/classes/heap/unused:bytes",
	"/memory/classes/heap/objects:bytes", "/gc/heap/live:bytes"}

// readHeap reads a heapSample from runtime/metrics (no stop of the world).
func readHeap() heapSample {
	s := make([]metrics.Sample, len(heapNames))
	for i, n := range heapNames {
		s[i].Name = n
	}
	metrics.Read(s)
	return heapSample{allocs: s[0].Value.Uint64(), free: s[1].Value.Uint64(), unused: s[2].Value.Uint64(),
		inUse: s[3].Value.Uint64(), live: s[4].Value.Uint64()}
}

// heapRelease is the release rule's state; read, free and now are
// runtime/metrics, debug.FreeOSMemory and time.Now but in tests.
type heapRelease struct {
	read  func() heapSample
	free  func()
	now   func() time.Time
	cpu   func() time.Duration // the process's CPU time (processCPU)
	busy  func() bool          // nil, or trimDue: wait, up to releaseWaitMax
	last  uint64               // allocs at the last step
	churn uint64               // bytes allocated since the last release
	next  time.Time            // no release before
	count int                  // releases done
	took  time.Duration        // the last release's cost: the longer of its length and its CPU
	wall  time.Duration        // the last release's length
	// liveAfter is the live heap the release's collection found.
	liveAfter uint64
	// panicLogged is when a panic of step was last logged (safeStep).
	panicLogged time.Time
	// waitFrom is when a release, due but for busy, began to wait; zero
	// when none waits.
	waitFrom time.Time
	// slowFrom is when a release, due but for a quiet tick, began to wait
	// through ticks under releaseSlow; zero when none waits.
	slowFrom  time.Time
	slowWin   [releaseSlowTicks]uint64    // the last ticks' allocation in the slow wait, a ring
	slowAt    [releaseSlowTicks]time.Time // when each was counted
	slowN     int                         // ticks counted since slowFrom
	slowBytes uint64                      // the sum of slowWin
}

// releasePanicLogEvery: a panic of the release's step, recovered, is
// logged at most this often (a tick is releaseTick: a step that panics at
// every tick must not flood the broker's log).
const releasePanicLogEvery = time.Minute

// newHeapRelease starts with a burst behind it: the plugin's start (the
// password file parsed, the replica loaded) is given back like any other
// burst once the broker is quiet, so that an idle broker's RSS is what it
// keeps, and the memory row's idle reading is not inflated by garbage that
// a later release would take away.
func newHeapRelease(read func() heapSample, free func(), now func() time.Time) *heapRelease {
	return &heapRelease{read: read, free: free, now: now, cpu: processCPU, last: read().allocs, churn: releaseChurn}
}

// processCPU is the CPU time of every thread of the process (user and
// system). Over a release it also counts what the broker's own threads
// did meanwhile: an upper bound of the release's CPU, never less.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func (r *heapRelease) loop(tick <-chan time.Time) {
	for range tick {
		r.safeStep()
	}
}

// safeStep is step, a panic recovered: never the broker's end, and logged
// as an internal error (at most once per releasePanicLogEvery).
func (r *heapRelease) safeStep() {
	defer func() {
		if p := recover(); p != nil {
			if now := r.now(); r.panicLogged.IsZero() || now.Sub(r.panicLogged) >= releasePanicLogEvery {
				r.panicLogged = now
				enqueueLog(plugin.LevelError, fmt.Sprintf("mosquitto-guard: internal error in the heap release: %v", p))
			}
		}
	}()
	if r.step() {
		// Debug only (log_type debug or all): it follows the load.
		enqueueLog(plugin.LevelDebug, fmt.Sprintf("mosquitto-guard: heap released after a burst in %v (cost %v with its CPU; live %.1f MB); the next not before %s",
			r.wall.Round(time.Microsecond), r.took.Round(time.Microsecond), float64(r.liveAfter)/(1<<20), r.next.Format(time.TimeOnly)))
	}
}

// slowDone counts d, a tick's allocation over releaseQuiet, into the slow
// wait, and reports whether the wait is over: releaseSlowFor since it began
// with under releaseSlow a tick on average over the last releaseSlowFor.
// Judged on the average, not tick by tick: a stranger's pulse (one heavy
// tick every few seconds in a steady trickle, 1.6 MB a second in all)
// started a tick-by-tick wait again at each pulse and held the release for
// as long as it went on (a README-only attacker). And on a window that
// slides tick by tick, not on the whole wait begun again from nothing when
// over: a pulse of 40 MB half a second into the wait failed its first
// 10 s, and the release came 19 s after the pulse, the stranger at 3 MB a
// second on average (a hostile test, TestAtk15PulseEarlyInTheSlowWait); now
// it comes once the pulse has left the window, releaseSlowFor after it. An
// average of releaseSlow a tick or more over the window is a burst: no
// release while it lasts.
func (r *heapRelease) slowDone(d uint64) bool {
	now := r.now()
	if r.slowFrom.IsZero() {
		if d >= releaseSlow {
			return false // a burst's tick: no slow wait starts with it
		}
		r.slowFrom, r.slowBytes, r.slowN = now, 0, 0
	}
	i := r.slowN % len(r.slowWin)
	if r.slowN >= len(r.slowWin) {
		r.slowBytes -= r.slowWin[i]
	}
	r.slowWin[i], r.slowAt[i] = d, now
	r.slowBytes += d
	r.slowN++
	if now.Sub(r.slowFrom) < releaseSlowFor {
		return false
	}
	// The window's allocation against releaseSlow for each releaseTick of
	// the time it spans, not for each tick counted: ticks that come late
	// (the goroutine starved; time.Ticker drops those it could not
	// deliver) carry more than a tick's allocation each, and judged per
	// tick counted, 2.2 MB a second in ticks 500 ms apart held the release
	// for as long as it went on (a hostile test, TestAtk16SlowWaitLateTicks;
	// the wait before the window judged time too).
	oldest := r.slowFrom
	if r.slowN > len(r.slowWin) {
		oldest = r.slowAt[r.slowN%len(r.slowWin)]
	}
	return r.slowBytes < releaseSlow*(uint64(now.Sub(oldest)/releaseTick)+1)
}

// step applies the rule once (a tick); it reports whether it released.
func (r *heapRelease) step() bool {
	s := r.read()
	d := s.allocs - r.last
	r.last = s.allocs
	r.churn += d
	if r.churn < releaseChurn || r.now().Before(r.next) {
		r.slowFrom = time.Time{}
		return false
	}
	if d < releaseQuiet {
		r.slowFrom = time.Time{}
	} else if !r.slowDone(d) {
		r.waitFrom = time.Time{} // the burst goes on: a wait starts again after it
		return false
	}
	if s.free+s.unused+s.inUse-min(s.inUse, s.live) < max(releaseMin, s.live/releaseLiveShare) {
		// Not due: a wait for the workers' trims starts again when it is
		// (a stale one let the release come at once, the buffers held).
		r.waitFrom = time.Time{}
		return false
	}
	if r.busy != nil && r.busy() {
		if r.waitFrom.IsZero() {
			r.waitFrom = r.now()
		}
		if r.now().Sub(r.waitFrom) < releaseWaitMax {
			return false
		}
	}
	r.waitFrom, r.slowFrom = time.Time{}, time.Time{}
	start, cpu0 := r.now(), r.cpu()
	r.free()
	end := r.now()
	r.wall = end.Sub(start)
	r.took = max(r.wall, r.cpu()-cpu0)
	r.next = end.Add(min(max(releaseEvery, releaseBackoff*r.took), releaseBackoffMax))
	r.churn = 0
	after := r.read()
	r.last, r.liveAfter = after.allocs, after.live // the release's own allocation is not churn
	r.count++
	return true
}
