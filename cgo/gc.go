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
// ./cgo): in the memory row (8 000 held) 1.55 KB of RSS per connection at
// Go's default of 100, 1.2 KB at 50, 0.97 KB at 25. The price is
// collections more often while CONNECTs allocate (a cache miss about 6 KB;
// a hit next to nothing), on the broker's other threads, which share its
// core: 7 µs more CPU per cache-miss CONNECT at 50, 14 at 25; its main
// thread unchanged within the noise (README, Benchmark, the GC settings
// table). 50 takes most of the memory for half the CPU; GOGC=25 in the
// broker's environment takes the rest.
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
