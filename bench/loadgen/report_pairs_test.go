package main

import (
	"fmt"
	"math"
	"strings"
	"testing"
)

// renderPairs is pairsSection's text for p.
func renderPairs(p pairSummary) string {
	var out strings.Builder
	pairsSection(func(f string, a ...any) { fmt.Fprintf(&out, f, a...) }, p)
	return out.String()
}

// sliceSet collects paired slices by label.
type sliceSet map[string][]ConnectResult

func (c sliceSet) add(r ConnectResult) { c[r.Label] = append(c[r.Label], r) }

func pairSlice(label string, round int, rate, thread, proc float64) ConnectResult {
	return ConnectResult{Cmd: "connect", Label: pairPrefix + label, Round: round, Rate: rate, Seconds: 1,
		Cost: map[string]cpuCost{"broker": {ThreadUS: thread, ProcessUS: proc, ThreadErrUS: 0.4}}}
}

// The paired slices are paired by round; a round without all three is left
// out; the cache-hit targets are judged on the pairs' medians'
// intervals, with the interleaved rounds' figures beside them.
func TestPairsJudgeTheCacheHitTargets(t *testing.T) {
	conns := map[string][]ConnectResult{}
	add := func(r ConnectResult) { conns[r.Label] = append(conns[r.Label], r) }
	// Three complete pairs: b / a0 0.96, 0.90, 0.97; thread +1, +5, +1.5;
	// b / b-off process 1.01, 1.10, 1.02.
	for i, v := range [][6]float64{{1000, 960, 100, 101, 110, 108.9}, {1000, 900, 100, 105, 110, 100}, {1000, 970, 100, 101.5, 102, 100}} {
		add(pairSlice("a0", i+1, v[0], v[2], v[2]))
		add(pairSlice("b", i+1, v[1], v[3], v[4]))
		add(pairSlice("b-off", i+1, 990, 100, v[5]))
	}
	// A fourth pair without its b-off slice: not a pair.
	add(pairSlice("a0", 4, 1000, 100, 100))
	add(pairSlice("b", 4, 100, 200, 300))
	p := summarizePairs(conns)
	if p.n != 3 {
		t.Fatalf("%d pairs, want 3", p.n)
	}
	if p.tputMed != 0.96 || p.threadMed != 1.5 {
		t.Errorf("medians: throughput %v, thread %v; want 0.96, 1.5", p.tputMed, p.threadMed)
	}
	if p.trackMed < 1.019 || p.trackMed > 1.021 {
		t.Errorf("tracking median %v, want 1.02", p.trackMed)
	}
	// The interleaved rounds say otherwise (0.80, +20 µs, 1.2): the pairs decide.
	med := map[string]float64{"a0": 1000, "b": 800}
	costs := map[string]connCost{"a0": {thread: 100, proc: 100}, "b": {thread: 120, proc: 132}, "b-off": {thread: 105, proc: 110}}
	got := map[string][2]string{}
	for _, r := range issue12Targets(med, costs, p, map[string]stormSummary{}, memSummary{}, nil, false, false) {
		got[r[0]] = [2]string{r[1], r[2]}
	}
	// Each median meets its target, but three pairs are too few for a
	// 95 % interval (their whole range holds the median 75 % of the
	// time): undecided, not met.
	for target, want := range map[string]string{
		"cache hits, throughput: b / a0 ≥ 0.95":                                      "**UNDECIDED** (3 pairs: too few for a 95 % interval)",
		"cache hits, broker-thread CPU per CONNECT: b ≤ a0 + 2 µs":                   "**UNDECIDED** (3 pairs: too few for a 95 % interval)",
		"client-ID tracking, whole broker process CPU per CONNECT: b / b-off ≤ 1.05": "**UNDECIDED** (3 pairs: too few for a 95 % interval)",
	} {
		g := got[target]
		if g[1] != want {
			t.Errorf("%s: %s, want %s", target, g[1], want)
		}
		if !strings.Contains(g[0], "median of 3 paired slices") || !strings.Contains(g[0], "interleaved rounds:") {
			t.Errorf("%s: %q does not give the pairs and the rounds", target, g[0])
		}
	}
	// Without pairs the rounds decide, as before.
	for _, r := range issue12Targets(med, costs, pairSummary{}, map[string]stormSummary{}, memSummary{}, nil, false, false) {
		if strings.HasPrefix(r[0], "cache hits") && r[2] != "**MISS**" {
			t.Errorf("%s without pairs: %s, want **MISS**", r[0], r[2])
		}
	}
	var out strings.Builder
	pairsSection(func(f string, a ...any) { fmt.Fprintf(&out, f, a...) }, p)
	if !strings.Contains(out.String(), "| **median** |") || strings.Count(out.String(), "\n| ") != 5 {
		t.Errorf("section:\n%s", out.String())
	}
}

