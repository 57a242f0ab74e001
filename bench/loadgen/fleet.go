package main

// loadgen fleet: N devices, each with its own user and client ID, connected
// and held (keep-alive 0, so the broker never times them out).
//
//	-mode hold   the broker's VmRSS idle, then holding the N connections
//	             (bench/run.sh's memory row); then every device disconnects.
//	-mode storm  once all N are held, -ready-file is written; bench/run.sh
//	             stops the broker by PID and starts it again on the same port,
//	             writing the new broker's PID to -pid-file first. Every device
//	             sees its connection drop and reconnects at once, retrying
//	             with a small bounded backoff (see backoff); the result is the
//	             time until all are connected again, the CONNACK latency of
//	             their reconnects, and the CPU the new broker (its main thread,
//	             the whole process) and Redis spent per reconnect.

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// FleetResult is the JSON line of `loadgen fleet`.
type FleetResult struct {
	Cmd   string `json:"cmd"`
	Label string `json:"label"`
	Round int    `json:"round"`
	Mode  string `json:"mode"`
	N     int    `json:"n"`
	Users int    `json:"users"` // users in -users (the broker's password file)

	// The hold phase: N devices connecting, Workers at a time, and staying.
	Held        int     `json:"held"`
	Workers     int     `json:"workers"`
	HoldSeconds float64 `json:"hold_s"`
	HoldRate    float64 `json:"hold_connects_per_s"`
	RSSIdleKB   int64   `json:"rss_idle_kb,omitempty"` // the broker, before the first device (after -settle)
	RSSHeldKB   int64   `json:"rss_held_kb,omitempty"` // holding the devices (after -settle)
	// Idle VmRSS split (/proc/PID/status): anonymous memory (heaps, stacks)
	// and pages mapped from files (the binaries and libraries' code and
	// read-only data: page cache, shared, which the kernel can drop and
	// read again).
	RSSIdleAnonKB int64 `json:"rss_idle_anon_kb,omitempty"`
	RSSIdleFileKB int64 `json:"rss_idle_file_kb,omitempty"`
	HWMKB         int64 `json:"vmhwm_kb,omitempty"`
	// The same split holding the devices.
	RSSHeldAnonKB int64 `json:"rss_held_anon_kb,omitempty"`
	RSSHeldFileKB int64 `json:"rss_held_file_kb,omitempty"`
	// The broker's CPU per device held, from before the first device to
	// the RSS sample (-settle after the last): the whole process (its Go
	// collector and a plugin's goroutines among its threads) and its main
	// thread, in µs.
	HoldCPUUs     float64 `json:"hold_cpu_us,omitempty"`
	HoldMainCPUUs float64 `json:"hold_main_cpu_us,omitempty"`

	// The storm.
	Backoff     string  `json:"backoff,omitempty"`
	Reconnected int     `json:"reconnected"`
	StartupMS   float64 `json:"startup_ms,omitempty"` // CPU of the broker's start, taken off its CPU in the storm
	DownSeconds float64 `json:"down_s"`               // first drop → the restarted broker accepting TCP
	StormS      float64 `json:"storm_s"`              // the restarted broker accepting → the last device's CONNACK
	FromDropS   float64 `json:"from_drop_s"`          // first drop → the last device's CONNACK
	// Seconds from the restarted broker up to half, 90 % and 99 % of the
	// devices connected.
	Done50S float64 `json:"done50_s"`
	Done90S float64 `json:"done90_s"`
	Done99S float64 `json:"done99_s"`
	// ListenOverflows: the kernel's TcpExtListenOverflows over the storm
	// (SYNs dropped on a full accept queue; the client retries after 1 s,
	// then 3 s...). Counted for the network namespace: other programs' too.
	ListenOverflows int64    `json:"listen_overflows"`
	P50             *float64 `json:"p50_ms,omitempty"`
	P99             *float64 `json:"p99_ms,omitempty"`
	Max             *float64 `json:"max_ms,omitempty"`
	Attempts        int      `json:"attempts"` // reconnect attempts, all devices (≥ Reconnected)
	// Failed attempts by kind: refused (TCP), timeout, closed (no CONNACK),
	// connack (a CONNACK refusing), other.
	Failures map[string]int     `json:"failures,omitempty"`
	CPU      map[string]float64 `json:"cpu_pct,omitempty"`
	// Cost per device reconnected, failed attempts included: the restarted
	// broker from its exec, less a start's cost (StartupMS); Redis from the
	// first drop.
	Cost       map[string]cpuCost `json:"cpu_per_connect,omitempty"`
	RedisCmds  *float64           `json:"redis_cmds_per_connect,omitempty"`
	RedisReads *float64           `json:"redis_reads_per_connect,omitempty"`

	ErrSample  []string `json:"error_sample,omitempty"`
	Incomplete string   `json:"incomplete,omitempty"`
}

