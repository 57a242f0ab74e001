package main

// loadgen chaos: faults under CONNECT load, on a broker with the plugin and
// its own Redis (bench/chaos/run.sh). Each scenario runs a paced load of
// valid clients (connect → CONNACK → DISCONNECT) for a bounded time, injects
// its fault in the middle, and measures what the valid clients saw: CONNACK
// p99 and max, CONNACKs missing (no CONNACK within -timeout, or the socket
// closed), CONNACKs other than accepted, whether the broker is alive and
// still accepts a client afterwards, its RSS before and after, and the time
// from the end of the fault to the last bad attempt.

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

func init() {
	commands["chaos"] = cmdChaos
	commands["chaosreport"] = cmdChaosReport
	commands["soak"] = cmdSoak
	commands["soakreport"] = cmdSoakReport
}

// ChaosResult is the JSON line of one chaos scenario.
type ChaosResult struct {
	Cmd        string   `json:"cmd"`
	Scenario   string   `json:"scenario"`
	Guaranteed string   `json:"guaranteed"`
	Fault      string   `json:"fault"`
	Attempts   int      `json:"attempts"`
	Accepted   int      `json:"accepted"`
	Missing    int      `json:"missing"` // no CONNACK
	Refused    int      `json:"refused"` // a CONNACK other than 0
	Slow       int      `json:"slow"`    // CONNACK later than -slow
	P50        *float64 `json:"p50_ms"`  // over CONNACKs received
	P99        *float64 `json:"p99_ms"`  //
	Max        *float64 `json:"max_ms"`  //
	Alive      bool     `json:"broker_alive"`
	FinalOK    bool     `json:"final_connect_ok"` // a new client accepted after the scenario
	RSSBefore  int64    `json:"rss_before_kb"`
	RSSAfter   int64    `json:"rss_after_kb"`
	Recover    *float64 `json:"recover_s"` // end of fault to the end of the last bad attempt; nil: none after it
	Degraded   bool     `json:"degraded"`  // some attempt was bad
	Held       int      `json:"held,omitempty"`
	HeldAlive  int      `json:"held_alive,omitempty"` // held connections still answering PINGREQ after
	Hostile    any      `json:"hostile,omitempty"`
	Holds      bool     `json:"holds"`
	Why        []string `json:"why,omitempty"` // what did not hold
	ErrSample  []string `json:"error_sample,omitempty"`
	Seconds    float64  `json:"seconds"`
}

type sample struct {
	start, end time.Time
	code       int // CONNACK code; -1 none
	lat        time.Duration
	err        string
}

type chaosEnv struct {
	out, plugin   string
	redis         *redisProc
	broker        *brokerProc
	raddr         *net.TCPAddr
	user, pass    string
	workers       int
	interval      time.Duration // per worker, between attempt starts
	timeout, slow time.Duration
	legit         *addrPool
	hostile       *addrPool
	pre, during   time.Duration // load before the fault; fault length
	post          time.Duration // load after the fault
	nextIP        uint64
}

// load runs the paced valid load from now until d has passed, while fault
// runs; fault returns when its fault has ended.
func (e *chaosEnv) load(d time.Duration, idPrefix string, fault func()) (samples []sample, faultEnd time.Time) {
	end := time.Now().Add(d)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < e.workers; w++ {
		pkt := connectPacket(fmt.Sprintf("%s-w%02d", idPrefix, w), &e.user, &e.pass)
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			next := time.Now().Add(time.Duration(w) * e.interval / time.Duration(e.workers))
			var mine []sample
			for n := 0; n < 1_000_000 && time.Now().Before(end); n++ {
				time.Sleep(time.Until(next))
				next = next.Add(e.interval)
				if time.Now().After(next) {
					next = time.Now() // a stalled attempt: no catching up in a burst
				}
				mu.Lock()
				e.nextIP++
				ip := e.nextIP
				mu.Unlock()
				s := sample{start: time.Now(), code: -1}
				code, lat, err := attempt(e.legit.tcpAddr(ip), e.raddr, pkt, e.timeout)
				s.end = time.Now()
				if err != nil {
					s.err = err.Error()
					if lat > 0 { // a reply, but not a CONNACK
						s.code = 256
					}
				} else {
					s.code, s.lat = int(code), lat
				}
				mine = append(mine, s)
			}
			mu.Lock()
			samples = append(samples, mine...)
			mu.Unlock()
		}(w)
	}
	if fault != nil {
		fault()
	}
	faultEnd = time.Now()
	wg.Wait()
	return samples, faultEnd
}

