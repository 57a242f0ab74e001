package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// scenario describes one connect label of bench/run.sh.
type scenario struct {
	label, name string
	base        string  // label of the baseline for the ratio ("" none)
	target      float64 // minimum ratio; 0: informative only
}

var scenarios = []scenario{
	{"a0", "mosquitto, allow_anonymous true, no auth: anonymous clients (physical limit)", "", 0},
	{"a", "mosquitto password_file ($7$, mosquitto_passwd), 1 user reconnecting", "a0", 0},
	{"b", "mosquitto-guard, auth_opt_password_file (same file), 1 user reconnecting", "a0", 0.95},
	{"b-off", "(b) with auth_opt_clientid_conflict off: what client-ID tracking costs", "a0", 0},
	{"c", "(b) with {keys} block keys in Redis, {ranges} of them ranges, none matching", "b", 0.95},
	{"a10k", "(a') mosquitto password_file, {users} users, each connecting once", "a0", 0},
	{"b10k", "(b') mosquitto-guard, the same {users}-user file, each connecting once", "a10k", 0.95},
	{"b10k-off", "(b') with auth_opt_clientid_conflict off", "a10k", 0},
	{"flood-a", "(d) wrong-password flood on (a), from 127.2.0.0/16", "a0", 0},
	{"flood-b", "(d) flood of banned clients on (b): guard:block:cidr:127.2.0.0/16", "a0", 0.95},
}

// loadLines reads the JSON lines of a run; lines that are not JSON are skipped.
func loadLines(r io.Reader) ([]map[string]json.RawMessage, [][]byte, error) {
	var maps []map[string]json.RawMessage
	var raws [][]byte
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		b := append([]byte(nil), sc.Bytes()...)
		var m map[string]json.RawMessage
		if json.Unmarshal(b, &m) != nil {
			continue
		}
		maps = append(maps, m)
		raws = append(raws, b)
	}
	return maps, raws, sc.Err()
}

