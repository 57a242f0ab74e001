package main

// The report's cost accounting (CPU per CONNECT of the broker's main
// thread, the broker process and Redis), the reconnect storm, the memory
// per connection, the allocations per CONNECT, and issue 12's targets, each
// met or missed from the numbers of the same run.

import (
	"bufio"
	"fmt"
	"maps"
	"math"
	"os"
	"regexp"
	"strconv"
	"strings"
)

// connCost is the median cost per CONNECT of one scenario's rounds.
type connCost struct {
	thread, threadErr, proc, redis float64 // µs per CONNACK; NaN when not measured
	redisCmds, redisReads          float64 // per CONNACK; NaN without -redis
	src                            cpuSource
}

// costOf returns the medians over rs; the error bound is the largest.
func medianCost(rs []ConnectResult) connCost {
	var th, pr, rd, cmds, reads []float64
	c := connCost{threadErr: math.NaN()}
	for _, r := range rs {
		if b, ok := r.Cost["broker"]; ok {
			th = append(th, b.ThreadUS)
			pr = append(pr, b.ProcessUS)
			if math.IsNaN(c.threadErr) || b.ThreadErrUS > c.threadErr {
				c.threadErr = b.ThreadErrUS
			}
			c.src = b.ThreadSrc
		}
		if x, ok := r.Cost["redis"]; ok {
			rd = append(rd, x.ProcessUS)
		}
		if r.RedisCmds != nil {
			cmds = append(cmds, *r.RedisCmds)
			reads = append(reads, *r.RedisReads)
		}
	}
	c.thread, c.proc, c.redis = median(th), median(pr), median(rd)
	c.redisCmds, c.redisReads = median(cmds), median(reads)
	return c
}

// plus adds b to a, NaN counting as 0 unless both are NaN.
func plus(a, b float64) float64 {
	switch {
	case math.IsNaN(a) && math.IsNaN(b):
		return math.NaN()
	case math.IsNaN(a):
		return b
	case math.IsNaN(b):
		return a
	}
	return a + b
}

// vsBase renders x against its baseline: "1.08 × a0 (+1.2 µs)".
func vsBase(x, base float64, baseLabel string) string {
	if math.IsNaN(x) || math.IsNaN(base) || base <= 0 {
		return ""
	}
	return fmt.Sprintf("%.2f × %s (%+.1f µs)", x/base, display(baseLabel), x-base)
}

// costTable writes the per-CONNECT detail of every scenario.
func costTable(w func(string, ...any), costs map[string]connCost) {
	w("\n### Cost per CONNECT\n\n")
	w("| id | broker main thread µs | broker process µs | redis-server µs | core 0 (broker + redis) µs | thread vs base | process vs base | Redis commands / reads per CONNECT |\n")
	w("|---|---:|---:|---:|---:|---|---|---:|\n")
	src := cpuSource("")
	for _, s := range scenarios {
		c, ok := costs[s.label]
		if !ok {
			continue
		}
		if c.src != "" {
			src = c.src
		}
		b, base := costs[s.base], ""
		if s.base != "" {
			base = s.base
		}
		redisWork := ""
		if !math.IsNaN(c.redisCmds) {
			redisWork = fmt.Sprintf("%.2f / %.2f", c.redisCmds, c.redisReads)
		}
		w("| %s | %s ± %s | %s | %s | %s | %s | %s | %s |\n", display(s.label), fmtF(c.thread, 1), fmtF(c.threadErr, 2),
			fmtF(c.proc, 1), dash(fmtF(c.redis, 1)), fmtF(plus(c.proc, c.redis), 1),
			vsBase(c.thread, b.thread, base), vsBase(c.proc, b.proc, base), redisWork)
	}
	w("\nCPU time used in the measured window divided by the CONNACKs (accepted or refused) in it; medians over the rounds. " +
		"The broker process and redis-server are read from their CPU-time clocks (clock_gettime of the process clock: exact, " +
		"threads that ended included); the broker's main thread (tid = pid: Mosquitto's one event loop, where every callback " +
		"of the plugin runs) from ")
	switch src {
	case srcSchedstat:
		w("/proc/PID/task/PID/schedstat, in ns but updated only at the scheduler's ticks and switches: the ± is the bound "+
			"that leaves (one scheduler tick, 1/CONFIG_HZ = %s, at each end of the window) divided by the window's CONNACKs. ", schedTick())
	case srcStat:
		w("/proc/PID/task/PID/stat utime+stime, in clock ticks of 10 ms: the ± is one tick at each end of the window divided " +
			"by the window's CONNACKs. ")
	default:
		w("the task's schedstat (ns) or stat (ticks). ")
	}
	w("Process minus thread is what the plugin's goroutines (and the Go runtime: GC, scheduler) spent beside the broker " +
		"thread. Redis reads are requests read off a client socket: one per round trip, a pipeline counting once; the " +
		"replica's notifications are pushed, not read. Connections in flight at the window's two ends (at most the " +
		"workers, 32) are counted on one side only: < 0.5 %% of a window's CONNACKs.\n")
}