// backoff is a device's reconnect policy, as small embedded clients do it:
// before attempt k (0 first, right after the drop) it waits a uniformly
// random share, between half and all, of min(min·2^k, max).
type backoff struct{ min, max time.Duration }

func (b backoff) wait(k int, r *rand.Rand) time.Duration {
	d := b.max
	if k < 30 && b.min<<k < b.max {
		d = b.min << k
	}
	return d/2 + time.Duration(r.Int64N(int64(d/2)+1))
}

func (b backoff) String() string {
	return fmt.Sprintf("before reconnect attempt k (k = 0 right after the drop): uniform random in [½, 1] × min(%s × 2^k, %s)", b.min, b.max)
}

// device is one member of the fleet.
type device struct {
	idx  int
	pkt  []byte
	src  *net.TCPAddr
	mu   sync.Mutex
	conn net.Conn
}

func (d *device) set(c net.Conn) {
	d.mu.Lock()
	d.conn = c
	d.mu.Unlock()
}

// close ends the device's connection with DISCONNECT.
func (d *device) close() {
	d.mu.Lock()
	c := d.conn
	d.conn = nil
	d.mu.Unlock()
	if c != nil {
		_ = c.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = c.Write(disconnectPacket)
		c.Close()
	}
}

// dialHeld connects from src, sends pkt and reads the CONNACK; an accepted
// connection is returned open. lat runs from writing CONNECT to having read
// the CONNACK. kind classifies a failure (see FleetResult.Failures).
func dialHeld(src, dst *net.TCPAddr, pkt []byte, timeout time.Duration) (c *net.TCPConn, lat time.Duration, kind string, err error) {
	d := net.Dialer{LocalAddr: src, Timeout: timeout}
	nc, err := d.Dial("tcp", dst.String())
	if err != nil {
		return nil, 0, failKind(err), err
	}
	c = nc.(*net.TCPConn)
	_ = c.SetDeadline(time.Now().Add(timeout))
	t0 := time.Now()
	if _, err := c.Write(pkt); err != nil {
		c.Close()
		return nil, 0, failKind(err), err
	}
	var ack [4]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		c.Close()
		return nil, 0, failKind(err), err
	}
	lat = time.Since(t0)
	if ack[0] != 0x20 || ack[1] != 2 || ack[3] != 0 {
		c.Close()
		return nil, lat, "connack", fmt.Errorf("connack % x", ack)
	}
	_ = c.SetDeadline(time.Time{})
	return c, lat, "", nil
}

func failKind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "closed"
	}
	return "other"
}

// failures counts failed attempts by kind, and keeps a few messages.
type failures struct {
	mu     sync.Mutex
	kinds  map[string]int
	sample []string
}

func (f *failures) add(kind string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.kinds == nil {
		f.kinds = map[string]int{}
	}
	f.kinds[kind]++
	if len(f.sample) < 5 && err != nil {
		msg := kind + ": " + err.Error()
		for _, s := range f.sample {
			if s == msg {
				return
			}
		}
		f.sample = append(f.sample, msg)
	}
}

