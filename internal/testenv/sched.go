package testenv

import "runtime/metrics"

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