// stormSummary is the median of one storm label's rounds.
type stormSummary struct {
	rounds                                  int
	held, reconnected, n                    int
	storm, fromDrop, down, p50, p99, maxLat float64
	thread, threadErr, proc, redis          float64
	cmds, reads, attempts, holdRate, rssKB  float64
	d50, d90, d99, overflows, startupMS     float64
	failures                                map[string]int
	incomplete                              []string
}

func summarizeStorm(rs []FleetResult) stormSummary {
	s := stormSummary{rounds: len(rs), failures: map[string]int{}, threadErr: math.NaN()}
	var st, fd, dn, p50, p99, mx, th, pr, rd, cmds, reads, att, hr, rss, d50, d90, d99, ovf, sup []float64
	for _, r := range rs {
		s.n = r.N
		s.held += r.Held
		s.reconnected += r.Reconnected
		st = append(st, r.StormS)
		fd = append(fd, r.FromDropS)
		dn = append(dn, r.DownSeconds)
		p50 = append(p50, deref(r.P50))
		p99 = append(p99, deref(r.P99))
		mx = append(mx, deref(r.Max))
		att = append(att, float64(r.Attempts))
		d50 = append(d50, r.Done50S)
		d90 = append(d90, r.Done90S)
		d99 = append(d99, r.Done99S)
		ovf = append(ovf, float64(r.ListenOverflows))
		if r.StartupMS > 0 {
			sup = append(sup, r.StartupMS)
		}
		hr = append(hr, r.HoldRate)
		if r.RSSHeldKB > 0 {
			rss = append(rss, float64(r.RSSHeldKB))
		}
		if b, ok := r.Cost["broker"]; ok {
			th = append(th, b.ThreadUS)
			pr = append(pr, b.ProcessUS)
			if math.IsNaN(s.threadErr) || b.ThreadErrUS > s.threadErr {
				s.threadErr = b.ThreadErrUS
			}
		}
		if x, ok := r.Cost["redis"]; ok {
			rd = append(rd, x.ProcessUS)
		}
		if r.RedisCmds != nil {
			cmds = append(cmds, *r.RedisCmds)
			reads = append(reads, *r.RedisReads)
		}
		for k, v := range r.Failures {
			s.failures[k] += v
		}
		if r.Incomplete != "" {
			s.incomplete = append(s.incomplete, fmt.Sprintf("round %d: %s", r.Round, r.Incomplete))
		}
	}
	s.storm, s.fromDrop, s.down = median(st), median(fd), median(dn)
	s.p50, s.p99, s.maxLat = median(p50), median(p99), median(mx)
	s.thread, s.proc, s.redis = median(th), median(pr), median(rd)
	s.cmds, s.reads, s.attempts, s.holdRate, s.rssKB = median(cmds), median(reads), median(att), median(hr), median(rss)
	s.d50, s.d90, s.d99, s.overflows, s.startupMS = median(d50), median(d90), median(d99), median(ovf), median(sup)
	return s
}

