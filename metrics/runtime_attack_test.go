package metrics

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// clientGolangGo are the go_* series client_golang v1.25.0 wrote with the
// plugin's old collectors.NewGoCollector() (the default rules), and, with
// the runtime/metrics rules, the names it gives the runtime/metrics this
// package reads (generated with that version; see the issue-12 review).
var clientGolangGo = map[string]string{
	"go_goroutines": "/sched/goroutines:goroutines", "go_threads": "threads created (runtime.ThreadCreateProfile)",
	"go_sched_gomaxprocs_threads": "/sched/gomaxprocs:threads", "go_gc_gogc_percent": "/gc/gogc:percent",
	"go_gc_gomemlimit_bytes": "/gc/gomemlimit:bytes", "go_memstats_heap_alloc_bytes": "/memory/classes/heap/objects:bytes",
	"go_memstats_heap_released_bytes": "/memory/classes/heap/released:bytes", "go_memstats_sys_bytes": "/memory/classes/total:bytes",
	"go_memstats_next_gc_bytes": "/gc/heap/goal:bytes", "go_gc_heap_goal_bytes": "/gc/heap/goal:bytes",
	"go_gc_cycles_total_gc_cycles_total": "/gc/cycles/total:gc-cycles", "go_sched_threads_total_threads": "/sched/threads/total:threads",
}

// runtime.go says the go_* names are client_golang's for the same values,
// so that existing dashboards keep working: each name must be one
// client_golang gave the value read.
func TestAttackGoSeriesNamesAreClientGolangs(t *testing.T) {
	for _, m := range goMetrics {
		src, ok := clientGolangGo[m.name]
		if assert.True(t, ok, "%s (%s) is no name client_golang wrote", m.name, m.runtime) && src[0] == '/' {
			assert.Equal(t, src, m.runtime, "%s: client_golang wrote another value under this name", m.name)
		}
	}
}
