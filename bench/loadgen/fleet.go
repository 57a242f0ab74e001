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
	"math/rand/v2"
	"net"
	"os"
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
	HWMKB       int64   `json:"vmhwm_kb,omitempty"`

	// The storm.
	Backoff     string   `json:"backoff,omitempty"`
	Reconnected int      `json:"reconnected"`
	DownSeconds float64  `json:"down_s"`      // first drop → the restarted broker accepting TCP
	StormS      float64  `json:"storm_s"`     // the restarted broker accepting → the last device's CONNACK
	FromDropS   float64  `json:"from_drop_s"` // first drop → the last device's CONNACK
	P50         *float64 `json:"p50_ms,omitempty"`
	P99         *float64 `json:"p99_ms,omitempty"`
	Max         *float64 `json:"max_ms,omitempty"`
	Attempts    int      `json:"attempts"` // reconnect attempts, all devices (≥ Reconnected)
	// Failed attempts by kind: refused (TCP), timeout, closed (no CONNACK),
	// connack (a CONNACK refusing), other.
	Failures   map[string]int     `json:"failures,omitempty"`
	CPU        map[string]float64 `json:"cpu_pct,omitempty"`
	Cost       map[string]cpuCost `json:"cpu_per_connect,omitempty"` // per device reconnected, failed attempts' cost included
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
	if brokerPID != 0 {
		time.Sleep(*settle)
		res.RSSIdleKB = rss()
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
		if st, err := procStatus(brokerPID, "VmHWM"); err == nil {
			res.HWMKB = st["VmHWM"]
		}
	}
	if *mode == "storm" && res.Held > 0 {
		res.Backoff = backoff{*bmin, *bmax}.String()
		if err := storm(&res, devs, raddr, fixed, *redisAddr, *readyFile, *pidFile, backoff{*bmin, *bmax}, *timeout, *maxDur); err != nil {
			return err
		}
	}
	return emit(res)
}

// storm signals readiness, waits for the broker's restart, and measures
// the fleet's reconnection.
func storm(res *FleetResult, devs []*device, raddr *net.TCPAddr, fixed *cpuMeter, redisAddr, readyFile, pidFile string,
	bo backoff, timeout, maxDur time.Duration) error {
	var (
		firstDrop atomic.Int64 // unix ns
		upAt      atomic.Int64 // unix ns: the restarted broker accepting
		done      atomic.Int64
		attempts  atomic.Int64
		fails     failures
		latMu     sync.Mutex
		lats      []time.Duration
		lastAt    atomic.Int64
		allDone   = make(chan struct{})
		closeOnce sync.Once
	)
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
			firstDrop.CompareAndSwap(0, time.Now().UnixNano())
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

	// The restarted broker accepting: a probe that saw the port refused
	// after the first drop, then connected.
	probeDeadline := time.Now().Add(maxDur)
	sawDown := false
	for upAt.Load() == 0 {
		if time.Now().After(probeDeadline) {
			res.Incomplete = fmt.Sprintf("the broker did not come back within %s", maxDur)
			return nil
		}
		if firstDrop.Load() == 0 {
			time.Sleep(time.Millisecond)
			continue
		}
		c, err := net.DialTimeout("tcp", raddr.String(), 100*time.Millisecond)
		if err != nil {
			sawDown = true
			time.Sleep(time.Millisecond)
			continue
		}
		c.Close()
		if sawDown {
			upAt.Store(time.Now().UnixNano())
		} else {
			time.Sleep(time.Millisecond) // the old broker, still closing
		}
	}
	// The restarted broker's PID, written by bench/run.sh before it starts.
	meter := &cpuMeter{redisAddr: redisAddr}
	for i, name := range fixed.names {
		if name != "broker" { // the broker before the restart
			meter.names = append(meter.names, name)
			meter.pids = append(meter.pids, fixed.pids[i])
		}
	}
	for wait := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		b, err := os.ReadFile(pidFile)
		if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && perr == nil && pid > 0 {
			meter.names = append(meter.names, "broker")
			meter.pids = append(meter.pids, pid)
			break
		}
		if time.Now().After(wait) {
			res.ErrSample = append(res.ErrSample, "no broker PID in "+pidFile+": its CPU is not reported")
			break
		}
	}
	meter.begin()
	select {
	case <-allDone:
	case <-time.After(maxDur):
		res.Incomplete = fmt.Sprintf("only %d of %d devices reconnected within %s of the restart", done.Load(), live, maxDur)
	}
	res.CPU = meter.end()
	res.Reconnected = int(done.Load())
	res.Attempts = int(attempts.Load())
	res.Cost = meter.costs(res.Reconnected)
	if c, r, ok := meter.redisPerConnect(res.Reconnected); ok {
		res.RedisCmds, res.RedisReads = &c, &r
	}
	fd, up, last := firstDrop.Load(), upAt.Load(), lastAt.Load()
	res.DownSeconds = round3(float64(up-fd) / 1e9)
	if last > 0 {
		res.StormS = round3(float64(last-up) / 1e9)
		res.FromDropS = round3(float64(last-fd) / 1e9)
	}
	latMu.Lock()
	res.P50, res.P99, res.Max = latencyStats(lats)
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