// b-noyield's slices go beside the pairs: b / b-noyield per pair (n/a in a
// pair without one) and their medians in the median row, under the table
// what b-noyield is; the pairs and the targets' medians are as without it.
func TestPairsShowWhatTheYieldSaves(t *testing.T) {
	conns := map[string][]ConnectResult{}
	add := func(r ConnectResult) { conns[r.Label] = append(conns[r.Label], r) }
	// b: 1000 connects/s, thread 40, process 50 µs. b-noyield in pairs 1 to
	// 3 (4 has none): rates 1000, 800, 1250; thread 40, 50, 32; process
	// 50, 62.5, 40. b / b-noyield: connects/s 1, 1.25, 0.8 (median 1);
	// thread 1, 0.8, 1.25 (median 1); process 1, 0.8, 1.25 (median 1). Pair
	// 5 lacks a0: not a pair, its b-noyield slice not counted.
	for i, v := range [][3]float64{{1000, 40, 50}, {800, 50, 62.5}, {1250, 32, 40}, {}, {2000, 10, 10}} {
		r := i + 1
		if r != 5 {
			add(pairSlice("a0", r, 1100, 30, 30))
		}
		add(pairSlice("b", r, 1000, 40, 50))
		add(pairSlice("b-off", r, 1000, 40, 48))
		if v[0] > 0 {
			add(pairSlice("b-noyield", r, v[0], v[1], v[2]))
			conns[pairPrefix+"b-noyield"][len(conns[pairPrefix+"b-noyield"])-1].CPU = map[string]float64{"other": 10 * float64(r)}
		}
	}
	p := summarizePairs(conns)
	if p.n != 4 || p.nyN != 3 {
		t.Fatalf("%d pairs, %d with b-noyield; want 4, 3", p.n, p.nyN)
	}
	if p.nyTputMed != 1 || p.nyThMed != 1 || p.nyProcMed != 1 {
		t.Errorf("b / b-noyield medians: connects/s %v, thread %v, process %v; want 1, 1, 1", p.nyTputMed, p.nyThMed, p.nyProcMed)
	}
	if p.nyTput[1] != 1.25 || p.nyThread[1] != 0.8 || p.nyProc[2] != 1.25 {
		t.Errorf("pair ratios: connects/s %v, thread %v, process %v", p.nyTput, p.nyThread, p.nyProc)
	}
	if p.tputMed != 1000.0/1100 || p.threadMed != 10 || p.trackMed != 50.0/48 {
		t.Errorf("the targets' medians moved: %v, %v, %v", p.tputMed, p.threadMed, p.trackMed)
	}
	// The paired slices alone (BENCH_ONLY=pairs): no rounds to give beside them.
	for _, r := range issue12Targets(map[string]float64{}, map[string]connCost{}, p, map[string]stormSummary{}, memSummary{}, nil, false, false) {
		if strings.Contains(r[0], "b / a0") || strings.Contains(r[0], "a0 + 2") || strings.Contains(r[0], "b / b-off") {
			if !strings.HasSuffix(r[1], "; no interleaved rounds)") || strings.Contains(r[1], "NaN") {
				t.Errorf("%s without rounds: %q", r[0], r[1])
			}
		}
	}
	var out strings.Builder
	pairsSection(func(f string, a ...any) { fmt.Fprintf(&out, f, a...) }, p)
	s := out.String()
	for _, want := range []string{
		"| b / b-noyield connects/s | b / b-noyield, process CPU per CONNECT | b / b-noyield, broker thread CPU per CONNECT |\n",
		"|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
		"| 2 | 1100 | 1000 | 1000 | 0.909 | +10.0 | 1.042 | 1.250 | 0.800 | 0.800 |\n",
		"| 4 | 1100 | 1000 | 1000 | 0.909 | +10.0 | 1.042 | n/a | n/a | n/a |\n",
		"| **median** | 1100 | 1000 | 1000 | **0.909** | **+10.0** | **1.042** | **1.000** | **1.000** | **1.000** |\n",
		"\nb-noyield is b (", "MOSQUITTO_GUARD_NO_YIELD=1", "in the order a0, b, b-off, b-noyield",
		"took 10 to 30 % of a core during a slice (median 20 %)", // pair 5 not a pair: its 50 left out
	} {
		if !strings.Contains(s, want) {
			t.Errorf("section lacks %q:\n%s", want, s)
		}
	}
	// Without b-noyield slices the table is as it was.
	delete(conns, pairPrefix+"b-noyield")
	out.Reset()
	pairsSection(func(f string, a ...any) { fmt.Fprintf(&out, f, a...) }, summarizePairs(conns))
	if strings.Contains(out.String(), "noyield") || !strings.Contains(out.String(), "| 1.042 |\n") {
		t.Errorf("section without b-noyield:\n%s", out.String())
	}
}

