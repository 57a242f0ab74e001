package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ConnectResult is the JSON line of `loadgen connect`.
type ConnectResult struct {
	Cmd      string             `json:"cmd"`
	Label    string             `json:"label"`
	Round    int                `json:"round"`
	Workers  int                `json:"workers"`
	Src      string             `json:"src"`
	Mode     string             `json:"mode"` // "duration" or "once"
	Seconds  float64            `json:"seconds"`
	Attempts int                `json:"attempts"` // measured attempts
	Accepted int                `json:"accepted"`
	Refused  int                `json:"refused"` // any non-zero CONNACK code
	Errors   int                `json:"errors"`  // no CONNACK: dial, timeout, closed
	Expect   string             `json:"expect"`
	Unexpect int                `json:"unexpected"` // CONNACKs other than expected, and errors
	Rate     float64            `json:"connects_per_s"`
	P50      *float64           `json:"p50_ms"`
	P99      *float64           `json:"p99_ms"`
	Max      *float64           `json:"max_ms"`
	CPU      map[string]float64 `json:"cpu_pct"` // % of one core during the measured window
	// Cost: each -pids process's CPU time (whole process, main thread) in
	// the measured window per CONNACK (accepted or refused) in it.
	Cost map[string]cpuCost `json:"cpu_per_connect,omitempty"`
	// Redis commands and reads (round trips) per CONNACK, with -redis.
	RedisCmds  *float64 `json:"redis_cmds_per_connect,omitempty"`
	RedisReads *float64 `json:"redis_reads_per_connect,omitempty"`
	ErrSample  []string `json:"error_sample,omitempty"`
	Warmup     int      `json:"warmup_attempts"`
}

type credential struct{ user, pass string }

func cmdConnect(args []string) error {
	fs := flag.NewFlagSet("connect", flag.ContinueOnError)
	addr := fs.String("addr", "", "broker host:port")
	label := fs.String("label", "", "scenario label, echoed")
	round := fs.Int("round", 0, "round number, echoed")
	workers := fs.Int("workers", 32, "concurrent connections in flight")
	warmup := fs.Duration("warmup", time.Second, "warm-up, not measured")
	duration := fs.Duration("duration", 5*time.Second, "measured time (duration mode)")
	src := fs.String("src", "127.1.0.0/16", "source addresses, taken in turn")
	user := fs.String("user", "", "username (none: anonymous)")
	pass := fs.String("pass", "", "password, with -user")
	usersFile := fs.String("users", "", "file of user:password lines: each user connects once (once mode), client ID <id-prefix><user>")
	maxDur := fs.Duration("max-duration", 60*time.Second, "bound on the measured phase in once mode")
	idPrefix := fs.String("id-prefix", "bench-", "client ID prefix; duration mode adds w<worker>")
	expect := fs.String("expect", "accept", "accept, refuse or any: what counts as unexpected")
	pids := fs.String("pids", "", "processes whose CPU use to report: name=pid,...")
	redisAddr := fs.String("redis", "", "a redis-server (host:port) whose INFO stats counters to report per CONNACK")
	timeout := fs.Duration("timeout", 5*time.Second, "bound on one connection attempt")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *addr == "" || *workers < 1 || *workers > 4096 {
		return fmt.Errorf("need -addr and 1 <= -workers <= 4096")
	}
	if *expect != "accept" && *expect != "refuse" && *expect != "any" {
		return fmt.Errorf("-expect: accept, refuse or any")
	}
	raddr, err := net.ResolveTCPAddr("tcp", *addr)
	if err != nil {
		return err
	}
	pool, err := newAddrPool(*src)
	if err != nil {
		return err
	}
	meter, err := parsePids(*pids)
	if err != nil {
		return err
	}
	meter.redisAddr = *redisAddr
	var users []credential
	if *usersFile != "" {
		if users, err = readUsers(*usersFile); err != nil {
			return err
		}
	}
	once := len(users) > 0
	var fixedUser, fixedPass *string
	if *user != "" {
		fixedUser, fixedPass = user, pass
	}

	start := time.Now()
	measureFrom := start.Add(*warmup)
	end := measureFrom.Add(*duration)
	if once {
		end = measureFrom.Add(*maxDur)
	}
	run := &connectRun{
		raddr: raddr, pool: pool, users: users, timeout: *timeout, expect: *expect,
		measureFrom: measureFrom, end: end,
	}
	res := ConnectResult{Cmd: "connect", Label: *label, Round: *round, Workers: *workers, Src: *src, Expect: *expect, Mode: "duration"}
	if once {
		res.Mode = "once"
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		lats     []time.Duration
		lastDone time.Time
		errSeen  = map[string]bool{}
	)
	for w := 0; w < *workers; w++ {
		wk := &worker{run: run, fixed: connectPacket(fmt.Sprintf("%sw%02d", *idPrefix, w), fixedUser, fixedPass)}
		if once {
			u := users[0]
			wk.warm = connectPacket(fmt.Sprintf("%swarm-w%02d", *idPrefix, w), &u.user, &u.pass)
			wk.idPrefix = *idPrefix
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			wk.loop()
			mu.Lock()
			defer mu.Unlock()
			lats = append(lats, wk.lat...)
			res.Accepted += wk.accepted
			res.Refused += wk.refused
			res.Errors += wk.errors
			res.Unexpect += wk.unexpected
			res.Warmup += wk.warmups
			if wk.last.After(lastDone) {
				lastDone = wk.last
			}
			for _, e := range wk.errSample {
				if !errSeen[e] && len(errSeen) < 5 {
					errSeen[e] = true
					res.ErrSample = append(res.ErrSample, e)
				}
			}
		}()
	}
	// CPU use over the measured window.
	time.Sleep(time.Until(measureFrom))
	meter.begin()
	wg.Wait()
	res.CPU = meter.end()

	res.Attempts = res.Accepted + res.Refused + res.Errors
	res.Cost = meter.costs(res.Accepted + res.Refused)
	if c, r, ok := meter.redisPerConnect(res.Accepted + res.Refused); ok {
		res.RedisCmds, res.RedisReads = &c, &r
	}
	if !lastDone.IsZero() {
		res.Seconds = round3(lastDone.Sub(measureFrom).Seconds())
	}
	if res.Seconds > 0 {
		res.Rate = math.Round(float64(res.Accepted+res.Refused) / lastDone.Sub(measureFrom).Seconds())
	}
	res.P50, res.P99, res.Max = latencyStats(lats)
	if n := run.nextUser.Load(); once && n < int64(len(users)) {
		res.ErrSample = append(res.ErrSample, fmt.Sprintf("only %d of %d users attempted within %s", n, len(users), *maxDur))
	}
	cpu := make([]string, 0, len(res.CPU))
	for _, k := range []string{"broker", "redis", "loadgen", "other"} {
		if v, ok := res.CPU[k]; ok {
			cpu = append(cpu, fmt.Sprintf("%s %.0f%%", k, v))
		}
	}
	if b, ok := res.Cost["broker"]; ok {
		cpu = append(cpu, fmt.Sprintf("broker thread %.1f µs/connect (±%.2f), process %.1f µs", b.ThreadUS, b.ThreadErrUS, b.ProcessUS))
	}
	if r, ok := res.Cost["redis"]; ok {
		cpu = append(cpu, fmt.Sprintf("redis %.1f µs", r.ProcessUS))
	}
	fmt.Fprintf(os.Stderr, "  %-8s round %d: %6.0f connects/s  p50 %s ms  p99 %s ms  accepted %d refused %d errors %d  cpu: %s\n",
		res.Label, res.Round, res.Rate, fmtF(deref(res.P50), 2), fmtF(deref(res.P99), 2), res.Accepted, res.Refused, res.Errors, strings.Join(cpu, ", "))
	return emit(res)
}