var stormRows = []struct{ label, name string }{
	{"storm-a", "mosquitto password_file"},
	{"storm-b", "mosquitto-guard, auth_opt_password_file (same file)"},
	{"storm-b-off", "mosquitto-guard, auth_opt_clientid_conflict off"},
	{"storm-b-q100", "mosquitto-guard, auth_opt_listen_backlog 0: Mosquitto's own listen backlog of 100, as storm-a"},
}

// stormSection writes the reconnect storm's table and returns the
// summaries by label.
func stormSection(w func(string, ...any), fleets map[string][]FleetResult) map[string]stormSummary {
	out := map[string]stormSummary{}
	for _, r := range stormRows {
		if rs := fleets[r.label]; len(rs) > 0 {
			out[r.label] = summarizeStorm(rs)
		}
	}
	if len(out) == 0 {
		return out
	}
	var n, rounds int
	backoffText := ""
	for _, r := range stormRows {
		if rs := fleets[r.label]; len(rs) > 0 {
			n, rounds, backoffText = rs[0].N, len(rs), rs[0].Backoff
		}
	}
	w("\n### Reconnect storm: %s devices reconnecting at once after a broker restart\n\n", thousands(n))
	w("| id | broker | devices reconnected | all connected, s after the restarted broker accepted | 50 / 90 / 99 %% connected, s | from the first drop, s | broker down, s | CONNACK p50 / p99 / max ms | attempts | SYNs dropped (listen overflows) | µs per reconnect: broker thread / process / redis | core 0 µs per reconnect | Redis commands / reads per reconnect | hold phase connects/s | RSS holding them, MB | a start's CPU, ms |\n")
	w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range stormRows {
		s, ok := out[r.label]
		if !ok {
			continue
		}
		redisWork := ""
		if !math.IsNaN(s.cmds) {
			redisWork = fmt.Sprintf("%.2f / %.2f", s.cmds, s.reads)
		}
		w("| %s | %s | %d of %d | %s | %s / %s / %s | %s | %s | %s / %s / %s | %.0f | %.0f | %s ± %s / %s / %s | %s | %s | %.0f | %s | %s |\n",
			r.label, r.name, s.reconnected, s.held, fmtF(s.storm, 2), fmtF(s.d50, 2), fmtF(s.d90, 2), fmtF(s.d99, 2),
			fmtF(s.fromDrop, 2), fmtF(s.down, 2), fmtF(s.p50, 0), fmtF(s.p99, 0), fmtF(s.maxLat, 0), s.attempts, s.overflows,
			fmtF(s.thread, 1), fmtF(s.threadErr, 2), fmtF(s.proc, 1), dash(fmtF(s.redis, 1)), fmtF(plus(s.proc, s.redis), 1), redisWork,
			s.holdRate, fmtF(s.rssKB/1024, 1), fmtF(s.startupMS, 0))
	}
	w("\nMedians over %d rounds (interleaved: password_file, guard, guard without tracking, guard with Mosquitto's listen backlog, then again); a fresh broker and an emptied Redis for each. "+
		"Each device has its own user (the same `$7$` file for both brokers) and client ID, and connects from its own source address "+
		"(127.5.0.0/16, in turn); keep-alive 0. All are held connected, then the broker is stopped by PID (SIGTERM) and started again "+
		"on the same port with the same configuration. Every device notices its connection drop and reconnects, %s; an attempt is bounded "+
		"by 10 s (dial, CONNECT, CONNACK). \"All connected\" runs from the restarted broker's first accepted connection (the "+
		"earliest device's connect that got a CONNACK) to the last device's CONNACK; \"from the first drop\" adds the restart. "+
		"Mosquitto listens with a backlog of 100 (the guard gives its listeners listen_backlog, 4096 by default; storm-b-q100 keeps "+
		"Mosquitto's): when devices arrive faster than the broker accepts them and the backlog is full, the kernel drops their "+
		"SYNs (listen overflows, counted for the whole network namespace) and they retry after TCP's 1 s, then 3 s: the time "+
		"until all are connected moves in such steps, and the CPU per reconnect is the steadier measure of what the broker can "+
		"take. The latency is from writing CONNECT to reading CONNACK, of each device's successful attempt. CPU per reconnect, "+
		"failed attempts included: the restarted broker is a new process, so all it used by the last CONNACK, less what a "+
		"start costs (the first broker's CPU before any device connected, the last column); Redis from the first drop.\n", rounds, backoffText)
	for _, r := range stormRows {
		s, ok := out[r.label]
		if !ok {
			continue
		}
		if len(s.failures) > 0 {
			var parts []string
			for _, k := range []string{"refused", "timeout", "closed", "connack", "other"} {
				if v := s.failures[k]; v > 0 {
					parts = append(parts, fmt.Sprintf("%s %d", k, v))
				}
			}
			w("\n%s: failed attempts over the rounds: %s.", r.label, strings.Join(parts, ", "))
		}
		for _, inc := range s.incomplete {
			w("\n**%s incomplete**, %s.", r.label, inc)
		}
	}
	w("\n")
	return out
}

