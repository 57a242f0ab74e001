package main

import (
	"fmt"
	"strings"
	"testing"
)

func pairSlice(label string, round int, rate, thread, proc float64) ConnectResult {
	return ConnectResult{Cmd: "connect", Label: pairPrefix + label, Round: round, Rate: rate, Seconds: 1,
		Cost: map[string]cpuCost{"broker": {ThreadUS: thread, ProcessUS: proc, ThreadErrUS: 0.4}}}
}

// The paired slices are paired by round; a round without all three is left
// out; the cache-hit targets are judged on the pairs' medians, with the
// interleaved rounds' figures beside them.
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
	for target, want := range map[string]string{
		"cache hits, throughput: b / a0 ≥ 0.95":                                      "**PASS**",
		"cache hits, broker-thread CPU per CONNECT: b ≤ a0 + 2 µs":                   "**PASS**",
		"client-ID tracking, whole broker process CPU per CONNECT: b / b-off ≤ 1.05": "**PASS**",
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
