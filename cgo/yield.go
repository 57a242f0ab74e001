package main

import (
	"os"
	"runtime"
	"sync/atomic"
	"time"
)

// The broker thread lets Go's scheduler run on its P once every yieldEvery
// while CONNECTs come (issue 12). Without it, Go's sysmon thread woke 2 000
// to 2 600 times a second under a CONNECT load and took about 5 % of the
// broker process's CPU (perf, 2026-12-02), more than the guard's own Go
// code on the broker thread.
//
// Why: a callback from Mosquitto's thread runs on a P that it keeps, in
// the state of a system call, while the thread is back in Mosquitto's C
// code; no goroutine is ever scheduled on that P, so its scheduling tick
// never moves. sysmon takes a P whose tick has not moved for 10 ms for one
// held by a goroutine too long (runtime.retake) and takes it away; having
// taken one, it polls again after 20 µs, and slows down only after 50
// polls that took nothing. The next callback then takes a P back the slow
// way and wakes sysmon from its deep sleep. runtime.Gosched from the
// callback goes through the scheduler on that P and moves its tick, so
// sysmon finds nothing to take and sleeps up to 10 ms at a time.
//
// Only with GOMAXPROCS 2 or more (raiseProcs makes it 2 unless the
// operator set GOMAXPROCS): with one P, sysmon takes the P of any thread
// in C for 20 µs whatever its tick, and the yield adds hand-offs instead
// (make bench-cgocall, a call every 150 µs: Go's threads' CPU per call 6
// µs without, 26 with).
//
// What it costs: one yield per yieldEvery at most (200 a second), each a
// hand-off of the broker thread's P and back: 37 µs on average off the
// broker thread under the bench load, 1.8 ms at most seen; the guard's own
// goroutines run in that time. But the broker's goroutine waits at the tail
// of Go's global run queue: with more runnable goroutines than Ps (a
// replica reload, a password file re-read, GC workers) it waits behind
// each of them, up to a 10 ms turn apiece (20 ms with sysmon asleep): 20
// to 40 ms a yield with two or three busy goroutines and GOMAXPROCS 2. So
// after a yield that took w the next waits yieldBackoff times w if that is
// longer than yieldEvery (capped at yieldBackoffMax): a hand-off (w up to
// 250 µs) keeps the 5 ms rhythm, and the broker thread never spends more
// than a twentieth of its time in yields, one wait at a time; under such a
// load, when sysmon is busy anyway, it nearly never yields (a 20 ms yield:
// the next after 400 ms). Before, a yield longer than
// yieldEvery made the next CONNECT yield again: every CONNECT waited a turn
// and the broker thread made 30 to 60 times fewer callbacks
// (cgo/atk_yield_test.go, TestAtkYieldCallbackWaitVsBaseline).
const (
	yieldEvery      = 5 * time.Millisecond
	yieldBackoff    = 20
	yieldBackoffMax = 10 * time.Second
)

// noYield turns the yield off (MOSQUITTO_GUARD_NO_YIELD set to anything but
// empty in the broker's environment): the baseline that
// TestYieldKeepsSysmonAsleep and make bench's b-noyield slices compare
// with. Read once, at load.
var noYield = os.Getenv("MOSQUITTO_GUARD_NO_YIELD") != ""

var (
	yieldOn   atomic.Bool  // set at init: GOMAXPROCS >= 2 and not noYield
	yieldBase = time.Now() // the monotonic clock's origin for nextYield
	nextYield atomic.Int64 // ns since yieldBase before which no yield
	gosched   = runtimeGosched
)

// runtimeGosched is runtime.Gosched, for tests to put back.
var runtimeGosched = runtime.Gosched

// setYield decides, once GOMAXPROCS is set (guardInit, after raiseProcs),
// whether the broker thread yields.
func setYield() {
	yieldOn.Store(!noYield && runtime.GOMAXPROCS(0) >= 2)
}

// yieldSometimes yields the broker thread's P to Go's scheduler if it has
// not for yieldEvery, nor for yieldBackoff times the last yield's length.
// Broker thread (guardBasicAuth).
func yieldSometimes() {
	if !yieldOn.Load() {
		return
	}
	now := int64(time.Since(yieldBase))
	if now < nextYield.Load() {
		return
	}
	gosched()
	end := int64(time.Since(yieldBase))
	nextYield.Store(end + min(max(int64(yieldEvery), (end-now)*yieldBackoff), int64(yieldBackoffMax)))
}