// The cache-miss path's allocation bound, as BenchmarkBasicAuth/miss counts
// (the guard's goroutines allocating meanwhile included).
const (
	missAllocsMax = 80
	missBytesMax  = 10 << 10
)

// memSummary is the memory-per-connection row.
type memSummary struct {
	ok                     bool
	n                      int
	idleA, heldA           float64 // KB, without the plugin
	idleB, heldB           float64 // KB, with it
	perConnA, perConnB     float64 // KB per live connection
	share, idleCost        float64 // the plugin's: KB per connection, MB idle
	idleAnonCost           float64 // MB of idleCost that is anonymous memory (the rest: pages mapped from files)
	heldCountA, heldCountB int
	peakShare              float64 // the plugin's share of VmHWM over idle per connection: the burst's peak
	// The guard with MOSQUITTO_GUARD_NO_RELEASE=1 (mem-b-norelease): its
	// share and peak share; okNoRelease when measured.
	okNoRelease                   bool
	shareNoRelease, peakNoRelease float64
}

// memKB is one broker's memory figures, KB (per connection: KB a connection).
type memKB struct {
	idle, held, peak, perConn, peakPerConn float64
}

func memOf(r FleetResult) (memKB, bool) {
	if r.Held <= 0 || r.RSSIdleKB <= 0 {
		return memKB{}, false
	}
	m := memKB{idle: float64(r.RSSIdleKB), held: float64(r.RSSHeldKB), peak: float64(r.HWMKB)}
	m.perConn = (m.held - m.idle) / float64(r.Held)
	m.peakPerConn = (m.peak - m.idle) / float64(r.Held)
	return m, true
}

