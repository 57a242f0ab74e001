package main

// loadgen soak: N distinct client IDs each connecting once (connect →
// CONNACK → DISCONNECT) to a broker with the plugin and its own Redis, then
// HOLD more kept connected for a moment; the broker's RSS and Redis's
// used_memory are sampled along the way and set against the bounds the
// README states (bench/chaos/soak.sh).

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// SoakPoint is one sample of the soak.
type SoakPoint struct {
	Done       int64   `json:"connects"`
	Seconds    float64 `json:"seconds"`
	BrokerRSS  int64   `json:"broker_rss_kb"`
	RedisUsed  int64   `json:"redis_used_bytes"`
	RedisKeys  int64   `json:"redis_keys"`
	Failed     int64   `json:"failed"`
	ConnectsPS float64 `json:"connects_per_s"`
}

// SoakResult is the JSON line of `loadgen soak`.
type SoakResult struct {
	Cmd        string      `json:"cmd"`
	N          int         `json:"n"`
	Hold       int         `json:"hold"`
	Workers    int         `json:"workers"`
	Seconds    float64     `json:"seconds"`
	Accepted   int64       `json:"accepted"`
	Failed     int64       `json:"failed"`
	ErrSample  []string    `json:"error_sample,omitempty"`
	Points     []SoakPoint `json:"points"`
	Base       SoakPoint   `json:"base"`
	After      SoakPoint   `json:"after"`    // after the N, settled
	Holding    SoakPoint   `json:"holding"`  // with HOLD connected
	Released   SoakPoint   `json:"released"` // HOLD disconnected, settled
	BrokerHWM  int64       `json:"broker_hwm_kb"`
	Alive      bool        `json:"broker_alive"`
	KnownMax   int         `json:"known_sources_max"`
	Sources    int         `json:"source_addresses"`
	Incomplete string      `json:"incomplete,omitempty"`
}

