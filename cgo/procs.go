package main

import (
	"runtime"
	"sync"
)

// minProcs is the least GOMAXPROCS the plugin runs with when the operator
// set none. Go sets GOMAXPROCS from the CPUs the process may use: a broker
// pinned to one core, or in a container limited to one CPU, gets 1. Then
// every callback from the broker thread into Go loses its P to Go's sysmon
// thread while the broker runs C, and takes it back through the scheduler
// (and a futex wake-up of sysmon) at the next callback. With a second P
// idle, sysmon leaves the broker thread its P (for 10 ms at a time: the
// yield of yield.go keeps it so). Measured on a broker pinned
// to one core (one user reconnecting, cache hits, alternating runs): 5 to
// 7 % more CONNECTs/s, 7 to 11 µs less CPU per CONNECT for the whole
// process, a third fewer context switches of Go's threads; cache misses
// unchanged (README, Benchmark). Go still runs no more goroutines at once
// than the CPUs it is given can hold: the kernel shares the core.
const minProcs = 2

var procsOnce sync.Once

// raiseProcs sets GOMAXPROCS to minProcs if it is lower and the operator
// did not set the GOMAXPROCS environment variable; it returns the value in
// force. Once per process: every instance shares the runtime.
func raiseProcs(getenv func(string) string) int {
	procsOnce.Do(func() {
		if getenv("GOMAXPROCS") == "" && runtime.GOMAXPROCS(0) < minProcs {
			runtime.GOMAXPROCS(minProcs)
		}
	})
	return runtime.GOMAXPROCS(0)
}