func (e *chaosEnv) summarize(res *ChaosResult, samples []sample, faultEnd time.Time) {
	var lats []time.Duration
	var lastBad time.Time
	errs := map[string]bool{}
	for _, s := range samples {
		res.Attempts++
		bad := false
		switch {
		case s.code < 0 || s.code > 255:
			res.Missing++
			bad = true
			if len(errs) < 4 && !errs[s.err] {
				errs[s.err] = true
				res.ErrSample = append(res.ErrSample, s.err)
			}
		case s.code != 0:
			res.Refused++
			bad = true
			lats = append(lats, s.lat)
		default:
			res.Accepted++
			lats = append(lats, s.lat)
			if s.lat > e.slow {
				res.Slow++
				bad = true
			}
		}
		if bad {
			res.Degraded = true
			if s.end.After(lastBad) {
				lastBad = s.end
			}
		}
	}
	res.P50, res.P99, res.Max = latencyStats(lats)
	if lastBad.After(faultEnd) {
		v := round3(lastBad.Sub(faultEnd).Seconds())
		res.Recover = &v
	}
}

// finish checks the broker and fills in what holds.
func (e *chaosEnv) finish(res *ChaosResult, t0 time.Time) {
	res.Alive = e.broker.alive()
	if res.Alive {
		for i := 0; i < 50 && !res.FinalOK; i++ { // up to 5 s for a recovering broker
			code, _, err := attempt(e.legit.tcpAddr(uint64(i)+7), e.raddr, connectPacket("chaos-final", &e.user, &e.pass), e.timeout)
			res.FinalOK = err == nil && code == 0
			if !res.FinalOK {
				time.Sleep(100 * time.Millisecond)
			}
		}
		time.Sleep(500 * time.Millisecond)
		res.RSSAfter = e.broker.rssKB()
	}
	res.Holds = true
	fail := func(why string) { res.Holds = false; res.Why = append(res.Why, why) }
	if !res.Alive {
		fail("broker died")
	} else if !res.FinalOK {
		fail("no client accepted afterwards")
	}
	if res.Missing > 0 {
		fail(fmt.Sprintf("%d CONNACKs missing", res.Missing))
	}
	if res.Refused > 0 {
		fail(fmt.Sprintf("%d valid clients refused", res.Refused))
	}
	if res.Held > 0 && res.HeldAlive < res.Held {
		fail(fmt.Sprintf("%d of %d held connections lost", res.Held-res.HeldAlive, res.Held))
	}
	res.Seconds = round3(time.Since(t0).Seconds())
}

type chaosScenario struct {
	name, guaranteed, fault string
	// run injects the fault (load is running meanwhile) and returns when it ends.
	run func(e *chaosEnv, res *ChaosResult)
	// hold: connections kept open through the scenario, checked after.
	hold int
}

// sleepBounded sleeps d, or less if the scenario's bound is reached.
func every(d time.Duration, n int, f func(i int)) {
	next := time.Now()
	for i := 0; i < n; i++ {
		time.Sleep(time.Until(next))
		next = next.Add(d)
		f(i)
	}
}