func cmdSoak(args []string) error {
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	plugin := fs.String("plugin", "", "mosquitto_guard.so")
	out := fs.String("out", "", "directory for the processes' files")
	n := fs.Int("n", 1_000_000, "distinct client IDs, each connecting once")
	hold := fs.Int("hold", 5000, "client IDs kept connected at the end, to measure the while-connected cost")
	workers := fs.Int("workers", 32, "connections in flight")
	points := fs.Int("points", 10, "samples along the way")
	maxDur := fs.Duration("max-duration", 20*time.Minute, "bound on the connect phase")
	src := fs.String("src", "127.7.0.0/16", "source addresses, in turn")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *plugin == "" || *out == "" || *n < 1 || *n > 10_000_000 || *hold < 0 || *hold > 15000 || *workers < 1 || *workers > 1024 || *points < 1 {
		return fmt.Errorf("need -plugin, -out, 1 <= -n <= 10000000, 0 <= -hold <= 15000, 1 <= -workers <= 1024")
	}
	pool, err := newAddrPool(*src)
	if err != nil {
		return err
	}
	res := SoakResult{Cmd: "soak", N: *n, Hold: *hold, Workers: *workers, KnownMax: 100000, Sources: int(pool.hosts)}
	port, err := freePort()
	if err != nil {
		return err
	}
	redis, err := startRedis(filepath.Join(*out, "redis"), port)
	if err != nil {
		return err
	}
	defer redis.stop()
	pw := filepath.Join(*out, "passwd")
	user, pass := "soak", "soak-pw"
	if err := writePasswd(pw, user, pass); err != nil {
		return err
	}
	broker, err := startBroker(filepath.Join(*out, "broker"), *plugin, []string{
		"auth_opt_redis_addr " + redis.addr, "auth_opt_password_file " + pw,
		// Not information: the broker's lines for each connection (the plugin's "ready" is a notice).
		"log_type error", "log_type warning", "log_type notice",
	})
	if err != nil {
		return err
	}
	defer broker.stop()
	waitFileLine(broker.log, regexp.MustCompile(`mosquitto-guard: replica loaded`), broker.proc, 5*time.Second)
	raddr, err := net.ResolveTCPAddr("tcp", broker.addr)
	if err != nil {
		return err
	}
	t0 := time.Now()
	sample := func(done, failed int64) SoakPoint {
		p := SoakPoint{Done: done, Seconds: round3(time.Since(t0).Seconds()), BrokerRSS: broker.rssKB(), Failed: failed}
		p.RedisUsed, _ = redis.info("memory", "used_memory")
		if s, err := redis.cli("DBSIZE"); err == nil {
			fmt.Sscan(s, &p.RedisKeys)
		}
		return p
	}
	// settle waits until Redis stops growing (the plugin writes in batches, in the background).
	settle := func(done, failed int64) SoakPoint {
		last := sample(done, failed)
		for i := 0; i < 30; i++ {
			time.Sleep(time.Second)
			p := sample(done, failed)
			if p.RedisKeys == last.RedisKeys && absI(p.RedisUsed-last.RedisUsed) < 64*1024 {
				return p
			}
			last = p
		}
		return last
	}
	// Warm the verification cache with one connection, then the base.
	if _, _, err := attempt(pool.tcpAddr(0), raddr, connectPacket("soak-warm", &user, &pass), 5*time.Second); err != nil {
		return fmt.Errorf("first connect: %w", err)
	}
	res.Base = settle(0, 0)
	fmt.Fprintf(os.Stderr, "  soak: base: broker RSS %d kB, Redis %d bytes, %d keys\n", res.Base.BrokerRSS, res.Base.RedisUsed, res.Base.RedisKeys)

	var next, accepted, failed atomic.Int64
	var errMu sync.Mutex
	errSeen := map[string]bool{}
	deadline := time.Now().Add(*maxDur)
	var wg sync.WaitGroup
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				i := next.Add(1) - 1
				if i >= int64(*n) {
					return
				}
				code, _, err := attempt(pool.tcpAddr(uint64(i)), raddr, connectPacket(fmt.Sprintf("soak-%08d", i), &user, &pass), 5*time.Second)
				if err != nil || code != 0 {
					failed.Add(1)
					errMu.Lock()
					if len(errSeen) < 5 {
						e := fmt.Sprintf("connack %d", code)
						if err != nil {
							e = err.Error()
						}
						if !errSeen[e] {
							errSeen[e] = true
							res.ErrSample = append(res.ErrSample, e)
						}
					}
					errMu.Unlock()
					time.Sleep(time.Millisecond)
					continue
				}
				accepted.Add(1)
			}
		}()
	}
	// Samples along the way.
	stop := make(chan struct{})
	go func() { wg.Wait(); close(stop) }()
	step := int64(max(1, *n / *points))
	nextPoint := step
	lastT, lastDone := time.Now(), int64(0)
	for running := true; running; {
		select {
		case <-stop:
			running = false
		case <-time.After(200 * time.Millisecond):
		}
		done := accepted.Load() + failed.Load()
		if done >= nextPoint || !running {
			p := sample(done, failed.Load())
			p.ConnectsPS = float64(int(float64(done-lastDone) / time.Since(lastT).Seconds()))
			lastT, lastDone = time.Now(), done
			res.Points = append(res.Points, p)
			fmt.Fprintf(os.Stderr, "  soak: %8d connects (%6.0f/s), %d failed: broker RSS %d kB, Redis %d MB, %d keys\n",
				done, p.ConnectsPS, p.Failed, p.BrokerRSS, p.RedisUsed>>20, p.RedisKeys)
			for nextPoint <= done {
				nextPoint += step
			}
		}
	}
	res.Accepted, res.Failed = accepted.Load(), failed.Load()
	if got := res.Accepted + res.Failed; got < int64(*n) {
		res.Incomplete = fmt.Sprintf("only %d of %d client IDs attempted within %s", got, *n, *maxDur)
	}
	res.After = settle(res.Accepted+res.Failed, res.Failed)
	fmt.Fprintf(os.Stderr, "  soak: settled: broker RSS %d kB, Redis %d MB, %d keys\n", res.After.BrokerRSS, res.After.RedisUsed>>20, res.After.RedisKeys)

	// HOLD client IDs kept connected.
	var held []net.Conn
	for i := 0; i < *hold; i++ {
		c, err := holdConnection(pool.tcpAddr(uint64(*n+i)), raddr, fmt.Sprintf("soak-held-%06d", i), user, pass, 5*time.Second)
		if err != nil {
			res.ErrSample = append(res.ErrSample, "hold: "+err.Error())
			break
		}
		held = append(held, c)
	}
	res.Hold = len(held)
	res.Holding = settle(res.After.Done+int64(len(held)), res.Failed)
	for _, c := range held {
		_, _ = c.Write(disconnectPacket)
		c.Close()
	}
	res.Released = settle(res.Holding.Done, res.Failed)
	if st, err := procStatus(broker.pid(), "VmHWM"); err == nil {
		res.BrokerHWM = st["VmHWM"]
	}
	res.Alive = broker.alive()
	res.Seconds = round3(time.Since(t0).Seconds())
	b, _ := json.Marshal(res)
	_ = os.WriteFile(filepath.Join(*out, "soak.json"), append(b, '\n'), 0o644)
	fmt.Print(soakTable(res))
	return nil
}

func absI(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}

