package main

import (
	"bufio"
	"fmt"
	"math"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// percentile returns the nearest-rank q-quantile (0 < q <= 1) of sorted, in
// milliseconds; NaN for no samples.
func percentile(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	i = max(0, min(i, len(sorted)-1))
	return ms(sorted[i])
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// latencyStats sorts lat and returns p50 and p99 in ms, or nil pointers when
// there are no samples (JSON has no NaN).
func latencyStats(lat []time.Duration) (p50, p99, pmax *float64) {
	if len(lat) == 0 {
		return nil, nil, nil
	}
	slices.Sort(lat)
	a, b, c := percentile(lat, 0.50), percentile(lat, 0.99), ms(lat[len(lat)-1])
	return &a, &b, &c
}

// clockTick is Linux's USER_HZ, the unit of /proc/PID/stat times: 100 on
// every architecture Linux builds for today.
const clockTick = 100

// selfCPU returns the CPU time this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuMeter samples the CPU time of named processes (and of their main
// threads), and of this one, over a measured window.
type cpuMeter struct {
	names      []string
	pids       []int
	start, fin []cpuReading
	ok         []bool // read at both ends
	self       time.Duration
	busy       time.Duration // all cores, from /proc/stat
	t0         time.Time
	wall       time.Duration

	redisAddr          string // when set: INFO stats counters at both ends
	redis0, redis1     redisCounters
	redisOK0, redisOK1 bool
}

// machineBusy returns the CPU time all cores have spent not idle (steal
// included: a hypervisor's other guests take it from us).
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var busy int64
	for i, v := range f[1:9] {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return time.Duration(busy) * time.Second / clockTick
}

// parsePids parses "broker=123,redis=456".
func parsePids(s string) (*cpuMeter, error) {
	m := &cpuMeter{}
	if s == "" {
		return m, nil
	}
	for _, kv := range strings.Split(s, ",") {
		name, v, ok := strings.Cut(kv, "=")
		pid, err := strconv.Atoi(v)
		if !ok || err != nil || pid <= 0 {
			return nil, fmt.Errorf("bad -pids entry %q: want name=pid", kv)
		}
		m.names = append(m.names, name)
		m.pids = append(m.pids, pid)
	}
	return m, nil
}

func (m *cpuMeter) begin() {
	m.t0 = time.Now()
	m.self = selfCPU()
	m.busy = machineBusy()
	m.start = make([]cpuReading, len(m.pids))
	m.fin = make([]cpuReading, len(m.pids))
	m.ok = make([]bool, len(m.pids))
	for i, pid := range m.pids {
		r, err := readCPU(pid)
		m.start[i], m.ok[i] = r, err == nil
	}
	if m.redisAddr != "" {
		var err error
		m.redis0, err = readRedisCounters(m.redisAddr)
		m.redisOK0 = err == nil
	}
}

// end returns the percentage of one core each process used since begin;
// "loadgen" is this process, "other" everything else the machine's cores
// did (other processes, kernel threads, steal). A process that could not be
// read at both ends is left out.
func (m *cpuMeter) end() map[string]float64 {
	m.wall = time.Since(m.t0)
	for i, pid := range m.pids {
		r, err := readCPU(pid)
		m.fin[i] = r
		m.ok[i] = m.ok[i] && err == nil
	}
	if m.redisAddr != "" {
		var err error
		m.redis1, err = readRedisCounters(m.redisAddr)
		m.redisOK1 = err == nil
	}
	out := map[string]float64{}
	if m.wall <= 0 {
		return out
	}
	pct := func(d time.Duration) float64 { return math.Round(1000*float64(d)/float64(m.wall)) / 10 }
	ours := selfCPU() - m.self
	out["loadgen"] = pct(ours)
	for i := range m.pids {
		if m.ok[i] {
			d := m.fin[i].proc - m.start[i].proc
			out[m.names[i]] = pct(d)
			ours += d
		}
	}
	if m.busy > 0 {
		out["other"] = pct(max(0, machineBusy()-m.busy-ours))
	}
	return out
}

// costs returns, after end, what each named process used per CONNACK (n
// of them in the window).
func (m *cpuMeter) costs(n int) map[string]cpuCost {
	out := map[string]cpuCost{}
	for i, name := range m.names {
		if m.ok[i] {
			out[name] = costOf(m.start[i], m.fin[i], n)
		}
	}
	return out
}

// redisPerConnect returns, after end, the Redis commands and reads (client
// requests read off a socket: round trips, a pipeline counting once) per
// CONNACK; ok is false without both readings. The INFO of begin, counted
// by the second, is taken off.
func (m *cpuMeter) redisPerConnect(n int) (cmds, reads float64, ok bool) {
	if !m.redisOK0 || !m.redisOK1 || n <= 0 {
		return 0, 0, false
	}
	d := func(a, b int64) float64 { return round3(float64(max(0, b-a-1)) / float64(n)) }
	return d(m.redis0.Commands, m.redis1.Commands), d(m.redis0.Reads, m.redis1.Reads), true
}

// procStatus returns the given fields of /proc/PID/status, in kB.
func procStatus(pid int, fields ...string) (map[string]int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || !slices.Contains(fields, k) {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err == nil {
			out[k] = n
		}
	}
	return out, sc.Err()
}

func cmdFreePort(args []string) error {
	if len(args) != 0 {
		return fmt.Errorf("no arguments expected")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer l.Close()
	_, err = fmt.Println(l.Addr().(*net.TCPAddr).Port)
	return err
}