var chaosScenarios = []chaosScenario{
	{name: "baseline", fault: "none",
		guaranteed: "every valid client accepted",
		run:        func(e *chaosEnv, _ *ChaosResult) { time.Sleep(e.during) }},
	{name: "redis-sigstop", fault: "SIGSTOP redis-server for the fault time, then SIGCONT",
		guaranteed: "no wait on the broker thread longer than redis_timeout (100 ms); a hung Redis noticed within 700 ms; valid clients accepted (redis_unavailable allow)",
		run: func(e *chaosEnv, _ *ChaosResult) {
			_ = e.redis.signal(syscall.SIGSTOP)
			time.Sleep(e.during)
			_ = e.redis.signal(syscall.SIGCONT)
		}},
	{name: "redis-kill", fault: "SIGKILL redis-server, down for the fault time, then started again, empty",
		guaranteed: "a refusing Redis noticed at once; valid clients accepted meanwhile; the plugin reconnects by itself",
		run: func(e *chaosEnv, res *ChaosResult) {
			e.redis.kill()
			time.Sleep(e.during)
			if err := e.redis.restart(); err != nil {
				res.Why = append(res.Why, "redis restart: "+err.Error())
			}
		}},
	{name: "redis-restart-empty", fault: "redis-server killed and started again at once, empty, 3 times 1 s apart",
		guaranteed: "valid clients accepted throughout; the replica reloads from the empty Redis",
		run: func(e *chaosEnv, res *ChaosResult) {
			every(time.Second, 3, func(int) {
				if err := e.redis.restart(); err != nil {
					res.Why = append(res.Why, "redis restart: "+err.Error())
				}
			})
		}},
	{name: "redis-flushall", fault: "FLUSHALL every 500 ms for the fault time",
		guaranteed: "valid clients accepted throughout",
		run: func(e *chaosEnv, _ *ChaosResult) {
			n := int(e.during / (500 * time.Millisecond))
			every(500*time.Millisecond, max(1, n), func(int) { _, _ = e.redis.cli("FLUSHALL") })
		}},
	{name: "redis-flapping", fault: "redis-server alternately stopped (SIGSTOP 300 ms), killed and restarted, every 600 ms for the fault time",
		guaranteed: "no wait longer than redis_timeout per Redis call; valid clients accepted throughout",
		run: func(e *chaosEnv, res *ChaosResult) {
			n := int(e.during / (600 * time.Millisecond))
			every(600*time.Millisecond, max(1, n), func(i int) {
				if i%2 == 0 {
					_ = e.redis.signal(syscall.SIGSTOP)
					time.Sleep(300 * time.Millisecond)
					_ = e.redis.signal(syscall.SIGCONT)
				} else if err := e.redis.restart(); err != nil {
					res.Why = append(res.Why, "redis restart: "+err.Error())
				}
			})
		}},
	{name: "sighup-storm", fault: "SIGHUP to the broker every 100 ms for the fault time; 20 connections held open",
		guaranteed: "the broker stays up; connected clients re-authenticated, not dropped, not counted as failures",
		hold:       20,
		run: func(e *chaosEnv, _ *ChaosResult) {
			n := int(e.during / (100 * time.Millisecond))
			every(100*time.Millisecond, max(1, n), func(int) { _ = e.broker.signal(syscall.SIGHUP) })
		}},
	{name: "hostile-storm", fault: "32 hostile workers: truncated CONNECTs, huge and malformed remaining lengths, 65 535-byte client ID/username/password, odd bytes and flags, half-open sockets (up to 256 held), RST before CONNACK",
		guaranteed: "nothing a client sends crashes or hangs the broker; valid clients keep getting their CONNACK",
		run: func(e *chaosEnv, res *ChaosResult) {
			kinds := hostileStorm(e.raddr, e.hostile, e.during, 32, 256)
			res.Hostile = kinds
			for name, k := range kinds {
				if k.Accepted > 0 {
					res.Why = append(res.Why, fmt.Sprintf("%d hostile %s clients accepted", k.Accepted, name))
				}
			}
		}},
}

// cmdChaosReport prints the markdown table of a chaos run's JSON lines.
func cmdChaosReport(args []string) error {
	fs := flag.NewFlagSet("chaosreport", flag.ContinueOnError)
	file := fs.String("results", "", "JSON lines of loadgen chaos")
	if err := fs.Parse(args); err != nil {
		return err
	}
	b, err := os.ReadFile(*file)
	if err != nil {
		return err
	}
	var results []ChaosResult
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var r ChaosResult
		if line == "" || json.Unmarshal([]byte(line), &r) != nil || r.Cmd != "chaos" {
			continue
		}
		results = append(results, r)
	}
	fmt.Print(chaosTable(results))
	for _, r := range results {
		if !r.Holds {
			return fmt.Errorf("%s: %s", r.Scenario, strings.Join(r.Why, "; "))
		}
	}
	return nil
}