func round3(f float64) float64 { return math.Round(f*1000) / 1000 }

// readUsers reads user:password lines.
func readUsers(path string) ([]credential, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []credential
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		u, p, ok := strings.Cut(line, ":")
		if !ok {
			return nil, errors.New(path + ": want user:password lines")
		}
		out = append(out, credential{u, p})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, errors.New(path + ": no users")
	}
	return out, nil
}

// connectRun is what the workers of one `connect` share.
type connectRun struct {
	raddr            *net.TCPAddr
	pool             *addrPool
	users            []credential // once mode: each connects once, in turn
	timeout          time.Duration
	expect           string
	measureFrom, end time.Time
	nextIP           atomic.Uint64
	nextUser         atomic.Int64
}

// worker is one connect → CONNACK → DISCONNECT loop.
type worker struct {
	run         *connectRun
	fixed, warm []byte // CONNECT packets: duration mode, once mode's warm-up
	idPrefix    string

	lat                                            []time.Duration
	accepted, refused, errors, unexpected, warmups int
	last                                           time.Time // end of the last measured attempt
	errSample                                      []string
}

// errBackoff keeps a dead broker from turning a worker into a busy loop.
const errBackoff = time.Millisecond

func (w *worker) loop() {
	r := w.run
	once := len(r.users) > 0
	for n := 0; n < math.MaxInt32; n++ {
		now := time.Now()
		if now.After(r.end) {
			return
		}
		measuring := !now.Before(r.measureFrom)
		pkt := w.fixed
		if once {
			pkt = w.warm
			if measuring {
				i := r.nextUser.Add(1) - 1
				if i >= int64(len(r.users)) {
					return
				}
				u := r.users[i]
				pkt = connectPacket(w.idPrefix+u.user, &u.user, &u.pass)
			}
		}
		code, lat, err := attempt(r.pool.tcpAddr(r.nextIP.Add(1)), r.raddr, pkt, r.timeout)
		if !measuring {
			w.warmups++
			if err != nil {
				time.Sleep(errBackoff)
			}
			continue
		}
		w.last = time.Now()
		if err != nil {
			w.errors++
			w.unexpected++
			if len(w.errSample) < 3 {
				w.errSample = append(w.errSample, err.Error())
			}
			time.Sleep(errBackoff)
			continue
		}
		if code == 0 {
			w.accepted++
			if r.expect == "refuse" {
				w.unexpected++
			}
		} else {
			w.refused++
			if r.expect == "accept" {
				w.unexpected++
			}
		}
		w.lat = append(w.lat, lat)
	}
}
