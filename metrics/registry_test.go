package metrics

import (
	"bytes"
	"math"
	"net"
	"os"
	rtm "runtime/metrics"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// parse reads reg's exposition with Prometheus's own text parser: what it
// writes is what Prometheus reads.
func parse(t *testing.T, reg *Registry) map[string]*dto.MetricFamily {
	t.Helper()
	var b bytes.Buffer
	reg.WriteTo(&b)
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(&b)
	require.NoError(t, err, b.String())
	return fams
}

func TestExpositionParses(t *testing.T) {
	reg := NewRegistry()
	c := reg.Counter("a_total", "A counter,\nwith a \\ and a newline in its help.")
	c.Inc()
	c.Add(41)
	reg.GaugeFunc("b", "A gauge.", func() float64 { return -2.5 })
	reg.CounterFunc("c_total", "A counter read when scraped.", func() float64 { return 1e21 })
	reg.Add("d", "gauge", "Labels and odd values.", func(e *Emitter) {
		e.Sample("", math.Inf(1), "k", `quote " backslash \ newline`+"\n", "z", "2")
		e.Sample("", math.NaN(), "k", "nan")
	})
	fams := parse(t, reg)
	assert.Equal(t, 42.0, fams["a_total"].Metric[0].GetCounter().GetValue())
	assert.Equal(t, "A counter,\nwith a \\ and a newline in its help.", fams["a_total"].GetHelp())
	assert.Equal(t, dto.MetricType_GAUGE, fams["b"].GetType())
	assert.Equal(t, -2.5, fams["b"].Metric[0].GetGauge().GetValue())
	assert.Equal(t, 1e21, fams["c_total"].Metric[0].GetCounter().GetValue())
	d := fams["d"].Metric
	require.Len(t, d, 2)
	assert.Equal(t, `quote " backslash \ newline`+"\n", d[0].Label[0].GetValue())
	assert.Equal(t, "2", d[0].Label[1].GetValue())
	assert.True(t, math.IsInf(d[0].GetGauge().GetValue(), 1))
	assert.True(t, math.IsNaN(d[1].GetGauge().GetValue()))
}

// A histogram's buckets are cumulative, its count is the +Inf bucket's,
// its sum exact in nanoseconds; a duration on a bound falls in that bound's
// bucket (le: less or equal).
func TestHistogram(t *testing.T) {
	reg := NewRegistry()
	h := reg.Histogram("h_seconds", "Durations.", []float64{1e-6, 2.5e-6, 1e-3, 1})
	for _, d := range []time.Duration{0, time.Microsecond, 2 * time.Microsecond, 2500 * time.Nanosecond,
		time.Millisecond + 1, time.Second, 2 * time.Second, -time.Second} {
		h.Observe(d)
	}
	hist := parse(t, reg)["h_seconds"].Metric[0].GetHistogram()
	var got []uint64
	for _, b := range hist.Bucket {
		got = append(got, b.GetCumulativeCount())
	}
	assert.Equal(t, []uint64{3, 5, 5, 7, 8}, got) // ≤1µs: 0, 1µs, -1s (as 0); ≤2.5µs: +2; ≤1ms: -; ≤1s: +2; +Inf: +1
	assert.Equal(t, uint64(8), hist.GetSampleCount())
	assert.InDelta(t, 3.001005501, hist.GetSampleSum(), 1e-12)
}

func TestHistogramObserveAllocatesNothing(t *testing.T) {
	h := NewRegistry().Histogram("h_seconds", "Durations.", []float64{1e-6, 1e-3, 1})
	assert.Zero(t, testing.AllocsPerRun(1000, func() { h.Observe(time.Millisecond) }))
	c := NewRegistry().Counter("c_total", "A counter.")
	assert.Zero(t, testing.AllocsPerRun(1000, c.Inc))
}

// The runtime and process series are there, with this process's values.
func TestRuntimeSeries(t *testing.T) {
	reg := NewRegistry()
	reg.Runtime()
	ln, err := net.Listen("tcp", "127.0.0.1:0") // one descriptor more, seen
	require.NoError(t, err)
	defer ln.Close()
	for t0 := time.Now(); time.Since(t0) < 50*time.Millisecond; { // some CPU time to see
	}
	fams := parse(t, reg)
	val := func(name string) float64 {
		f := fams[name]
		require.NotNil(t, f, name)
		m := f.Metric[0]
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			return m.GetCounter().GetValue()
		}
		return m.GetGauge().GetValue()
	}
	for _, m := range goMetrics {
		assert.Contains(t, fams, m.name)
	}
	assert.GreaterOrEqual(t, val("go_goroutines"), 2.0)
	assert.GreaterOrEqual(t, val("go_threads"), 1.0)
	assert.GreaterOrEqual(t, val("go_sched_gomaxprocs_threads"), 1.0)
	if os.Getenv("GOGC") == "" {
		assert.Equal(t, 100.0, val("go_gc_gogc_percent"))
	}
	assert.Greater(t, val("go_memstats_heap_alloc_bytes"), 0.0)
	assert.Greater(t, val("go_memstats_sys_bytes"), val("go_memstats_heap_alloc_bytes"))
	assert.Equal(t, 1.0, val("go_info"))
	assert.Greater(t, val("process_resident_memory_bytes"), 1e6)
	assert.Greater(t, val("process_virtual_memory_bytes"), val("process_resident_memory_bytes"))
	assert.Greater(t, val("process_cpu_seconds_total"), 0.0)
	entries, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	assert.InDelta(t, float64(len(entries)-1), val("process_open_fds"), 2) // ReadDir's own descriptor
	assert.Greater(t, val("process_max_fds"), 0.0)
	start := time.Unix(int64(val("process_start_time_seconds")), 0)
	assert.WithinDuration(t, time.Now(), start, 10*time.Minute, "this test process started recently")
	assert.False(t, start.After(time.Now()))
}

// Every go_* series reads a runtime/metrics name this Go has: one it lacks
// would be left out of the exposition (not written as a false 0).
func TestGoMetricsNamesExist(t *testing.T) {
	known := map[string]bool{}
	for _, d := range rtm.All() {
		known[d.Name] = true
	}
	for _, m := range goMetrics {
		assert.True(t, known[m.runtime], "%s reads %s, which this Go does not have", m.name, m.runtime)
	}
}

// A command name with spaces and parentheses does not shift the fields;
// a short line gives zeros, not a panic.
func TestParseProcStat(t *testing.T) {
	line := "4242 (mosq) (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 150 0 0 20 0 3 0 6000 123456789 300 " +
		"18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 17 1 0 0 0 0 0\n"
	ps := parseProcStat([]byte(line), 4096, 1_700_000_000)
	assert.Equal(t, 4.0, ps.cpuSeconds) // (250 + 150) / 100
	assert.Equal(t, 123456789.0, ps.vsize)
	assert.Equal(t, 300.0*4096, ps.rss)
	assert.Equal(t, 1_700_000_060.0, ps.start) // 6000 / 100 after boot
	assert.Equal(t, procStat{}, parseProcStat([]byte("4242 (mosq S 1"), 4096, 1))
	assert.Equal(t, 0.0, parseProcStat([]byte("4242 (mosq) S 1 2"), 4096, 1).rss)
}
