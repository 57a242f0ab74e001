package replica

import (
	"fmt"
	"runtime"
	"testing"
	"time"
)

// The replica's own memory for a million keys (900 000 exact keys and
// 100 000 ranges); the benchmark measures the whole process.
func TestMemoryPerMillionKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates a million keys")
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	r := New(kb)
	for i := 0; i < 900_000; i++ {
		_ = r.Put(fmt.Sprintf("guard:block:ip:10.%d.%d.%d", i>>16&255, i>>8&255, i&255), "operator", time.Time{})
	}
	for i := 0; i < 100_000; i++ {
		_ = r.Put(fmt.Sprintf("guard:block:cidr:%d.%d.%d.0/24", 11+i>>16, i>>8&255, i&255), "range", time.Time{})
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	mb := float64(after.HeapAlloc-before.HeapAlloc) / 1e6
	t.Logf("1 000 000 keys: %.0f MB of heap", mb)
	if r.Len() != 1_000_000 {
		t.Fatalf("len %d", r.Len())
	}
	if mb > 200 {
		t.Errorf("%.0f MB for a million keys; want under 200", mb)
	}
	runtime.KeepAlive(r)
}