// The references a0-cred and noop split b's broker thread over a0's into
// steps, each a difference within one pair; a pair without a reference's
// slice is left out of that reference's figures; without them the section
// is as before.
func TestPairsReferencesSplitTheBrokerThread(t *testing.T) {
	conns := sliceSet{}
	add := conns.add
	// a0 thread 50, 60, 40; a0-cred +2, +3, +1 over it; noop +2, +2, +4
	// over a0-cred; b +3, +1, +2 over noop (all: +7, +6, +7).
	for i, v := range [][4]float64{{50, 52, 54, 57}, {60, 63, 65, 66}, {40, 41, 45, 47}} {
		r := i + 1
		add(pairSlice("a0", r, 1000, v[0], v[0]))
		add(pairSlice("a0-cred", r, 980, v[1], v[1]))
		add(pairSlice("noop", r, 960, v[2], v[2]))
		add(pairSlice("b", r, 900, v[3], v[3]))
		add(pairSlice("b-off", r, 910, v[3], v[3]))
	}
	// A fourth pair whose noop slice is missing: a pair, but not noop's.
	add(pairSlice("a0", 4, 1000, 50, 50))
	add(pairSlice("a0-cred", 4, 990, 70, 70))
	add(pairSlice("b", 4, 900, 90, 90))
	add(pairSlice("b-off", 4, 910, 90, 90))
	p := summarizePairs(conns)
	cred, noop := p.refs["a0-cred"], p.refs["noop"]
	if p.n != 4 || cred.n != 4 || noop.n != 3 {
		t.Fatalf("pairs %d, a0-cred %d, noop %d; want 4, 4, 3", p.n, cred.n, noop.n)
	}
	if got := median(known(noop.fromB)); got != 2 {
		t.Errorf("noop → b median %v, want 2", got)
	}
	if got := median(known(cred.thread)); got != 2.5 { // 2, 3, 1, 20
		t.Errorf("a0 → a0-cred median %v, want 2.5", got)
	}
	out := renderPairs(p)
	for _, want := range []string{
		"| a0 → a0-cred: anonymous Mosquitto, its clients sending b's username and password | +2.5 (+1.0 to +20.0) | 0.980 |",
		"| a0-cred → noop: a plugin that accepts them at once (bench/noop), BASIC_AUTH and DISCONNECT | +2.0 (+2.0 to +4.0) | 0.960 |",
		"| noop → b: the guard's own work on a cache hit | +2.0 (+1.0 to +3.0) | 0.900 |",
		"(4 and 3 of 4)",
		"Six brokers (a0, a0-cred, noop, b, b-off, b-noyield",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("section lacks %q:\n%s", want, out)
		}
	}
	// Without the references: no such table.
	delete(conns, pairPrefix+"a0-cred")
	delete(conns, pairPrefix+"noop")
	if out := renderPairs(summarizePairs(conns)); strings.Contains(out, "Where b's broker thread") {
		t.Errorf("section without references:\n%s", out)
	}
}

