package replica

import (
	"fmt"
	"runtime"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// filled returns a replica of n entries (a tenth of them ranges), every
// other one expired at now.
func filled(n int, now time.Time) *Replica {
	r := New(kb)
	for i := 0; i < n; i++ {
		exp := time.Time{}
		if i%2 == 0 {
			exp = now.Add(-time.Second)
		}
		var key string
		if i%10 == 9 {
			key = fmt.Sprintf("guard:block:cidr:%d.%d.%d.0/24", 11+i>>16, i>>8&255, i&255)
		} else {
			key = fmt.Sprintf("guard:block:ip:10.%d.%d.%d", i>>16&255, i>>8&255, i&255)
		}
		_ = r.Put(key, "operator", exp)
	}
	return r
}

// lookupsDuringSweep runs Sweep over r while another goroutine looks
// clients up back to back, and returns the lookup latencies seen while it
// ran, sorted, and how long the sweep took.
func lookupsDuringSweep(r *Replica, now time.Time) ([]time.Duration, time.Duration, int) {
	qs := make([]store.Query, 4096)
	for i := range qs {
		qs[i] = q("dev", fmt.Sprintf("10.0.%d.%d", i>>8&255, i&255), "bob")
	}
	lat := make([]time.Duration, 0, 4_000_000)
	runtime.GC()
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; !stop.Load() && len(lat) < cap(lat); i++ {
			t0 := time.Now()
			r.Lookup(qs[i%len(qs)], now)
			lat = append(lat, time.Since(t0))
		}
	}()
	time.Sleep(time.Millisecond)
	t0 := time.Now()
	n := r.Sweep(now)
	took := time.Since(t0)
	stop.Store(true)
	<-done
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat, took, n
}

// Sweep over a million entries must not stall lookups on the broker
// thread: it holds the replica's lock for at most walkChunk entries at a
// time. Before, it held the write lock across every entry (hundreds of
// milliseconds at a million).
func TestSweepDoesNotStallLookups(t *testing.T) {
	if testing.Short() {
		t.Skip("fills a million entries")
	}
	now := time.Now()
	r := filled(1_000_000, now)
	lat, took, n := lookupsDuringSweep(r, now)
	require := func(ok bool, f string, a ...any) {
		t.Helper()
		if !ok {
			t.Fatalf(f, a...)
		}
	}
	require(n == 500_000, "swept %d", n)
	require(r.Len() == 500_000, "len %d", r.Len())
	require(len(lat) > 0, "no lookups")
	worst := lat[len(lat)-1]
	t.Logf("sweep of 1 000 000 entries (500 000 expired) took %s; %d lookups meanwhile: p50 %s, p99 %s, p99.99 %s, max %s",
		took.Round(time.Millisecond), len(lat), lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)*9999/10000], worst)
	// Before, a lookup waited for the whole sweep. The machine may be busy
	// (scheduling delays of a few milliseconds), so fail only on a wait both
	// over 20 ms and over half the sweep.
	require(worst < 20*time.Millisecond || worst < took/2, "a lookup waited %s while Sweep ran (sweep took %s)", worst, took)
}

// BenchmarkLookupDuringSweep reports the worst and 99.99th percentile
// lookup latency while Sweep runs over a million entries, half expired:
//
//	go test ./store/replica -run '^$' -bench LookupDuringSweep -benchtime 3x
func BenchmarkLookupDuringSweep(b *testing.B) {
	now := time.Now()
	var worst, p9999 time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		r := filled(1_000_000, now)
		b.StartTimer()
		lat, _, _ := lookupsDuringSweep(r, now)
		worst = max(worst, lat[len(lat)-1])
		p9999 = max(p9999, lat[len(lat)*9999/10000])
	}
	b.ReportMetric(float64(worst.Microseconds()), "max-lookup-µs")
	b.ReportMetric(float64(p9999.Microseconds()), "p99.99-lookup-µs")
}
