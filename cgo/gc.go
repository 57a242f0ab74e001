package main

import (
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// gcPercent is the GOGC the plugin runs with when the operator set none.
// The Go heap a broker's RSS carries is what the collector lets it reach
// between collections: about (1 + GOGC/100) times what is live. Each live
// connection keeps about 650 bytes live (its record, its strings, its
// user's verification, its tracking memos: go test -bench BasicAuth/held
// ./cgo), which Go's default of 100 made about 1.5 KB of RSS per
// connection; 50 makes it about 1.25 KB, 25 about 1 KB. The price is
// collections more often while CONNECTs allocate (cache misses: about 6
// KB each; hits allocate nothing), on the broker's other threads, which
// share its core: measured on 8 000 new users connecting, about 7 µs more
// CPU per CONNECT at 50, 24 µs (a tenth of the CONNECT's whole cost, a
// reconnect storm's throughput) at 25, none on the main thread (README,
// Benchmark, the GC settings table). 50 takes most of the memory for little
// CPU; GOGC=25 in the broker's environment takes the rest.
const gcPercent = 50

var gcOnce sync.Once

// lowerGCPercent sets GOGC to gcPercent unless the operator set the GOGC
// environment variable (GOGC=100 is Go's default back; GOGC=off with a
// GOMEMLIMIT, a limit alone); GOMEMLIMIT is the runtime's own, never
// touched. It returns the GOGC in force. Once per process: every instance
// shares the runtime.
func lowerGCPercent(getenv func(string) string) int {
	gcOnce.Do(func() {
		if getenv("GOGC") == "" {
			debug.SetGCPercent(gcPercent)
		}
	})
	return gcPercentNow()
}

// gcPercentNow is the GOGC in force, read without setting it (setting it
// to read it would make a GC under way finish first).
func gcPercentNow() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}