func cmdChaos(args []string) error {
	fs := flag.NewFlagSet("chaos", flag.ContinueOnError)
	plugin := fs.String("plugin", "", "mosquitto_guard.so")
	out := fs.String("out", "", "directory for the processes' files")
	only := fs.String("only", "", "comma-separated scenarios (default all)")
	workers := fs.Int("workers", 16, "valid clients in parallel")
	rate := fs.Float64("rate", 800, "valid connects/s offered in all")
	pre := fs.Duration("pre", 3*time.Second, "load before the fault")
	during := fs.Duration("during", 5*time.Second, "fault time")
	post := fs.Duration("post", 7*time.Second, "load after the fault")
	timeout := fs.Duration("timeout", 5*time.Second, "no CONNACK within this: missing")
	slow := fs.Duration("slow", 250*time.Millisecond, "a CONNACK later than this is bad (time to recover)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *plugin == "" || *out == "" || *workers < 1 || *workers > 256 || *rate <= 0 || *rate > 20000 {
		return fmt.Errorf("need -plugin, -out, 1 <= -workers <= 256, 0 < -rate <= 20000")
	}
	var list []chaosScenario
	for _, s := range chaosScenarios {
		if *only == "" || slices.Contains(strings.Split(*only, ","), s.name) {
			list = append(list, s)
		}
	}
	if len(list) == 0 {
		return fmt.Errorf("-only: no such scenario")
	}
	legit, _ := newAddrPool("127.5.0.0/16")
	hostile, _ := newAddrPool("127.6.0.0/16")
	for i, sc := range list {
		e := &chaosEnv{out: filepath.Join(*out, fmt.Sprintf("%d-%s", i+1, sc.name)), plugin: *plugin, user: "chaos", pass: "chaos-pw",
			workers: *workers, interval: time.Duration(float64(*workers) / *rate * float64(time.Second)), timeout: *timeout, slow: *slow,
			legit: legit, hostile: hostile, pre: *pre, during: *during, post: *post}
		res, err := e.scenario(sc)
		if err != nil {
			return fmt.Errorf("%s: %w", sc.name, err)
		}
		fmt.Fprintf(os.Stderr, "  %-20s attempts %d missing %d refused %d slow %d p99 %s ms max %s ms alive %v holds %v %s\n",
			res.Scenario, res.Attempts, res.Missing, res.Refused, res.Slow, fmtF(deref(res.P99), 1), fmtF(deref(res.Max), 1), res.Alive, res.Holds, strings.Join(res.Why, "; "))
		if err := emit(res); err != nil {
			return err
		}
	}
	return nil
}

// scenario runs one scenario on a fresh Redis and broker.
func (e *chaosEnv) scenario(sc chaosScenario) (*ChaosResult, error) {
	t0 := time.Now()
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	if e.redis, err = startRedis(filepath.Join(e.out, "redis"), port); err != nil {
		return nil, err
	}
	defer func() { e.redis.stop() }()
	pw := filepath.Join(e.out, "passwd")
	if err := writePasswd(pw, e.user, e.pass); err != nil {
		return nil, err
	}
	if e.broker, err = startBroker(filepath.Join(e.out, "broker"), e.plugin, []string{
		"auth_opt_redis_addr " + e.redis.addr, "auth_opt_password_file " + pw,
	}); err != nil {
		return nil, err
	}
	defer e.broker.stop()
	waitFileLine(e.broker.log, regexp.MustCompile(`mosquitto-guard: replica loaded`), e.broker.proc, 5*time.Second)
	if e.raddr, err = net.ResolveTCPAddr("tcp", e.broker.addr); err != nil {
		return nil, err
	}
	res := &ChaosResult{Cmd: "chaos", Scenario: sc.name, Guaranteed: sc.guaranteed, Fault: sc.fault}
	// Warm up (the verification cache, the replica), then measure RSS.
	e.load(time.Second, "chaos-warm", nil)
	time.Sleep(300 * time.Millisecond)
	res.RSSBefore = e.broker.rssKB()
	var held []net.Conn
	for i := 0; i < sc.hold; i++ {
		c, err := holdConnection(e.legit.tcpAddr(uint64(60000+i)), e.raddr, fmt.Sprintf("chaos-held-%02d", i), e.user, e.pass, e.timeout)
		if err != nil {
			res.Why = append(res.Why, "hold: "+err.Error())
			break
		}
		held = append(held, c)
	}
	res.Held = len(held)
	samples, faultEnd := e.load(e.pre+e.during+e.post, "chaos-"+sc.name, func() {
		time.Sleep(e.pre)
		sc.run(e, res)
	})
	e.summarize(res, samples, faultEnd)
	for _, c := range held {
		if ping(c, 2*time.Second) {
			res.HeldAlive++
		}
		c.Close()
	}
	why := res.Why
	res.Why = nil
	e.finish(res, t0)
	res.Why = append(why, res.Why...)
	if len(why) > 0 {
		res.Holds = false
	}
	return res, nil
}