// The control: the bound judged on a0 → noop the same way as on a0 → b.
// Ten pairs whose noop is within ±1 µs of a0 pass it: the pairs could
// tell; ten whose noop is spread over ±20 µs do not, and the section says
// that b's verdict then says as little. The guard's own step (noop → b)
// is given with its interval in both.
func TestPairsControlJudgesTheNoopPlugin(t *testing.T) {
	for _, tc := range []struct {
		spread float64
		want   []string
	}{
		{1, []string{"a plugin that does nothing: its median's interval -0.8 to +0.6 µs (98 %), **PASS**.",
			"These pairs could tell a plugin within the bound",
			"The guard's own step, noop → b: its median's interval +2.4 to +3.8 µs (98 %)."}},
		{20, []string{"a plugin that does nothing: its median's interval -16.0 to +12.0 µs (98 %), **UNDECIDED**",
			"could not tell even a plugin that does nothing within the bound: b's verdict says as little.",
			"The guard's own step, noop → b: its median's interval +2.4 to +3.8 µs (98 %)."}},
	} {
		conns := sliceSet{}
		for r := 1; r <= 10; r++ {
			// noop − a0: -1, -0.8, ..., +0.8 times spread; b − noop: 2 to 4.
			d := tc.spread * (float64(r) - 6) / 5
			conns.add(pairSlice("a0", r, 1000, 100, 100))
			conns.add(pairSlice("a0-cred", r, 1000, 100, 100))
			conns.add(pairSlice("noop", r, 1000, 100+d, 100+d))
			b := 100 + d + 2 + 0.2*float64(r)
			conns.add(pairSlice("b", r, 950, b, b))
			conns.add(pairSlice("b-off", r, 960, b, b))
		}
		out := renderPairs(summarizePairs(conns))
		for _, want := range tc.want {
			if !strings.Contains(out, want) {
				t.Errorf("spread %v: section lacks %q:\n%s", tc.spread, want, out)
			}
		}
	}
}

// The cache-miss slices (a', b', b'-off) are paired by round; a round
// without all three is left out; the two cache-miss ratios are judged on
// the pairs' medians, the interleaved rounds' figures beside them.
func TestMissPairsJudgeTheCacheMissRatios(t *testing.T) {
	conns := sliceSet{}
	add := conns.add
	// b' / a' thread: 1.00, 1.10, 0.98; b' / b'-off process: 1.04, 1.20, 1.02.
	for i, v := range [][5]float64{{100, 100, 104, 100}, {100, 110, 120, 100}, {100, 98, 102, 100}} {
		r := i + 1
		add(pairSlice("a10k", r, 5000, v[0], v[0]))
		add(pairSlice("b10k", r, 4800, v[1], v[2]))
		add(pairSlice("b10k-off", r, 5100, 95, v[3]))
	}
	add(pairSlice("a10k", 4, 5000, 100, 100)) // no b', no b'-off: not a pair
	p := summarizePairs(conns)
	if p.ok() {
		t.Fatalf("cache-hit pairs from cache-miss slices: %d", p.n)
	}
	m := p.miss
	if m.n != 3 || m.threadMed != 1.0 || math.Abs(m.trackMed-1.04) > 1e-9 {
		t.Fatalf("miss pairs %d, thread median %v, tracking median %v; want 3, 1, 1.04", m.n, m.threadMed, m.trackMed)
	}
	// The rounds say otherwise (b' / a' 1.2, b' / b'-off 1.3): the pairs decide.
	costs := map[string]connCost{"a10k": {thread: 100, proc: 100}, "b10k": {thread: 120, proc: 130}, "b10k-off": {thread: 95, proc: 100}}
	got := map[string][2]string{}
	for _, r := range issue12Targets(map[string]float64{}, costs, p, map[string]stormSummary{}, memSummary{}, nil, false, false) {
		got[r[0]] = [2]string{r[1], r[2]}
	}
	// The medians meet the targets; three pairs are too few to tell:
	// undecided.
	for target, want := range map[string]string{
		"broker-thread CPU per CONNECT, cache misses: b' / a' ≤ 1.05":                  "**UNDECIDED** (3 pairs: too few for a 95 % interval)",
		"client-ID tracking, whole broker process CPU per CONNECT: b' / b'-off ≤ 1.05": "**UNDECIDED** (3 pairs: too few for a 95 % interval)",
	} {
		g := got[target]
		if g[1] != want || !strings.Contains(g[0], "median of 3 paired slices") || !strings.Contains(g[0], "interleaved rounds: 1.") {
			t.Errorf("%s: %q %s, want %s on the pairs with the rounds beside", target, g[0], g[1], want)
		}
	}
	// Without the slices the rounds decide, as before.
	for _, r := range issue12Targets(map[string]float64{}, costs, pairSummary{}, map[string]stormSummary{}, memSummary{}, nil, false, false) {
		if strings.Contains(r[0], "b' / ") && r[2] != "**MISS**" {
			t.Errorf("%s without pairs: %s, want **MISS**", r[0], r[2])
		}
	}
	out := renderPairs(p)
	s := out
	if !strings.Contains(s, "### Cache misses in paired slices") || strings.Contains(s, "### Cache hits in paired slices") ||
		!strings.Contains(s, "| **median** | 5000 | 4800 | 5100 | 100.0 | 100.0 | **1.000** | 104.0 | 100.0 | **1.040** |") {
		t.Errorf("section:\n%s", s)
	}
}

