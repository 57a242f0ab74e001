package metrics

import (
	"bytes"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// A Registry is a fixed list of metric families, written in the Prometheus
// text exposition format 0.0.4. It is this package's own, not
// client_golang's: that library and what it brings (protobuf, its
// collectors, net/http for promhttp) made the plugin's shared object 5.2 MB
// larger (19.4 against 14.3 MB) and an idle broker's resident memory 2.2 MB
// higher (issue 12 bounds the plugin's idle cost), to serve some thirty
// series whose names and labels are fixed at start. The tests parse what it
// writes with Prometheus's own text parser.
//
// Families are added at start; a scrape writes each in the order added.
type Registry struct {
	mu   sync.Mutex // held while families are added and written
	fams []family
}

type family struct {
	name, help, typ string
	write           func(e *Emitter)
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{} }

// Emitter writes the samples of one family.
type Emitter struct {
	b    *bytes.Buffer
	name string
}

// Sample writes one sample of the family: name+suffix, labels (pairs of
// name and value, values escaped here), and v.
func (e *Emitter) Sample(suffix string, v float64, labels ...string) {
	e.b.WriteString(e.name)
	e.b.WriteString(suffix)
	if len(labels) > 0 {
		e.b.WriteByte('{')
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				e.b.WriteByte(',')
			}
			e.b.WriteString(labels[i])
			e.b.WriteString(`="`)
			labelEscaper.WriteString(e.b, labels[i+1])
			e.b.WriteByte('"')
		}
		e.b.WriteByte('}')
	}
	e.b.WriteByte(' ')
	e.b.WriteString(formatValue(v))
	e.b.WriteByte('\n')
}

var (
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
	labelEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)
)

// formatValue writes v as Prometheus does: +Inf, -Inf, NaN, else the
// shortest decimal that reads back as v.
func formatValue(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// Add adds a family: its name, help text, type (counter, gauge,
// histogram, untyped) and the function that writes its samples at each
// scrape. The function runs with the registry's lock held: it must be quick
// and must not block.
func (r *Registry) Add(name, typ, help string, write func(e *Emitter)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fams = append(r.fams, family{name: name, help: help, typ: typ, write: write})
}

// Counter adds a counter family without labels.
func (r *Registry) Counter(name, help string) *Counter {
	c := new(Counter)
	r.Add(name, "counter", help, func(e *Emitter) { e.Sample("", float64(c.Load())) })
	return c
}

// CounterFunc adds a counter family read by f at each scrape.
func (r *Registry) CounterFunc(name, help string, f func() float64) {
	r.Add(name, "counter", help, func(e *Emitter) { e.Sample("", f()) })
}

// GaugeFunc adds a gauge family read by f at each scrape.
func (r *Registry) GaugeFunc(name, help string, f func() float64) {
	r.Add(name, "gauge", help, func(e *Emitter) { e.Sample("", f()) })
}

// WriteTo writes the registry's exposition into b: every family, in the
// order added.
func (r *Registry) WriteTo(b *bytes.Buffer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := Emitter{b: b}
	for _, f := range r.fams {
		b.WriteString("# HELP ")
		b.WriteString(f.name)
		b.WriteByte(' ')
		helpEscaper.WriteString(b, f.help)
		b.WriteString("\n# TYPE ")
		b.WriteString(f.name)
		b.WriteByte(' ')
		b.WriteString(f.typ)
		b.WriteByte('\n')
		e.name = f.name
		f.write(&e)
	}
}

// Counter is a monotonic count: one atomic add, no allocation.
type Counter struct{ v atomic.Uint64 }

// Inc adds 1.
func (c *Counter) Inc() { c.v.Add(1) }

// Add adds n.
func (c *Counter) Add(n uint64) { c.v.Add(n) }

// Load returns the count.
func (c *Counter) Load() uint64 { return c.v.Load() }

// Histogram counts durations into fixed buckets: an observation is a few
// atomic adds (its bucket, the count, the sum in nanoseconds, exact), no
// lock, no allocation. A scrape reads the buckets one by one while
// observations go on, so a scrape's sum may include an observation its count
// does not yet (the count is the +Inf bucket's, as the format requires).
type Histogram struct {
	bounds  []float64       // upper bounds, seconds, ascending
	boundNs []int64         // the same, in nanoseconds
	counts  []atomic.Uint64 // per bucket (not cumulative); the last is +Inf
	sumNs   atomic.Uint64   // nanoseconds; a negative duration counts as 0
}

// Histogram adds a histogram family of durations with the given upper
// bounds in seconds (ascending; +Inf is implied).
func (r *Registry) Histogram(name, help string, bounds []float64) *Histogram {
	h := &Histogram{bounds: bounds, boundNs: make([]int64, len(bounds)), counts: make([]atomic.Uint64, len(bounds)+1)}
	for i, b := range bounds {
		h.boundNs[i] = int64(math.Round(b * 1e9))
	}
	r.Add(name, "histogram", help, h.write)
	return h
}

// Observe counts one duration.
func (h *Histogram) Observe(d time.Duration) {
	ns := int64(d)
	if ns < 0 {
		ns = 0
	}
	i := 0
	for i < len(h.boundNs) && ns > h.boundNs[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sumNs.Add(uint64(ns))
}

func (h *Histogram) write(e *Emitter) {
	var cum uint64
	for i, b := range h.bounds {
		cum += h.counts[i].Load()
		e.Sample("_bucket", float64(cum), "le", formatValue(b))
	}
	cum += h.counts[len(h.bounds)].Load()
	e.Sample("_bucket", float64(cum), "le", "+Inf")
	e.Sample("_sum", float64(h.sumNs.Load())/1e9)
	e.Sample("_count", float64(cum))
}