func memorySection(w func(string, ...any), fleets map[string][]FleetResult) memSummary {
	a, b := fleets["mem-a"], fleets["mem-b"]
	if len(a) == 0 || len(b) == 0 {
		return memSummary{}
	}
	ra, rb := a[len(a)-1], b[len(b)-1]
	ma, okA := memOf(ra)
	mb, okB := memOf(rb)
	m := memSummary{ok: okA && okB, n: ra.N,
		idleA: ma.idle, heldA: ma.held, idleB: mb.idle, heldB: mb.held,
		heldCountA: ra.Held, heldCountB: rb.Held}
	if !m.ok {
		return m
	}
	m.perConnA, m.perConnB = ma.perConn, mb.perConn
	m.share = m.perConnB - m.perConnA
	m.peakShare = mb.peakPerConn - ma.peakPerConn
	m.idleCost = (m.idleB - m.idleA) / 1024
	m.idleAnonCost = float64(rb.RSSIdleAnonKB-ra.RSSIdleAnonKB) / 1024
	var rn FleetResult
	var mn memKB
	if n := fleets["mem-b-norelease"]; len(n) > 0 {
		rn = n[len(n)-1]
		mn, m.okNoRelease = memOf(rn)
		m.shareNoRelease, m.peakNoRelease = mn.perConn-ma.perConn, mn.peakPerConn-ma.peakPerConn
	}
	split := func(r FleetResult) string {
		if r.RSSIdleAnonKB == 0 {
			return "–"
		}
		return fmt.Sprintf("%.1f / %.1f", float64(r.RSSIdleAnonKB)/1024, float64(r.RSSIdleFileKB)/1024)
	}
	row := func(name string, r FleetResult, k memKB) {
		w("| %s | %.1f | %s | %.1f | %.2f | %.2f | %d |\n", name, k.idle/1024, split(r), k.held/1024, k.perConn, k.peakPerConn, r.Held)
	}
	w("\n### Memory per connection: %s live idle connections\n\n", thousands(m.n))
	w("| broker | VmRSS idle, MB | of which anonymous / mapped from files, MB | VmRSS holding them, MB | KB per live connection | peak (VmHWM) KB per connection | held |\n|---|---:|---:|---:|---:|---:|---:|\n")
	row("mosquitto password_file (no plugin)", ra, ma)
	row("mosquitto-guard, auth_opt_password_file (same file)", rb, mb)
	if m.okNoRelease {
		row("the same guard, MOSQUITTO_GUARD_NO_RELEASE=1 (heap not given back after the burst)", rn, mn)
	}
	w("| the plugin's share (with minus without) | %+.1f (idle cost) | %+.1f / %+.1f | | %+.2f | %+.2f | |\n", m.idleCost, m.idleAnonCost, m.idleCost-m.idleAnonCost, m.share, m.peakShare)
	if m.okNoRelease {
		w("| its share without the release | | | | %+.2f | %+.2f | |\n", m.shareNoRelease, m.peakNoRelease)
	}
	w("\nVmRSS of a fresh broker 2 s after its start (the guard: after `replica loaded`), then 2 s after the last of the "+
		"devices connected (each its own user, the same file, and client ID; keep-alive 0; sources in turn from 127.6.0.0/16); "+
		"the guard with its default options and an emptied Redis. Both brokers load the same %s-user password file. "+
		"The peak is VmHWM, the most the broker's RSS was while the devices connected (the start's own peak among it), "+
		"over the idle RSS. The guard gives the Go heap's free pages back once a burst is over (cgo/heaprelease.go: at most "+
		"a second after the last CONNECT here); the row with MOSQUITTO_GUARD_NO_RELEASE=1 is the same guard without that. "+
		"Anonymous memory is the heaps and stacks (the plugin's Go heap among them, and its copy of the password file); "+
		"mapped from files is the code and read-only data of the binaries and libraries, from the page cache "+
		"(the plugin's .so among them): shared, and dropped and read again by the kernel as it needs.\n", thousands(ra.Users))
	return m
}

// allocBench is one line of go test -bench BasicAuth -benchmem.
type allocBench struct {
	name                                       string
	nsOp, bOp, allocsOp, cycleB, cycleA, cmdOp float64
	liveB                                      float64 // held: Go heap kept per live connection
}

var benchLine = regexp.MustCompile(`^BenchmarkBasicAuth/(\S+?)(-\d+)?\s+\d+\s+(.*)$`)

// readAllocBench parses the benchmark's output; metrics by unit.
func readAllocBench(path string) ([]allocBench, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []allocBench
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		nan := math.NaN()
		ab := allocBench{name: m[1], nsOp: nan, bOp: nan, allocsOp: nan, cycleB: nan, cycleA: nan, cmdOp: nan, liveB: nan}
		f := strings.Fields(m[3])
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "ns/op":
				ab.nsOp = v
			case "B/op":
				ab.bOp = v
			case "allocs/op":
				ab.allocsOp = v
			case "cycle-B/op":
				ab.cycleB = v
			case "cycle-allocs/op":
				ab.cycleA = v
			case "redis-cmds/op":
				ab.cmdOp = v
			case "live-B/conn":
				ab.liveB = v
			}
		}
		out = append(out, ab)
	}
	return out, sc.Err()
}