func cmdFleet(args []string) error {
	fs := flag.NewFlagSet("fleet", flag.ContinueOnError)
	addr := fs.String("addr", "", "broker host:port")
	mode := fs.String("mode", "hold", "hold (memory) or storm (restart and reconnect)")
	label := fs.String("label", "", "label, echoed")
	round := fs.Int("round", 0, "round number, echoed")
	usersFile := fs.String("users", "", "user:password lines: device i is the i-th user, client ID <id-prefix><user>")
	n := fs.Int("n", 0, "devices (0: every user of -users)")
	idPrefix := fs.String("id-prefix", "fleet-", "client ID prefix")
	src := fs.String("src", "127.5.0.0/16", "source addresses: device i connects from the i-th")
	workers := fs.Int("workers", 64, "connections in flight in the hold phase")
	timeout := fs.Duration("timeout", 10*time.Second, "bound on one attempt: dial, CONNECT, CONNACK")
	settle := fs.Duration("settle", time.Second, "wait before each RSS sample")
	pids := fs.String("pids", "", "hold: broker=PID (RSS); storm: the processes that do not restart, e.g. redis=PID")
	redisAddr := fs.String("redis", "", "storm: a redis-server (host:port) whose INFO stats counters to report per reconnect")
	readyFile := fs.String("ready-file", "", "storm: written once every device is held")
	pidFile := fs.String("pid-file", "", "storm: where the restarted broker's PID appears")
	bmin := fs.Duration("backoff-min", 10*time.Millisecond, "storm: first reconnect backoff")
	bmax := fs.Duration("backoff-max", 500*time.Millisecond, "storm: largest reconnect backoff")
	maxDur := fs.Duration("max-duration", 5*time.Minute, "bound on each phase (hold; restart wait; storm)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *addr == "" || *usersFile == "" || *workers < 1 || *workers > 4096 || (*mode != "hold" && *mode != "storm") {
		return fmt.Errorf("need -addr, -users, -mode hold|storm, 1 <= -workers <= 4096")
	}
	if *mode == "storm" && (*readyFile == "" || *pidFile == "") {
		return fmt.Errorf("-mode storm needs -ready-file and -pid-file")
	}
	if *bmin <= 0 || *bmax < *bmin {
		return fmt.Errorf("need 0 < -backoff-min <= -backoff-max")
	}
	raddr, err := net.ResolveTCPAddr("tcp", *addr)
	if err != nil {
		return err
	}
	pool, err := newAddrPool(*src)
	if err != nil {
		return err
	}
	users, err := readUsers(*usersFile)
	if err != nil {
		return err
	}
	if *n == 0 || *n > len(users) {
		if *n > len(users) {
			return fmt.Errorf("-n %d: %s has only %d users", *n, *usersFile, len(users))
		}
		*n = len(users)
	}
	fixed, err := parsePids(*pids)
	if err != nil {
		return err
	}
	brokerPID := 0
	for i, name := range fixed.names {
		if name == "broker" {
			brokerPID = fixed.pids[i]
		}
	}
	res := FleetResult{Cmd: "fleet", Label: *label, Round: *round, Mode: *mode, N: *n, Users: len(users), Workers: *workers}
	rss := func() int64 {
		if brokerPID == 0 {
			return 0
		}
		st, err := procStatus(brokerPID, "VmRSS")
		if err != nil {
			return 0
		}
		return st["VmRSS"]
	}
	devs := make([]*device, *n)
	for i := range devs {
		u := users[i]
		devs[i] = &device{idx: i, pkt: connectPacketKeepAlive(*idPrefix+u.user, &u.user, &u.pass, 0), src: pool.tcpAddr(uint64(i))}
	}
	defer func() {
		for _, d := range devs {
			d.close()
		}
	}()

	// The hold phase.
	var startup cpuReading // the broker's CPU before any device: what its start cost
	haveStartup := false
	if brokerPID != 0 {
		time.Sleep(*settle)
		res.RSSIdleKB = rss()
		if st, err := procStatus(brokerPID, "RssAnon", "RssFile"); err == nil {
			res.RSSIdleAnonKB, res.RSSIdleFileKB = st["RssAnon"], st["RssFile"]
		}
		startup, err = readCPU(brokerPID)
		haveStartup = err == nil
	}
	var holdFail failures
	var next, held atomic.Int64
	t0 := time.Now()
	deadline := t0.Add(*maxDur)
	var wg sync.WaitGroup
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for {
				i := next.Add(1) - 1
				if i >= int64(len(devs)) {
					return
				}
				d := devs[i]
				for k := 0; k < 5 && time.Now().Before(deadline); k++ {
					c, _, kind, err := dialHeld(d.src, raddr, d.pkt, *timeout)
					if err == nil {
						d.set(c)
						held.Add(1)
						break
					}
					holdFail.add(kind, err)
					time.Sleep(backoff{*bmin, *bmax}.wait(k, r))
				}
			}
		}()
	}
	wg.Wait()
	res.Held = int(held.Load())
	res.HoldSeconds = round3(time.Since(t0).Seconds())
	if res.HoldSeconds > 0 {
		res.HoldRate = float64(int(float64(res.Held) / res.HoldSeconds))
	}
	res.ErrSample = append(res.ErrSample, holdFail.sample...)
	fmt.Fprintf(os.Stderr, "  %-10s round %d: %d of %d devices held in %.1f s (%.0f connects/s)\n", res.Label, res.Round, res.Held, res.N, res.HoldSeconds, res.HoldRate)
	if res.Held < res.N {
		res.Incomplete = fmt.Sprintf("only %d of %d devices connected in the hold phase", res.Held, res.N)
	}
	if brokerPID != 0 {
		time.Sleep(*settle)
		res.RSSHeldKB = rss()
		if st, err := procStatus(brokerPID, "VmHWM", "RssAnon", "RssFile"); err == nil {
			res.HWMKB = st["VmHWM"]
			res.RSSHeldAnonKB, res.RSSHeldFileKB = st["RssAnon"], st["RssFile"]
		}
		if end, err := readCPU(brokerPID); err == nil && haveStartup && res.Held > 0 {
			per := func(d time.Duration) float64 { return round3(float64(d.Microseconds()) / float64(res.Held)) }
			res.HoldCPUUs, res.HoldMainCPUUs = per(end.proc-startup.proc), per(end.main-startup.main)
		}
	}
	if *mode == "storm" && res.Held > 0 {
		res.Backoff = backoff{*bmin, *bmax}.String()
		if err := storm(&res, devs, raddr, fixed, startup, haveStartup, *redisAddr, *readyFile, *pidFile, backoff{*bmin, *bmax}, *timeout, *maxDur); err != nil {
			return err
		}
	}
	return emit(res)
}

