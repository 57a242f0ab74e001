package testenv

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// SchedEvents counts goroutines made to run in this process, as the
// runtime samples them (one transition in 8 is timed into
// /sched/latencies): a test of who wakes whom compares two readings.
func SchedEvents() uint64 {
	s := []metrics.Sample{{Name: "/sched/latencies:seconds"}}
	metrics.Read(s)
	var n uint64
	for _, c := range s[0].Value.Float64Histogram().Counts {
		n += c
	}
	return n
}

// WakesDuring returns the goroutines made runnable (sampled as SchedEvents
// samples them) while fn ran, less the process's own background: those made
// runnable during a spin of length idle just before, scaled to fn's length.
// The collector is off for both, as its workers are woken too. A package's
// other tests leave goroutines with timers behind (a fresh-clone CI run under
// -race counted 19 against a bound of 18 with none of it subtracted);
// anything fn itself wakes is still counted whole.
func WakesDuring(idle time.Duration, fn func()) uint64 {
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	runtime.GC()
	before := SchedEvents()
	for t0 := time.Now(); time.Since(t0) < idle; {
	}
	noise := SchedEvents() - before
	t0 := time.Now()
	before = SchedEvents()
	fn()
	woken := SchedEvents() - before
	scaled := uint64(float64(noise) * float64(time.Since(t0)) / float64(idle))
	if woken < scaled {
		return 0
	}
	return woken - scaled
}