// soakTable sets the figures against the README's bounds.
func soakTable(r SoakResult) string {
	var b strings.Builder
	n := float64(r.After.Done)
	fmt.Fprintf(&b, "%d distinct client IDs connected once each (one username, sources in turn from %d addresses) in %.0f s (%.0f connects/s); %d failed; then %d more held connected. Broker alive at the end: %v.\n\n",
		r.After.Done, r.Sources, lastPoint(r).Seconds, n/max(lastPoint(r).Seconds, 0.001), r.Failed, r.Hold, r.Alive)
	if r.Incomplete != "" {
		fmt.Fprintf(&b, "**Incomplete:** %s\n\n", r.Incomplete)
	}
	b.WriteString("| connects | s | connects/s | broker RSS MB | Redis used_memory MB | Redis keys |\n|---:|---:|---:|---:|---:|---:|\n")
	row := func(label string, p SoakPoint) {
		fmt.Fprintf(&b, "| %s | %.0f | %s | %.1f | %.1f | %d |\n", label, p.Seconds, fmtF(p.ConnectsPS, 0), float64(p.BrokerRSS)/1024, float64(p.RedisUsed)/(1<<20), p.RedisKeys)
	}
	row("0 (base)", r.Base)
	for _, p := range r.Points {
		row(fmt.Sprint(p.Done), p)
	}
	row("settled", r.After)
	row(fmt.Sprintf("+%d held", r.Hold), r.Holding)
	row("held released", r.Released)
	b.WriteString("\n| measure | measured | README bound | within |\n|---|---:|---|---|\n")
	// Per client ID afterwards: seen records (0.7-1.7 KB) plus the known-sources record (~100 B per new
	// (username, source), at most known_sources_max per username: one username here).
	perID := float64(r.After.RedisUsed-r.Base.RedisUsed) / n
	known := min(n*2, float64(r.KnownMax)) // ip: and clientid: sources, capped
	lo, hi := 0.7*1024*n, 1.7*1024*n+known*100
	fmt.Fprintf(&b, "| Redis growth after %d client IDs (settled) | %.0f MB, %.0f B per client ID | %.0f–%.0f MB (0.7–1.7 KB per client ID for conflict_window, + ~100 B per new (username, source), ≤ known_sources_max %d per username) | %s |\n",
		r.After.Done, float64(r.After.RedisUsed-r.Base.RedisUsed)/(1<<20), perID, lo/(1<<20), hi/(1<<20), r.KnownMax, within(float64(r.After.RedisUsed-r.Base.RedisUsed), 0, hi))
	if r.Hold > 0 {
		perConn := float64(r.Holding.RedisUsed-r.After.RedisUsed) / float64(r.Hold)
		fmt.Fprintf(&b, "| Redis per connection while connected (%d held) | %.0f B | 1.3–3.3 KB | %s |\n", r.Hold, perConn, within(perConn, 0, 3.3*1024))
		perAfter := float64(r.Released.RedisUsed-r.After.RedisUsed) / float64(r.Hold)
		fmt.Fprintf(&b, "| Redis per client ID after those disconnected | %.0f B | 0.7–1.7 KB (+ known-sources record while under known_sources_max) | %s |\n", perAfter, within(perAfter, 0, 1.7*1024+200))
	}
	// Broker: bounded by the local tables, so its RSS must stop growing. Go's
	// collector makes RSS a sawtooth, so the peaks of the two halves of the
	// run are compared, not single samples.
	if len(r.Points) >= 4 {
		half := len(r.Points) / 2
		peak := func(ps []SoakPoint) (kb int64) {
			for _, p := range ps {
				kb = max(kb, p.BrokerRSS)
			}
			return kb
		}
		p1, p2 := peak(r.Points[:half]), peak(r.Points[half:])
		mid := r.Points[half-1].Done
		fmt.Fprintf(&b, "| broker RSS: peak over 0–%d connects, over %d–%d | %.1f MB, %.1f MB (base %.1f MB; VmHWM %.1f MB) | bounded by the local tables (failure counts 65 536 keys, known-source memo 200 000, conflict memo 200 000): no growth once they fill | %s |\n",
			mid, mid, lastPoint(r).Done, float64(p1)/1024, float64(p2)/1024, float64(r.Base.BrokerRSS)/1024, float64(r.BrokerHWM)/1024, flattening(p1, p2, mid))
	}
	return b.String()
}

func lastPoint(r SoakResult) SoakPoint {
	if len(r.Points) == 0 {
		return r.After
	}
	return r.Points[len(r.Points)-1]
}

func within(v, lo, hi float64) string {
	if v >= lo && v <= hi {
		return "yes"
	}
	return "**no**"
}

// flattening: once the first half of the run passed 400 000 connects (twice
// the largest memo), the second half's peak RSS must not exceed the first's by
// more than 10% (allocator and collector noise).
func flattening(p1, p2 int64, mid int64) string {
	if mid < 400_000 {
		return "n/a (too short for the 200 000-entry memos to fill: use SOAK_N ≥ 800000)"
	}
	if float64(p2) <= 1.1*float64(p1) {
		return "yes"
	}
	return "**no**"
}

// cmdSoakReport prints the table of a soak.json again.
func cmdSoakReport(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: soakreport <soak.json>")
	}
	b, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	var r SoakResult
	if err := json.Unmarshal(b, &r); err != nil {
		return err
	}
	fmt.Print(soakTable(r))
	return nil
}