// The median's interval: order statistics by the binomial tails, the
// whole range below 6 samples.
func TestMedianInterval(t *testing.T) {
	ten := []float64{10, 1, 9, 2, 8, 3, 7, 4, 6, 5}
	lo, hi, cover := medianInterval(ten)
	if lo != 2 || hi != 9 || math.Abs(cover-(1-2*11.0/1024)) > 1e-12 {
		t.Errorf("10 samples: %v to %v (%v); want the 2nd and 9th, 2 to 9, 97.9 %%", lo, hi, cover)
	}
	var thirty []float64
	for i := 30; i >= 1; i-- {
		thirty = append(thirty, float64(i))
	}
	if lo, hi, cover = medianInterval(thirty); lo != 10 || hi != 21 || cover < 0.95 || cover > 0.96 {
		t.Errorf("30 samples: %v to %v (%v); want the 10th and 21st, 95.7 %%", lo, hi, cover)
	}
	if lo, hi, cover = medianInterval([]float64{3, 1, math.NaN(), 2}); lo != 1 || hi != 3 || cover != 0.75 {
		t.Errorf("3 known samples: %v to %v (%v); want the range, 75 %%", lo, hi, cover)
	}
	if lo, _, _ = medianInterval(nil); !math.IsNaN(lo) {
		t.Errorf("no samples: %v", lo)
	}
}

// A paired target is met only where its median's whole interval meets it:
// cae8301's run read the cache hit's broker thread +0.7 µs by the median
// of 10 pairs that spread from −16.6 to +13.9, and was reported met.
func TestPairedVerdict(t *testing.T) {
	atMost2 := func(x float64) bool { return x <= 2 }
	if v := pairedVerdict([]float64{-16.6, -3, -1, 0, 0.5, 0.9, 2.5, 4, 6, 13.9}, atMost2); !strings.HasPrefix(v, "**UNDECIDED**") {
		t.Errorf("an interval across the bound: %s", v)
	}
	if v := pairedVerdict([]float64{1, 1.2, 1.5, 0.8, 1.1, 1.9, 1.3, 1.4, 1.0, 9}, atMost2); v != "**PASS**" {
		t.Errorf("an interval within the bound: %s", v)
	}
	if v := pairedVerdict([]float64{3, 4, 5, 4.5, 3.5, 6, 7, 4.2, 3.9, -20}, atMost2); v != "**MISS**" {
		t.Errorf("an interval past the bound: %s", v)
	}
	if v := pairedVerdict([]float64{1, 1.1, 1.2, 0.9}, atMost2); !strings.HasPrefix(v, "**UNDECIDED** (4 pairs") {
		t.Errorf("4 pairs within the bound, too few to tell: %s", v)
	}
	if v := pairedVerdict(nil, atMost2); v != "**MISS** (no pairs)" {
		t.Errorf("no pairs: %s", v)
	}
}