func allocSection(w func(string, ...any), benches []allocBench) {
	w("\n### Allocations per CONNECT, from the cgo boundary\n\n")
	w("| case | ns/op | B/op | allocs/op | whole cycle B/op | whole cycle allocs/op | Redis commands/op | Go heap kept per live connection, B |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, b := range benches {
		w("| %s | %s | %s | %s | %s | %s | %s | %s |\n", b.name, fmtF(b.nsOp, 0), dash(fmtF(b.bOp, 0)), dash(fmtF(b.allocsOp, 1)),
			dash(fmtF(b.cycleB, 0)), dash(fmtF(b.cycleA, 1)), dash(fmtF(b.cmdOp, 2)), dash(fmtF(b.liveB, 0)))
	}
	w("\n`go test -run XXX -bench BasicAuth -benchmem -benchtime 2000x ./cgo` (cgo/alloc_bench_test.go): guardBasicAuth called as " +
		"plugin.c calls it, on a guard from plugin.New against a real redis-server, replica loaded. hit: one user reconnecting, " +
		"its verification cached; miss: a new user (`$7$`, PBKDF2-SHA512 101 iterations) and a new client ID each time. " +
		"B/op and allocs/op: the BASIC_AUTH calls (the guard's goroutines allocating meanwhile included); whole cycle: also the " +
		"DISCONNECTs and the background work they caused, once settled. held: miss, the clients kept connected; the Go heap " +
		"they keep alive after a collection, per connection (the RSS takes about twice that and more: GOGC 100 lets the heap " +
		"grow to twice the live heap). `make bench-alloc` lists the top allocation sites.\n")
}