// holdConnection connects a client and leaves it connected.
func holdConnection(laddr, raddr *net.TCPAddr, id, user, pass string, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTCP("tcp", laddr, raddr)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
	pkt := connectPacket(id, &user, &pass)
	ka := 1 + varintLen(pkt) + 6 + 2 // fixed header, "MQTT", level, flags
	pkt[ka], pkt[ka+1] = 0, 0        // keep-alive 0: never timed out while held
	if _, err := c.Write(pkt); err != nil {
		c.Close()
		return nil, err
	}
	var ack [4]byte
	if _, err := ioReadFullConn(c, ack[:]); err != nil || ack[0] != 0x20 || ack[3] != 0 {
		c.Close()
		return nil, fmt.Errorf("held connection not accepted: % x %v", ack, err)
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// varintLen is the length of the remaining-length field of pkt.
func varintLen(pkt []byte) int {
	n := 0
	for i := 1; i < len(pkt) && i < 5; i++ {
		n++
		if pkt[i]&0x80 == 0 {
			break
		}
	}
	return n
}

func ioReadFullConn(c net.Conn, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := c.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// ping sends PINGREQ and waits for PINGRESP.
func ping(c net.Conn, d time.Duration) bool {
	_ = c.SetDeadline(time.Now().Add(d))
	if _, err := c.Write([]byte{0xc0, 0}); err != nil {
		return false
	}
	var b [2]byte
	_, err := ioReadFullConn(c, b[:])
	return err == nil && b[0] == 0xd0
}

// chaosTable renders the JSON lines of a chaos run as markdown.
func chaosTable(results []ChaosResult) string {
	var b strings.Builder
	b.WriteString("| scenario | fault | guaranteed | CONNACK p99 / max ms | CONNACKs missing (refused) of attempts | broker alive, accepts after | RSS before → after | time to recover | holds |\n")
	b.WriteString("|---|---|---|---:|---:|---|---:|---:|---|\n")
	for _, r := range results {
		rec := "not degraded"
		if r.Recover != nil {
			rec = fmt.Sprintf("%.2f s", *r.Recover)
		} else if r.Degraded {
			rec = "0 s (only during the fault)"
		}
		alive := "no"
		if r.Alive {
			alive = "yes, "
			if r.FinalOK {
				alive += "yes"
			} else {
				alive += "**no**"
			}
		} else {
			alive = "**no**"
		}
		if r.Held > 0 {
			alive += fmt.Sprintf("; %d/%d held kept", r.HeldAlive, r.Held)
		}
		holds := "yes"
		if !r.Holds {
			holds = "**no**: " + strings.Join(r.Why, "; ")
		}
		fault := r.Fault
		if r.Hostile != nil {
			fault += fmt.Sprintf(" (%s)", hostileSummary(r.Hostile))
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s / %s | %d (%d) of %d | %s | %s → %s MB | %s | %s |\n",
			r.Scenario, fault, r.Guaranteed, fmtF(deref(r.P99), 1), fmtF(deref(r.Max), 1), r.Missing, r.Refused, r.Attempts,
			alive, mbKB(r.RSSBefore), mbKB(r.RSSAfter), rec, holds)
	}
	return b.String()
}

func mbKB(kb int64) string {
	if kb <= 0 {
		return "?"
	}
	return fmt.Sprintf("%.1f", float64(kb)/1024)
}