// storm signals readiness, waits for the broker's restart, and measures
// the fleet's reconnection.
//
// Moments: the first drop is when the first device's read ends; the
// restarted broker is up at the earliest moment a device's TCP connect to it
// completed (with thousands of devices retrying, within a fraction of a
// millisecond of the listener opening; a probe of its own would wait behind
// the devices' SYNs for the accept queue); the storm ends at the last
// device's CONNACK.
//
// CPU: the restarted broker is a new process, so what it used by the end is
// all since its exec; what a start costs (the same configuration, the same
// files) is taken off as the first broker measured it before any device
// connected (startup: its CPU then). Redis is read at the first drop and at
// the end.
func storm(res *FleetResult, devs []*device, raddr *net.TCPAddr, fixed *cpuMeter, startup cpuReading, haveStartup bool,
	redisAddr, readyFile, pidFile string, bo backoff, timeout, maxDur time.Duration) error {
	var (
		firstDrop atomic.Int64 // unix ns
		upAt      atomic.Int64 // unix ns: the first TCP connect to the restarted broker
		done      atomic.Int64
		attempts  atomic.Int64
		fails     failures
		latMu     sync.Mutex
		lats      []time.Duration
		doneAt    []int64 // unix ns of each device's CONNACK
		lastAt    atomic.Int64
		allDone   = make(chan struct{})
		closeOnce sync.Once
	)
	earliest := func(v *atomic.Int64, t int64) {
		for {
			cur := v.Load()
			if (cur != 0 && cur <= t) || v.CompareAndSwap(cur, t) {
				return
			}
		}
	}
	live := res.Held
	stop := make(chan struct{})
	defer close(stop)
	deadline := time.Now().Add(3 * maxDur) // restart wait, storm, margin
	for _, d := range devs {
		d.mu.Lock()
		c := d.conn
		d.mu.Unlock()
		if c == nil {
			continue
		}
		go func() {
			var b [1]byte
			_, _ = c.Read(b[:]) // blocks until the broker goes away
			earliest(&firstDrop, time.Now().UnixNano())
			c.Close()
			d.set(nil)
			r := rand.New(rand.NewPCG(uint64(d.idx), 2))
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				case <-time.After(bo.wait(k, r)):
				}
				if time.Now().After(deadline) {
					return
				}
				attempts.Add(1)
				nc, lat, kind, err := dialHeld(d.src, raddr, d.pkt, timeout)
				if nc != nil || kind == "connack" {
					// A CONNACK: the restarted broker (the old one answers
					// none once stopping) was up when CONNECT was written,
					// right after this connect completed.
					earliest(&upAt, time.Now().Add(-lat).UnixNano())
				}
				if err != nil {
					fails.add(kind, err)
					continue
				}
				d.set(nc)
				now := time.Now()
				latMu.Lock()
				lats = append(lats, lat)
				latMu.Unlock()
				lastAt.Store(now.UnixNano())
				latMu.Lock()
				doneAt = append(doneAt, now.UnixNano())
				latMu.Unlock()
				if done.Add(1) == int64(live) {
					closeOnce.Do(func() { close(allDone) })
				}
				return
			}
		}()
	}
	if err := os.WriteFile(readyFile, []byte(fmt.Sprintf("held %d\n", live)), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "  %-10s round %d: %d held; waiting for the broker's restart\n", res.Label, res.Round, live)

	// Redis from the first drop on.
	meter := &cpuMeter{redisAddr: redisAddr}
	for i, name := range fixed.names {
		if name != "broker" { // the broker before the restart
			meter.names = append(meter.names, name)
			meter.pids = append(meter.pids, fixed.pids[i])
		}
	}
	for wait := time.Now().Add(maxDur); firstDrop.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(wait) {
			res.Incomplete = fmt.Sprintf("the broker did not go away within %s", maxDur)
			return nil
		}
	}
	meter.begin()
	overflows0 := listenOverflows()
	select {
	case <-allDone:
	case <-time.After(maxDur):
		res.Incomplete = fmt.Sprintf("only %d of %d devices reconnected within %s of the first drop", done.Load(), live, maxDur)
	}
	res.CPU = meter.end()
	res.ListenOverflows = listenOverflows() - overflows0
	res.Reconnected = int(done.Load())
	res.Attempts = int(attempts.Load())
	res.Cost = meter.costs(res.Reconnected)
	if c, r, ok := meter.redisPerConnect(res.Reconnected); ok {
		res.RedisCmds, res.RedisReads = &c, &r
	}
	// The restarted broker: all it used since its exec, less a start's cost.
	b, err := os.ReadFile(pidFile)
	pid, perr := strconv.Atoi(strings.TrimSpace(string(b)))
	switch {
	case err != nil || perr != nil || pid <= 0:
		res.ErrSample = append(res.ErrSample, "no broker PID in "+pidFile+": its CPU is not reported")
	case !haveStartup:
		res.ErrSample = append(res.ErrSample, "the first broker's startup CPU is unknown (-pids broker=PID): the restarted broker's CPU is not reported")
	default:
		if end, err := readCPU(pid); err == nil {
			res.Cost["broker"] = costOf(startup, end, res.Reconnected)
			res.StartupMS = round3(ms(startup.proc))
			if wall := time.Duration(time.Now().UnixNano() - firstDrop.Load()); wall > 0 {
				res.CPU["broker"] = math.Round(1000*float64(end.proc-startup.proc)/float64(wall)) / 10
			}
		}
	}
	fd, up, last := firstDrop.Load(), upAt.Load(), lastAt.Load()
	if up > 0 {
		res.DownSeconds = round3(float64(up-fd) / 1e9)
	}
	if last > 0 && up > 0 {
		res.StormS = round3(float64(last-up) / 1e9)
		res.FromDropS = round3(float64(last-fd) / 1e9)
	}
	latMu.Lock()
	res.P50, res.P99, res.Max = latencyStats(lats)
	if up > 0 && len(doneAt) > 0 {
		slices.Sort(doneAt)
		at := func(q float64) float64 {
			i := max(0, min(len(doneAt)-1, int(math.Ceil(q*float64(live)))-1))
			return round3(float64(doneAt[i]-up) / 1e9)
		}
		res.Done50S, res.Done90S, res.Done99S = at(0.5), at(0.9), at(0.99)
	}
	latMu.Unlock()
	fails.mu.Lock()
	res.Failures = fails.kinds
	res.ErrSample = append(res.ErrSample, fails.sample...)
	fails.mu.Unlock()
	cost := ""
	if b, ok := res.Cost["broker"]; ok {
		cost = fmt.Sprintf("; broker thread %.1f µs/reconnect, process %.1f µs", b.ThreadUS, b.ProcessUS)
	}
	fmt.Fprintf(os.Stderr, "  %-10s round %d: %d of %d reconnected in %.2f s after the broker accepted again (down %.2f s); p99 CONNACK %s ms; %d attempts%s\n",
		res.Label, res.Round, res.Reconnected, live, res.StormS, res.DownSeconds, fmtF(deref(res.P99), 1), res.Attempts, cost)
	return nil
}

// listenOverflows reads TcpExtListenOverflows from /proc/net/netstat (0
// when it cannot).
func listenOverflows() int64 {
	b, err := os.ReadFile("/proc/net/netstat")
	if err != nil {
		return 0
	}
	lines := strings.Split(string(b), "\n")
	for i := 0; i+1 < len(lines); i++ {
		if !strings.HasPrefix(lines[i], "TcpExt:") || !strings.HasPrefix(lines[i+1], "TcpExt:") {
			continue
		}
		names, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		for j := range names {
			if names[j] == "ListenOverflows" && j < len(vals) {
				n, _ := strconv.ParseInt(vals[j], 10, 64)
				return n
			}
		}
	}
	return 0
}