// issue12Targets sets the run's numbers against issue 12's targets.
func issue12Targets(med map[string]float64, costs map[string]connCost, pairs pairSummary, storms map[string]stormSummary, mem memSummary,
	allocs []allocBench, haveAlloc bool, stormOnly bool) [][3]string {
	nan := math.NaN()
	costs = maps.Clone(costs)
	for _, l := range []string{"a0", "b", "b-off", "a10k", "b10k", "b10k-off"} {
		if _, ok := costs[l]; !ok {
			costs[l] = connCost{thread: nan, threadErr: nan, proc: nan, redis: nan, redisCmds: nan, redisReads: nan}
		}
	}
	var t [][3]string
	add := func(target, measured string, ok, measuredAtAll bool) {
		r := passMiss(ok)
		if !measuredAtAll {
			r, measured = "**MISS** (not measured)", "n/a"
		}
		t = append(t, [3]string{target, measured, r})
	}
	// judged adds a target judged on paired slices (pairedVerdict).
	judged := func(target, measured string, per []float64, meets func(float64) bool) {
		t = append(t, [3]string{target, measured, pairedVerdict(per, meets)})
	}
	atMost := func(b float64) func(float64) bool { return func(x float64) bool { return x <= b } }
	// addPaired adds a "≤ 1.05" ratio target judged on paired slices' median
	// med (per pair: per) when paired, else on the rounds' ratio r (rText).
	addPaired := func(target string, paired bool, med float64, per []float64, r float64, rText string) {
		if paired {
			judged(target, pairedMeasured(med, per, 3, false, rText), per, atMost(1.05))
			return
		}
		add(target, rText, r <= 1.05, !math.IsNaN(r))
	}
	ratio := func(a, b float64) float64 {
		if math.IsNaN(a) || math.IsNaN(b) || b <= 0 {
			return math.NaN()
		}
		return a / b
	}
	if !stormOnly {
		// The cache-miss ratios: on the paired slices when there are any,
		// the interleaved rounds beside them.
		r := ratio(costs["b10k"].thread, costs["a10k"].thread)
		rText := fmt.Sprintf("%s (%s vs %s µs)", fmtF(r, 3), fmtF(costs["b10k"].thread, 1), fmtF(costs["a10k"].thread, 1))
		addPaired("broker-thread CPU per CONNECT, cache misses: b' / a' ≤ 1.05", pairs.miss.ok(), pairs.miss.threadMed, pairs.miss.thread, r, rText)
	}
	// The memory row alone (BENCH_ONLY=memory): no storm to report.
	memOnly := stormOnly && len(storms) == 0
	sa, sb, sbo := storms["storm-a"], storms["storm-b"], storms["storm-b-off"]
	r := ratio(sb.storm, sa.storm)
	if !memOnly {
		add("reconnect storm, time until all connected: guard (tracking on) / password_file ≤ 1.05",
			fmt.Sprintf("%s (%s vs %s s)", fmtF(r, 3), fmtF(sb.storm, 2), fmtF(sa.storm, 2)), r <= 1.05, !math.IsNaN(r))
	}
	if !stormOnly {
		// The cache-hit targets: on the paired slices when there are any
		// (report_pairs.go says why), the interleaved rounds beside them.
		tr := ratio(med["b"], med["a0"])
		d := costs["b"].thread - costs["a0"].thread
		dText := fmt.Sprintf("%+.2f µs (%s vs %s µs, ± %s)", d, fmtF(costs["b"].thread, 2), fmtF(costs["a0"].thread, 2), fmtF(costs["b"].threadErr+costs["a0"].threadErr, 2))
		if math.IsNaN(d) {
			dText = "n/a"
		}
		tk := ratio(costs["b"].proc, costs["b-off"].proc)
		tkText := fmt.Sprintf("%s (%s vs %s µs)", fmtF(tk, 3), fmtF(costs["b"].proc, 1), fmtF(costs["b-off"].proc, 1))
		if pairs.ok() {
			judged("cache hits, throughput: b / a0 ≥ 0.95", pairedMeasured(pairs.tputMed, pairs.tput, 3, false, fmtF(tr, 3)), pairs.tput, func(x float64) bool { return x >= 0.95 })
			judged("cache hits, broker-thread CPU per CONNECT: b ≤ a0 + 2 µs", pairedMeasured(pairs.threadMed, pairs.thread, 1, true, dText), pairs.thread, atMost(2))
			judged("client-ID tracking, whole broker process CPU per CONNECT: b / b-off ≤ 1.05", pairedMeasured(pairs.trackMed, pairs.track, 3, false, tkText), pairs.track, atMost(1.05))
		} else {
			add("cache hits, throughput: b / a0 ≥ 0.95", fmtF(tr, 3), tr >= 0.95, !math.IsNaN(tr))
			add("cache hits, broker-thread CPU per CONNECT: b ≤ a0 + 2 µs", dText, d <= 2, !math.IsNaN(d))
			add("client-ID tracking, whole broker process CPU per CONNECT: b / b-off ≤ 1.05", tkText, tk <= 1.05, !math.IsNaN(tk))
		}
		r := ratio(costs["b10k"].proc, costs["b10k-off"].proc)
		rText := fmt.Sprintf("%s (%s vs %s µs)", fmtF(r, 3), fmtF(costs["b10k"].proc, 1), fmtF(costs["b10k-off"].proc, 1))
		addPaired("client-ID tracking, whole broker process CPU per CONNECT: b' / b'-off ≤ 1.05", pairs.miss.ok(), pairs.miss.trackMed, pairs.miss.track, r, rText)
		// Redis round trips that tracking adds per new client ID (b': every
		// CONNECT is one): batched means well under one.
		rt := costs["b10k"].redisReads - costs["b10k-off"].redisReads
		add("client-ID tracking, Redis round trips per new client ID (b' − b'-off reads per CONNECT) < 1: pipelined in batches",
			fmt.Sprintf("%s (%s commands)", fmtF(rt, 3), fmtF(costs["b10k"].redisCmds-costs["b10k-off"].redisCmds, 2)), rt < 1, !math.IsNaN(rt))
	}
	if sq, ok := storms["storm-b-q100"]; ok {
		// Not a target: what listen_backlog does, the guard's CPU apart.
		r := ratio(sq.storm, sa.storm)
		t = append(t, [3]string{"(for reference, not a target) the same with the guard's listen_backlog 0, Mosquitto's own 100: storm-b-q100 / password_file",
			fmt.Sprintf("%s (%s vs %s s; SYNs dropped %.0f vs %.0f)", fmtF(r, 3), fmtF(sq.storm, 2), fmtF(sa.storm, 2), sq.overflows, sa.overflows), "–"})
	}
	if !memOnly {
		r = ratio(sb.proc, sbo.proc)
		add("client-ID tracking in the storm, whole broker process CPU per reconnect: on / off ≤ 1.05",
			fmt.Sprintf("%s (%s vs %s µs)", fmtF(r, 3), fmtF(sb.proc, 1), fmtF(sbo.proc, 1)), r <= 1.05, !math.IsNaN(r))
	}
	if !stormOnly || mem.ok {
		add("memory: the plugin's share ≤ 0.5 KB per live connection", fmt.Sprintf("%+.2f KB (peak %+.2f KB)", mem.share, mem.peakShare), mem.share <= 0.5, mem.ok)
		if mem.okNoRelease {
			t = append(t, [3]string{"(for reference, not a target) the same without the heap's release after the burst (MOSQUITTO_GUARD_NO_RELEASE=1)",
				fmt.Sprintf("%+.2f KB (peak %+.2f KB)", mem.shareNoRelease, mem.peakNoRelease), "–"})
		}
		add("memory: the plugin's idle cost ≤ 12 MB", fmt.Sprintf("%+.1f MB (%+.1f MB anonymous, %+.1f MB mapped from files)", mem.idleCost, mem.idleAnonCost, mem.idleCost-mem.idleAnonCost), mem.idleCost <= 12, mem.ok)
	}
	if !stormOnly {
		var hit, fleet, miss *allocBench
		for i := range allocs {
			switch allocs[i].name {
			case "hit/clientid_conflict=flag":
				hit = &allocs[i]
			case "fleethit/clientid_conflict=flag":
				fleet = &allocs[i]
			case "miss/clientid_conflict=flag":
				miss = &allocs[i]
			}
		}
		add("the cache-hit path allocates nothing on the Go heap (allocs/op, tracking on)",
			func() string {
				if hit == nil {
					return ""
				}
				v := fmt.Sprintf("%.1f allocs, %.0f B per CONNECT", hit.allocsOp, hit.bOp)
				if fleet != nil {
					// More devices than cgo's interned strings: each hit
					// makes its client ID, username and address strings
					// (the live record keeps the first two).
					v += fmt.Sprintf("; a fleet of 4 096 devices: %.1f allocs, %.0f B (its strings)", fleet.allocsOp, fleet.bOp)
				}
				return v
			}(), hit != nil && hit.allocsOp == 0, haveAlloc && hit != nil)
		if miss != nil {
			ok := miss.allocsOp <= missAllocsMax && miss.bOp <= missBytesMax
			result := "**MISS**"
			if ok {
				result = "**PASS**"
			}
			t = append(t, [3]string{fmt.Sprintf("the cache-miss path allocates a bounded, stated amount (tracking on): ≤ %d allocs, ≤ %d KiB per CONNECT, the guard's goroutines meanwhile included (the broker thread alone: ≤ 32, 4 KiB, cgo's TestBasicAuthMissAllocs)", missAllocsMax, missBytesMax>>10),
				fmt.Sprintf("%.1f allocs, %.0f B per CONNECT (%.1f, %.0f B with its DISCONNECT and background work)", miss.allocsOp, miss.bOp, miss.cycleA, miss.cycleB),
				result})
		}
	}
	return t
}