func str(m map[string]json.RawMessage, k string) string {
	var s string
	_ = json.Unmarshal(m[k], &s)
	return s
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func fmtF(f float64, prec int) string {
	if math.IsNaN(f) {
		return "n/a"
	}
	return strconv.FormatFloat(f, 'f', prec, 64)
}

func passMiss(ok bool) string {
	if ok {
		return "**PASS**"
	}
	return "**MISS**"
}

func cmdReport(args []string) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	results := fs.String("results", "", "the run's JSON lines")
	command := fs.String("command", "make bench", "the command, printed")
	runtimeS := fs.Float64("runtime", 0, "total runtime in seconds, printed")
	loadStart := fs.String("loadavg-start", "", "/proc/loadavg at the start, printed")
	setup := fs.String("setup", "", "one line describing the load, printed")
	retried := fs.Int("retried", 0, "measurements repeated because of other load, printed")
	users := fs.Int("users", 10000, "users of a' and b', for the descriptions")
	keys := fs.Int("keys", 100000, "block keys of c, for the descriptions")
	ranges := fs.Int("ranges", 10000, "ranges among them, for the descriptions")
	noiseMax := fs.Float64("noise-max", 25, "the other load (% of a core) above which run.sh repeats a measurement")
	allocFile := fs.String("alloc", "", "the output of go test -bench BasicAuth -benchmem ./cgo, if run")
	if err := fs.Parse(args); err != nil {
		return err
	}
	f, err := os.Open(*results)
	if err != nil {
		return err
	}
	defer f.Close()
	maps, raws, err := loadLines(f)
	if err != nil {
		return err
	}
	var (
		conns   = map[string][]ConnectResult{}
		ban     = map[string]BanResult{}
		waits   = map[string]WaitLogResult{}
		mems    = map[string]ProcMemResult{}
		keyLoad = map[string]LoadKeysResult{}
		fleets  = map[string][]FleetResult{}
	)
	for i, m := range maps {
		switch str(m, "cmd") {
		case "connect":
			var c ConnectResult
			if json.Unmarshal(raws[i], &c) == nil {
				conns[c.Label] = append(conns[c.Label], c)
			}
		case "propagation", "kick":
			var b BanResult
			if json.Unmarshal(raws[i], &b) == nil {
				ban[b.Cmd] = b
			}
		case "waitlog":
			var w WaitLogResult
			if json.Unmarshal(raws[i], &w) == nil {
				waits[w.Label] = w
			}
		case "procmem":
			var p ProcMemResult
			if json.Unmarshal(raws[i], &p) == nil {
				mems[p.Label] = p
			}
		case "fleet":
			var fr FleetResult
			if json.Unmarshal(raws[i], &fr) == nil {
				fleets[fr.Label] = append(fleets[fr.Label], fr)
			}
		case "loadkeys":
			var l LoadKeysResult
			if json.Unmarshal(raws[i], &l) == nil {
				keyLoad[l.Label] = l
			}
		}
	}

	out := &strings.Builder{}
	w := func(format string, a ...any) { fmt.Fprintf(out, format, a...) }
	var targets [][3]string // target, measured, result

	w("## mosquitto-guard benchmark, %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	w("Machine: %s\n\n", machine())
	if *loadStart != "" {
		w("Load average at start: %s; at the end: %s\n\n", *loadStart, loadavg())
	}
	w("Pinning: mosquitto and redis-server on core 0 (`taskset -c 0`), the load generator on core 1 " +
		"(`taskset -c 1`, `GOMAXPROCS=1`), so it does not take the broker's CPU.\n\n")
	if *setup != "" {
		w("%s\n\n", *setup)
	}

	// Connection rates.
	med := map[string]float64{}
	costs := map[string]connCost{}
	for _, s := range scenarios {
		if rs := conns[s.label]; len(rs) > 0 {
			costs[s.label] = medianCost(rs)
		}
	}
	stormOnly := len(conns) == 0 && len(fleets) > 0
	// The paired slices alone (BENCH_ONLY=pairs): their table and the
	// targets they measure, nothing else.
	pairsOnly := len(conns) > 0 && len(fleets) == 0
	for l := range conns {
		pairsOnly = pairsOnly && strings.HasPrefix(l, pairPrefix)
	}
	if !stormOnly && !pairsOnly {
		w("### Connections\n\n")
		w("| id | scenario | connects/s | p50 ms | p99 ms | CPU %%: broker / redis / loadgen / other | saturated | ratio | µs per CONNECT: broker thread / process / redis | broker thread vs base | target | result |\n")
		w("|---|---|---:|---:|---:|---:|---|---:|---:|---|---|---|\n")
	}
	noisy, noisiest := 0, 0.0
	for _, s := range scenarios {
		rs := conns[s.label]
		if len(rs) == 0 {
			continue
		}
		var rate, p50, p99, bcpu, rcpu, lcpu, ocpu []float64
		unexp, attempts := 0, 0
		for _, r := range rs {
			rate = append(rate, r.Rate)
			p50 = append(p50, deref(r.P50))
			p99 = append(p99, deref(r.P99))
			bcpu = append(bcpu, cpuOf(r.CPU, "broker"))
			rcpu = append(rcpu, cpuOf(r.CPU, "redis"))
			lcpu = append(lcpu, cpuOf(r.CPU, "loadgen"))
			ocpu = append(ocpu, cpuOf(r.CPU, "other"))
			if o := cpuOf(r.CPU, "other"); o > *noiseMax {
				noisy++
				noisiest = max(noisiest, o)
			}
			unexp += r.Unexpect
			attempts += r.Attempts
		}
		med[s.label] = median(rate)
		ratio, ratioText, target, result := math.NaN(), "", "", ""
		if s.base != "" && med[s.base] > 0 {
			ratio = med[s.label] / med[s.base]
			ratioText = fmt.Sprintf("%.2f × %s", ratio, display(s.base))
		}
		if s.target > 0 {
			target = fmt.Sprintf("≥ %.2f × %s", s.target, display(s.base))
			result = passMiss(!math.IsNaN(ratio) && ratio >= s.target)
		}
		if attempts == 0 || float64(unexp) > 0.005*float64(attempts) {
			result = fmt.Sprintf("INVALID: %d of %d attempts unexpected", unexp, attempts)
		} else if unexp > 0 {
			result += fmt.Sprintf(" (%d unexpected)", unexp)
		}
		cpu := fmt.Sprintf("%s / %s / %s / %s", fmtF(median(bcpu), 0), dash(fmtF(median(rcpu), 0)), fmtF(median(lcpu), 0), fmtF(median(ocpu), 0))
		name := strings.NewReplacer("{users}", thousands(*users), "{keys}", thousands(*keys), "{ranges}", thousands(*ranges)).Replace(s.name)
		c := costs[s.label]
		w("| %s | %s | %.0f | %s | %s | %s | %s | %s | %s / %s / %s | %s | %s | %s |\n", display(s.label), name, med[s.label],
			fmtF(median(p50), 2), fmtF(median(p99), 2), cpu, saturated(median(bcpu), median(rcpu), median(lcpu)),
			ratioText, fmtF(c.thread, 1), fmtF(c.proc, 1), dash(fmtF(c.redis, 1)), vsBase(c.thread, costs[s.base].thread, s.base), target, result)
		if s.target > 0 {
			targets = append(targets, [3]string{fmt.Sprintf("(%s)/(%s) ≥ %.2f", display(s.label), display(s.base), s.target), fmtF(ratio, 2), result})
		}
	}
	if !stormOnly && !pairsOnly {
		w("\nMedians over the rounds; connects/s counts CONNACKs (accepted or refused) in the measured window; " +
			"latency is from writing CONNECT to reading CONNACK; CPU is %% of one core over the measured window " +
			"(other: whatever else the machine ran meanwhile, steal included); saturated: which of the pinned cores was " +
			"the limit (broker + redis share core 0; ≥ 90 %% counts as saturated).\n\n")
		if *retried > 0 {
			w("%d measurements were repeated (on a fresh broker) because other processes took more than %.0f %% of a core "+
				"meanwhile; the quietest attempt is kept, the others are in results-discarded.jsonl.\n\n", *retried, *noiseMax)
		}
		if noisy > 0 {
			w("**Warning**: other load on the machine during %d of the measurements kept (up to %.0f %% of a core, more than %.0f %%): "+
				"those numbers are lower and noisier than on a quiet machine; rerun when nothing else runs.\n\n", noisy, noisiest, *noiseMax)
		}
		w("Per round, connects/s (rounds interleaved: one round of every scenario, then the next round):\n\n")
		w("| id | rounds | accepted / refused / errors (all rounds) |\n|---|---|---|\n")
		for _, s := range scenarios {
			rs := conns[s.label]
			if len(rs) == 0 {
				continue
			}
			var rates []string
			acc, ref, errs := 0, 0, 0
			for _, r := range rs {
				rates = append(rates, fmt.Sprintf("%.0f", r.Rate))
				acc += r.Accepted
				ref += r.Refused
				errs += r.Errors
			}
			note := ""
			for _, r := range rs {
				if len(r.ErrSample) > 0 {
					note = "; e.g. " + strings.Join(r.ErrSample, "; ")
					break
				}
			}
			w("| %s | %s | %d / %d / %d%s |\n", display(s.label), strings.Join(rates, ", "), acc, ref, errs, note)
		}
		costTable(w, costs)
	}
	pairs := summarizePairs(conns)
	pairsSection(w, pairs)
	mem := memorySection(w, fleets)
	storms := stormSection(w, fleets)
	var allocs []allocBench
	if *allocFile != "" {
		if allocs, err = readAllocBench(*allocFile); err == nil && len(allocs) > 0 {
			allocSection(w, allocs)
		}
	}
	if !stormOnly && !pairsOnly {

		// Ban propagation and kick.
		w("\n### Ban propagation\n\n")
		w("| measurement | trials | done | p50 ms | p99 ms | max ms | target | result |\n|---|---:|---:|---:|---:|---:|---|---|\n")
		for _, b := range []struct {
			cmd, name, target string
			limit             float64
		}{
			{"propagation", "SET guard:block:clientid:<id> → first refused CONNECT of a client reconnecting with that id", "p99 ≤ 100 ms", 100},
			{"kick", "SET guard:block:clientid:<id> → connected client with that id closed by the broker", "p99 ≤ 1 s", 1000},
		} {
			r, ok := ban[b.cmd]
			if !ok {
				w("| %s | | | | | | %s | **MISS** (not run) |\n", b.name, b.target)
				targets = append(targets, [3]string{b.cmd + " " + b.target, "not run", "**MISS**"})
				continue
			}
			result := passMiss(r.Implemented && r.Timeouts == 0 && r.P99 != nil && *r.P99 <= b.limit)
			measured := fmtF(deref(r.P99), 1) + " ms"
			if !r.Implemented {
				result, measured = "**MISS** (not implemented)", "not implemented"
			} else if r.Timeouts > 0 {
				result += fmt.Sprintf(" (%d trials timed out)", r.Timeouts)
			}
			w("| %s | %d | %d | %s | %s | %s | %s | %s |\n", b.name, r.Trials, r.Done,
				fmtF(deref(r.P50), 1), fmtF(deref(r.P99), 1), fmtF(deref(r.Max), 1), b.target, result)
			if r.Note != "" {
				w("|  %s: %s | | | | | | | |\n", b.cmd, r.Note)
			}
			targets = append(targets, [3]string{b.cmd + " " + b.target, measured, result})
		}

		// Memory and load time.
		kl, klOK := keyLoad["keys-mem"]
		w("\n### The plugin with %s block keys\n\n", thousands(kl.Keys))
		empty, e1 := mems["rss-empty"]
		full, e2 := mems["rss-1m"]
		wl := waits["replica-1m"]
		loadTime, loadText := math.NaN(), "n/a (no `mosquitto-guard: replica loaded N keys in D` line within 60 s)"
		if wl.Found && len(wl.Groups) >= 2 {
			if d, err := time.ParseDuration(wl.Groups[1]); err == nil {
				loadTime = d.Seconds()
				loadText = fmt.Sprintf("%s for %s keys (the line was in the log %.1f s after the broker was started)", d.Round(time.Millisecond), wl.Groups[0], wl.Since)
			}
		}
		w("| measurement | value |\n|---|---|\n")
		if klOK {
			w("| keys written (loadgen loadkeys, pipelined) | %s (%s ranges) in %.1f s; DBSIZE %d |\n", thousands(kl.Keys), thousands(kl.Ranges), kl.Seconds, kl.DBSize)
		}
		delta := math.NaN()
		if e1 {
			w("| mosquitto VmRSS, plugin loaded, empty Redis | %.1f MB (VmHWM %.1f MB) |\n", mb(empty.RSSKB), mb(empty.HWMKB))
		}
		if e2 {
			w("| mosquitto VmRSS, plugin loaded, %s keys in Redis, 1 s after the load | %.1f MB (VmHWM %.1f MB) |\n", thousands(kl.Keys), mb(full.RSSKB), mb(full.HWMKB))
		}
		if e1 && e2 {
			delta = mb(full.RSSKB - empty.RSSKB)
			w("| RSS increase | %+.1f MB |\n", delta)
		}
		if later, ok := mems["rss-1m-later"]; ok {
			w("| mosquitto VmRSS, 5 s later | %.1f MB |\n", mb(later.RSSKB))
		}
		w("| load time, as the plugin logs it | %s |\n", loadText)
		memOK := !math.IsNaN(loadTime) && loadTime <= 10 && !math.IsNaN(delta) && delta <= 300
		memResult := passMiss(memOK)
		if math.IsNaN(loadTime) {
			memResult = "**MISS** (n/a: not implemented)"
		}
		w("| target: loaded in ≤ 10 s with ≤ 300 MB more RSS | %s |\n", memResult)
		targets = append(targets, [3]string{thousands(kl.Keys) + " keys loaded ≤ 10 s, RSS ≤ +300 MB",
			fmt.Sprintf("%s, %s MB", fmtSeconds(loadTime), fmtF(delta, 1)), memResult})

	}
	issue12 := issue12Targets(med, costs, pairs, storms, mem, allocs, len(allocs) > 0, stormOnly)
	if pairsOnly {
		issue12 = slices.DeleteFunc(issue12, func(t [3]string) bool { return strings.HasSuffix(t[2], "(not measured)") })
	}

	// Summary.
	pass := 0
	if !stormOnly && !pairsOnly {
		w("\n### Targets\n\n| target | measured | result |\n|---|---|---|\n")
		for _, t := range targets {
			if strings.HasPrefix(t[2], "**PASS**") {
				pass++
			}
			w("| %s | %s | %s |\n", t[0], t[1], t[2])
		}
		w("\n%d of %d targets met.\n\n", pass, len(targets))
	}
	w("\n### Issue 12's targets (this run's numbers)\n\n| target | measured | result |\n|---|---|---|\n")
	pass, counted := 0, 0
	for _, t := range issue12 {
		if strings.HasPrefix(t[2], "**PASS**") {
			pass++
		}
		if t[2] != "–" { // a reference row, not a target
			counted++
		}
		w("| %s | %s | %s |\n", t[0], t[1], t[2])
	}
	w("\n%d of %d met.\n\n", pass, counted)
	w("Command: `%s`\n\n", *command)
	if *runtimeS > 0 {
		w("Total runtime: %s\n", (time.Duration(*runtimeS) * time.Second).String())
	}
	_, err = io.WriteString(os.Stdout, out.String())
	return err
}

func display(label string) string {
	switch label {
	case "a10k":
		return "a'"
	case "b10k":
		return "b'"
	case "b10k-off":
		return "b'-off"
	}
	return label
}

// saturated names the pinned core that limited a measurement.
func saturated(broker, redis, loadgen float64) string {
	core0 := broker
	if !math.IsNaN(redis) {
		core0 += redis
	}
	var s []string
	if core0 >= 90 {
		s = append(s, "core 0 (broker)")
	}
	if loadgen >= 90 {
		s = append(s, "core 1 (loadgen)")
	}
	if len(s) == 0 {
		return "neither"
	}
	return strings.Join(s, ", ")
}

func dash(s string) string {
	if s == "n/a" {
		return "–"
	}
	return s
}

func deref(p *float64) float64 {
	if p == nil {
		return math.NaN()
	}
	return *p
}

func cpuOf(m map[string]float64, k string) float64 {
	if v, ok := m[k]; ok {
		return v
	}
	return math.NaN()
}

// thousands renders 1000000 as "1 000 000".
func thousands(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + " " + s[i:]
	}
	return s
}

func mb(kb int64) float64 { return float64(kb) / 1024 }

func fmtSeconds(s float64) string {
	if math.IsNaN(s) {
		return "n/a"
	}
	return fmt.Sprintf("%.2f s", s)
}

// machine describes the host: CPUs, model, kernel, program versions.
func machine() string {
	cpus, model := 0, "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			k, v, _ := strings.Cut(l, ":")
			k = strings.TrimSpace(k)
			if k == "processor" {
				cpus++
			}
			if k == "model name" && model == "unknown CPU" {
				model = strings.TrimSpace(v)
			}
		}
	}
	kernel := "unknown kernel"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = "Linux " + strings.TrimSpace(string(b))
	}
	return fmt.Sprintf("%d CPUs (nproc), %s, %s; %s; %s; loadgen built with %s",
		cpus, model, kernel, firstLine("mosquitto", "-h"), firstLine("redis-server", "--version"), runtime.Version())
}

func firstLine(name string, args ...string) string {
	b, _ := exec.Command(name, args...).CombinedOutput() // mosquitto -h exits 3
	l, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	if l == "" {
		return name + ": unknown version"
	}
	return l
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
