package e2e

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// atk15Skip skips unless ATK15=1 or ATK_LOAD=1 (hostile test of the
// memory and release defences, 2026-12-03; each 20 to 45 s).
func atk15Skip(t *testing.T) {
	if os.Getenv("ATK15") == "" && os.Getenv("ATK_LOAD") == "" {
		t.Skip("ATK15=1 or ATK_LOAD=1: hostile test of the memory and release defences, 20 to 45 s")
	}
}

// atk15Long is 60 000 bytes: a stranger's client ID, username, password.
var atk15Long = strings.Repeat("q", 59990)

// atk15Huge is one CONNECT with a 60 000-byte client ID, username and
// password (tagged i) from src; it returns the CONNACK code (0xff: no
// answer) and the time dial to CONNACK.
func atk15Huge(b *testenv.Mosquitto, src string, i int64, user, pw string) (byte, time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if user == "" {
		user = fmt.Sprintf("n%08d", i) + atk15Long
	}
	if pw == "" {
		pw = fmt.Sprintf("p%08d", i) + atk15Long
	}
	s := time.Now()
	c, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: b.Addr, SourceIP: src,
		ClientID: fmt.Sprintf("s%08d", i) + atk15Long, Username: str(user), Password: str(pw)})
	el := time.Since(s)
	if c != nil {
		c.Close()
	}
	if err != nil {
		return 0xff, el
	}
	return code, el
}

// atk15Load is a stranger's trickle (perSec huge refused CONNECTs a
// second, from rotating addresses in 127.15/16) and a probe (alice, a
// cache hit, every 100 ms), until stop.
type atk15Load struct {
	b        *testenv.Mosquitto
	seq      atomic.Int64
	sent     atomic.Int64
	noAnswer atomic.Int64
	mu       sync.Mutex
	probe    []time.Duration
	probeBad int
	stranger []time.Duration
	stop     chan struct{}
	wg       sync.WaitGroup
}

func atk15Start(b *testenv.Mosquitto, perSec int) *atk15Load {
	l := &atk15Load{b: b, stop: make(chan struct{})}
	if perSec > 0 {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			tick := time.NewTicker(time.Second / time.Duration(perSec))
			defer tick.Stop()
			for {
				select {
				case <-l.stop:
					return
				case <-tick.C:
				}
				l.wg.Add(1)
				go func() {
					defer l.wg.Done()
					l.huge()
				}()
			}
		}()
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for i := 0; ; i++ {
			select {
			case <-l.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			s := time.Now()
			c, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: b.Addr, SourceIP: "127.15.250.1",
				ClientID: "probe-" + strconv.Itoa(i), Username: str("alice"), Password: str("alice-pw")})
			el := time.Since(s)
			cancel()
			l.mu.Lock()
			l.probe = append(l.probe, el)
			if err != nil || code != accepted {
				l.probeBad++
			}
			l.mu.Unlock()
			if c != nil {
				c.Close()
			}
		}
	}()
	return l
}

// huge sends one of the stranger's CONNECTs.
func (l *atk15Load) huge() {
	i := l.seq.Add(1)
	code, el := atk15Huge(l.b, fmt.Sprintf("127.15.%d.%d", (i/250)%250, 1+i%250), i, "", "")
	l.sent.Add(1)
	if code == 0xff {
		l.noAnswer.Add(1)
	}
	l.mu.Lock()
	l.stranger = append(l.stranger, el)
	l.mu.Unlock()
}

// burst sends n of the stranger's CONNECTs at once from 8 workers.
func (l *atk15Load) burst(n int) {
	var wg sync.WaitGroup
	var k atomic.Int64
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k.Add(1) <= int64(n) {
				l.huge()
			}
		}()
	}
	wg.Wait()
}

// end stops the load and reports it.
func (l *atk15Load) end(t *testing.T) (probeMax time.Duration, probeBad int) {
	close(l.stop)
	l.wg.Wait()
	sort.Slice(l.probe, func(i, j int) bool { return l.probe[i] < l.probe[j] })
	sort.Slice(l.stranger, func(i, j int) bool { return l.stranger[i] < l.stranger[j] })
	t.Logf("stranger: %d huge CONNECTs, %d unanswered, p50 %v max %v; probe (alice): %d CONNECTs, %d not accepted, p50 %v p99 %v max %v",
		l.sent.Load(), l.noAnswer.Load(), r13Pct(l.stranger, .5), r13Pct(l.stranger, 1),
		len(l.probe), l.probeBad, r13Pct(l.probe, .5), r13Pct(l.probe, .99), r13Pct(l.probe, 1))
	return r13Pct(l.probe, 1), l.probeBad
}

// atk15Lines logs b's lines holding any of subs.
func atk15Log(t *testing.T, b *testenv.Mosquitto, subs ...string) {
	for _, l := range strings.Split(b.Output(), "\n") {
		for _, s := range subs {
			if strings.Contains(l, s) {
				t.Log(l)
				break
			}
		}
	}
}

const atk15MB = 1 << 20

// Attack 1: SIGHUPs of the broker during a stranger's trickle of refused
// CONNECTs with 60 000-byte client IDs, usernames and passwords (12 a
// second, about 1.5 MB/s of garbage), one of them with a burst of 100 such
// CONNECTs at once, after 3 000 devices connected (held). README: the
// release waits 10 s at most below 4 MB/s after the last burst; a SIGHUP
// re-checks every client off nothing slow; nothing hangs the broker.
func TestZZAtk15SighupDuringHugeTrickle(t *testing.T) {
	atk15Skip(t)
	const n = 3000
	e := envWithoutBroker(t)
	addDevices(t, e, n)
	b := atkRelBroker(t, e.conf("log_type all"), true)
	time.Sleep(1500 * time.Millisecond)
	ok, _ := r13Hold(t, b, n, func(i int) string { return fmt.Sprintf("h-%d", i) }, -1, nil)
	before := strings.Count(b.Output(), "heap released")
	reloads0 := strings.Count(b.Output(), "Reloading config")
	end := time.Now()
	rss0 := r13Rss(t, b.PID())
	l := atk15Start(b, 12)
	var last time.Time
	for k := 0; k < 4; k++ {
		time.Sleep(time.Second)
		require.NoError(t, syscall.Kill(b.PID(), syscall.SIGHUP))
		if k == 2 {
			l.burst(100)
		}
		last = time.Now()
		time.Sleep(time.Second)
	}
	var relAt time.Duration
	for time.Since(last) < 14*time.Second && relAt == 0 {
		if strings.Count(b.Output(), "heap released") > before {
			relAt = time.Since(end)
		}
		time.Sleep(50 * time.Millisecond)
	}
	rss1 := r13Rss(t, b.PID())
	probeMax, probeBad := l.end(t)
	reloads := strings.Count(b.Output(), "Reloading config") - reloads0
	t.Logf("%d/%d devices; 4 SIGHUPs (%d reloads logged), the last disturbance %v after the burst; release %v after the burst (0: none within 14 s of the last); RSS %.1f -> %.1f MB",
		ok, n, reloads, last.Sub(end).Round(time.Millisecond), relAt.Round(time.Millisecond), float64(rss0)/atk15MB, float64(rss1)/atk15MB)
	atk15Log(t, b, "heap released", "panic", "internal error", "password_file")
	require.False(t, b.Exited(), "broker ended")
	assert.Equal(t, 4, reloads, "a SIGHUP not reloaded")
	assert.NotZero(t, relAt, "no release within 14 s of the last SIGHUP and burst under a trickle below 4 MB/s")
	assert.Less(t, relAt-last.Sub(end), 11500*time.Millisecond, "README: the release put off by 10 s at most (and a tick) below 4 MB a second")
	assert.Zero(t, probeBad, "alice refused or unanswered")
	assert.Less(t, probeMax, 500*time.Millisecond, "a cache-hit CONNECT waited long")
	assert.Less(t, rss1-rss0, int64(40*atk15MB), "RSS grew over 40 MB under the trickle")
}

// Attack 2: FLUSHALL every 400 ms in the middle of an attack: a guesser
// of alice's password from one address with 60 000-byte client IDs, a
// stranger's trickle of huge unknown-user CONNECTs, and 1 000 devices
// held (their known sources rewritten after each loss). README: a ban
// lost in a FLUSHALL is not lifted on the broker that counted it (no
// fresh checks: at most fail_limit + 1 in a fail_window), memory bounded,
// the broker answers.
func TestZZAtk15FlushallDuringAttack(t *testing.T) {
	atk15Skip(t)
	const n = 1000
	maddr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	e := envWithoutBroker(t)
	addDevices(t, e, n)
	b := atkRelBroker(t, e.conf("log_type all", "auth_opt_metrics_addr "+maddr, "auth_opt_fail_window 5m"), true)
	time.Sleep(1500 * time.Millisecond)
	ok, _ := r13Hold(t, b, n, func(i int) string { return fmt.Sprintf("fl-%d", i) }, -1, nil)
	rss0 := r13Rss(t, b.PID())
	l := atk15Start(b, 12)
	stopFlush := make(chan struct{})
	flushed := make(chan int)
	go func() {
		k := 0
		defer func() { flushed <- k }()
		for {
			select {
			case <-stopFlush:
				return
			case <-time.After(400 * time.Millisecond):
			}
			if _, err := e.redis.TryCLI("FLUSHALL"); err == nil {
				k++
			}
		}
	}()
	const guesses = 120
	codes := map[byte]int{}
	s := time.Now()
	for i := 0; i < guesses; i++ {
		code, _ := atk15Huge(b, "127.15.251.1", int64(1e6+i), "alice", "guess"+strconv.Itoa(i))
		codes[code]++
		time.Sleep(50 * time.Millisecond)
	}
	// The right password from the guesser's address: still refused.
	right, _ := atk15Huge(b, "127.15.251.1", 2e6, "alice", "alice-pw")
	el := time.Since(s)
	close(stopFlush)
	k := <-flushed
	rss1 := r13Rss(t, b.PID())
	probeMax, probeBad := l.end(t)
	fams := scrape(t, maddr)
	checked := value(fams, "mosquitto_guard_connects_total", "result", "refused", "rule", "bad-password")
	t.Logf("%d/%d devices; %d guesses in %v, %d FLUSHALLs; codes %v; password checks refused (bad-password) %v; right password after: %d; RSS %.1f -> %.1f MB",
		ok, n, guesses, el.Round(time.Millisecond), k, codes, checked, right, float64(rss0)/atk15MB, float64(rss1)/atk15MB)
	atk15Log(t, b, "panic", "internal error", "event=banned")
	require.False(t, b.Exited(), "broker ended")
	assert.LessOrEqual(t, checked, 7.0, "README: fail_limit + 1 password checks per fail_window (the guesser's plus at most one)")
	assert.NotEqual(t, accepted, right, "the guesser's address let in after the flushes")
	assert.Zero(t, probeBad, "alice refused or unanswered")
	assert.Less(t, probeMax, 500*time.Millisecond, "a cache-hit CONNECT waited long")
	assert.Less(t, rss1-rss0, int64(40*atk15MB), "RSS grew over 40 MB")
}

// Attack 3: Redis stopped (SIGSTOP) at the end of 3 000 devices' burst,
// when the release is due, with the stranger's trickle of huge CONNECTs
// going on; then killed while stopped, and restarted empty. README: the
// release waits for the workers' trims at most 1 s and then for the slow
// rule's 10 s; CONNECTs of a known user answered from the replica
// (redis_timeout + 150 ms); memory bounded (the queues hold at most 1 KB
// an event of the strings).
func TestZZAtk15RedisStoppedThenKilledAroundTheRelease(t *testing.T) {
	atk15Skip(t)
	const n = 3000
	e := envWithoutBroker(t)
	addDevices(t, e, n)
	b := atkRelBroker(t, e.conf("log_type all"), true)
	time.Sleep(1500 * time.Millisecond)
	before := strings.Count(b.Output(), "heap released")
	ok, _ := r13Hold(t, b, n, func(i int) string { return fmt.Sprintf("rs-%d", i) }, -1, nil)
	require.NoError(t, e.redis.Signal(syscall.SIGSTOP))
	end := time.Now()
	rss0 := r13Rss(t, b.PID())
	l := atk15Start(b, 12)
	relAt := r13ReleaseAfter(b, before, end, 4*time.Second)
	e.redis.Kill()
	time.Sleep(2 * time.Second)
	e.redis.Restart()
	killed := time.Now()
	if relAt == 0 {
		relAt = r13ReleaseAfter(b, before, end, 18*time.Second)
	}
	time.Sleep(2 * time.Second)
	rss1 := r13Rss(t, b.PID())
	probeMax, probeBad := l.end(t)
	t.Logf("%d/%d devices; Redis stopped at the burst's end, killed and restarted %v after; release %v after the burst (0: none in 18 s); RSS %.1f -> %.1f MB",
		ok, n, killed.Sub(end).Round(time.Millisecond), relAt.Round(time.Millisecond), float64(rss0)/atk15MB, float64(rss1)/atk15MB)
	atk15Log(t, b, "heap released", "panic", "internal error", "redis is", "Redis")
	require.False(t, b.Exited(), "broker ended")
	assert.NotZero(t, relAt, "no release in 18 s after the burst with Redis stopped then restarted")
	assert.Zero(t, probeBad, "alice refused or unanswered")
	assert.Less(t, probeMax, 250*time.Millisecond, "README: redis_timeout + 150 ms")
	assert.Less(t, rss1-rss0, int64(40*atk15MB), "RSS grew over 40 MB")
}

// Attack 4: GOGC=off and GOMEMLIMIT=64MiB in the broker's environment
// (README, Installing and Known limits). 3 000 devices' burst, then the
// stranger's trickle and, 3 s in, a burst of 200 huge CONNECTs (25 MB).
// README: one collection after each burst the setting would not have run,
// at most a hundredth of a core; the heap as GOMEMLIMIT lets it; and the
// release put off by 10 s at most below 4 MB a second.
//
// Found (2026-12-03): no release within 14 s of the stranger's burst (RSS
// 43.1 MB after the devices, 78.2 MB at the end), the slow wait having
// begun just before the burst, failed its 10 s on the burst and begun again
// from nothing; with the wait judged on a sliding window, 10.5 s after it
// (RSS back to 27.8 MB). The same with Go's defaults:
// TestZZAtk15StrangerBurstInTrickle.
func TestZZAtk15GOGCOffMemLimit(t *testing.T) {
	atk15Skip(t)
	atk15BurstInTrickle(t, true)
}

// TestZZAtk15StrangerBurstInTrickle: attack 4 with Go's defaults.
func TestZZAtk15StrangerBurstInTrickle(t *testing.T) {
	atk15Skip(t)
	atk15BurstInTrickle(t, false)
}

func atk15BurstInTrickle(t *testing.T, gogcOff bool) {
	const n = 3000
	const limit = 64 << 20
	maddr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	e := envWithoutBroker(t)
	addDevices(t, e, n)
	if gogcOff {
		t.Setenv("GOGC", "off")
		t.Setenv("GOMEMLIMIT", strconv.Itoa(limit))
	}
	b := atkRelBroker(t, e.conf("log_type all", "auth_opt_metrics_addr "+maddr), true)
	time.Sleep(1500 * time.Millisecond)
	fams := scrape(t, maddr)
	if gogcOff {
		require.EqualValues(t, limit, value(fams, "go_gc_gomemlimit_bytes"), "GOMEMLIMIT not seen by the plugin")
		// GOGC=off: runtime/metrics gives -1 as a uint64, as client_golang's
		// collector exposes it too (2^64 - 1).
		require.Contains(t, []float64{-1, 1 << 64}, value(fams, "go_gc_gogc_percent"), "GOGC=off not seen by the plugin")
	}
	before := strings.Count(b.Output(), "heap released")
	s := time.Now()
	cpu0, _ := atkProcStat(t, b.PID())
	var maxHeap, maxSys float64
	stopScrape := make(chan struct{})
	scraped := make(chan struct{})
	go func() {
		defer close(scraped)
		for {
			select {
			case <-stopScrape:
				return
			case <-time.After(200 * time.Millisecond):
			}
			f := scrape(t, maddr)
			maxHeap = max(maxHeap, value(f, "go_memstats_heap_alloc_bytes"))
			maxSys = max(maxSys, value(f, "go_memstats_sys_bytes"))
		}
	}()
	ok, _ := r13Hold(t, b, n, func(i int) string { return fmt.Sprintf("gc-%d", i) }, -1, nil)
	end := time.Now()
	rss0 := r13Rss(t, b.PID())
	rel1 := r13ReleaseAfter(b, before, end, 4*time.Second)
	l := atk15Start(b, 12)
	time.Sleep(3 * time.Second)
	l.burst(200)
	mid := strings.Count(b.Output(), "heap released")
	bend := time.Now()
	rel2 := r13ReleaseAfter(b, mid, bend, 14*time.Second)
	probeMax, probeBad := l.end(t)
	close(stopScrape)
	<-scraped
	cpu1, rss1 := atkProcStat(t, b.PID())
	el := time.Since(s)
	var cost time.Duration
	for _, c := range atkRelCosts(b.Output()) {
		cost += c
	}
	rels := strings.Count(b.Output(), "heap released") - before
	t.Logf("GOGC=off and GOMEMLIMIT=%d MiB: %v; %d/%d devices; release %v after the devices' burst, %v after the stranger's burst; %d releases in %v costing %v (%.2f%% of a core); broker CPU %v; Go heap at most %.1f MB, Go sys at most %.1f MB; RSS %.1f -> %.1f MB",
		limit>>20, gogcOff, ok, n, rel1.Round(time.Millisecond), rel2.Round(time.Millisecond), rels, el.Round(time.Millisecond), cost, 100*cost.Seconds()/el.Seconds(),
		cpu1-cpu0, maxHeap/atk15MB, maxSys/atk15MB, float64(rss0)/atk15MB, float64(rss1)/atk15MB)
	atk15Log(t, b, "heap released", "panic", "internal error")
	require.False(t, b.Exited(), "broker ended")
	assert.NotZero(t, rel2, "no release within 14 s of the stranger's burst")
	assert.Less(t, rel2, 11500*time.Millisecond, "README: the release put off by 10 s at most (and a tick) below 4 MB a second")
	assert.Less(t, cost.Seconds(), el.Seconds()/100, "the releases took over a hundredth of a core")
	if gogcOff {
		assert.Less(t, maxHeap, float64(limit), "the Go heap passed GOMEMLIMIT")
	}
	assert.Zero(t, probeBad, "alice refused or unanswered")
	assert.Less(t, probeMax, 500*time.Millisecond, "a cache-hit CONNECT waited long")
}

// Attack 5: SIGHUPs with 1 500 devices holding 60 000-byte client IDs
// (README, Known limits: a live connection's long client ID costs the
// plugin its length; Reloads: Mosquitto re-checks every client after a
// SIGHUP, the cache spares the hashes). Each re-check hands the plugin the
// client's whole ID again. Measured: the broker thread's stall (a cache-hit
// probe every 100 ms), the RSS's peak and what is kept after three
// SIGHUPs, the release after each. Held (2026-12-03): probe max 95 ms, RSS
// 197.4 MB before, peak 286.8 (a walk's garbage: one copy of each ID),
// 199.8 after; a release about a second after each SIGHUP (live 95.3 MB).
func TestZZAtk15SighupWithHugeIDsHeld(t *testing.T) {
	atk15Skip(t)
	const n = 1500
	e := envWithoutBroker(t)
	addDevices(t, e, n)
	b := atkRelBroker(t, e.conf("log_type all"), true)
	time.Sleep(1500 * time.Millisecond)
	ok, _ := r13Hold(t, b, n, func(i int) string { s := fmt.Sprintf("hh-%d-", i); return s + strings.Repeat("x", 60000-len(s)) }, -1, nil)
	time.Sleep(2 * time.Second) // the devices' release
	rss0 := r13Rss(t, b.PID())
	l := atk15Start(b, 0)
	before := strings.Count(b.Output(), "heap released")
	var peak int64
	for k := 0; k < 3; k++ {
		require.NoError(t, syscall.Kill(b.PID(), syscall.SIGHUP))
		for i := 0; i < 20; i++ {
			time.Sleep(100 * time.Millisecond)
			peak = max(peak, r13Rss(t, b.PID()))
		}
	}
	rels := strings.Count(b.Output(), "heap released") - before
	rss1 := r13Rss(t, b.PID())
	probeMax, probeBad := l.end(t)
	t.Logf("%d/%d devices with 60 000-byte IDs; 3 SIGHUPs 2 s apart: RSS %.1f MB before, peak %.1f, after %.1f MB; %d releases",
		ok, n, float64(rss0)/atk15MB, float64(peak)/atk15MB, float64(rss1)/atk15MB, rels)
	atk15Log(t, b, "heap released", "panic", "internal error", "Reloading")
	require.False(t, b.Exited(), "broker ended")
	assert.Equal(t, 3, strings.Count(b.Output(), "Reloading config"), "a SIGHUP not reloaded")
	assert.Zero(t, probeBad, "alice refused or unanswered")
	assert.Less(t, probeMax, 500*time.Millisecond, "a cache-hit CONNECT waited long")
	assert.GreaterOrEqual(t, rels, 3, "a release after each SIGHUP's walk")
	assert.Less(t, rss1-rss0, int64(20*atk15MB), "RSS kept after the SIGHUPs")
}

// Attack 2b: a FLUSHALL storm (every 300 ms for 6 s) with 1 500 devices
// holding 60 000-byte client IDs: after each loss the plugin writes again
// the known sources of every connection it holds (README, Automatic bans:
// one pipelined round trip per 256 connections, off the broker thread),
// by their client IDs' tracking forms (at most 256 bytes). Measured: the
// RSS kept, the broker thread (a cache-hit probe every 100 ms), every
// device's source back in Redis after the storm.
func TestZZAtk15FlushStormWithHugeIDsHeld(t *testing.T) {
	atk15Skip(t)
	const n = 1500
	e := envWithoutBroker(t)
	addDevices(t, e, n)
	b := atkRelBroker(t, e.conf("log_type all"), true)
	time.Sleep(1500 * time.Millisecond)
	id := func(i int) string { s := fmt.Sprintf("fh-%d-", i); return s + strings.Repeat("x", 60000-len(s)) }
	ok, _ := r13Hold(t, b, n, id, -1, nil)
	time.Sleep(2 * time.Second)
	rss0 := r13Rss(t, b.PID())
	l := atk15Start(b, 0)
	var peak int64
	flushes := 0
	for s := time.Now(); time.Since(s) < 6*time.Second; flushes++ {
		e.redis.CLI("FLUSHALL")
		time.Sleep(300 * time.Millisecond)
		peak = max(peak, r13Rss(t, b.PID()))
	}
	var known int
	eventually(t, 10*time.Second, func() bool {
		known = 0
		for _, i := range []int{0, n / 2, n - 1} {
			if e.redis.CLI("ZSCORE", fmt.Sprintf("guard:known:dev%d", i), "clientid:"+tracked(id(i))) != "" {
				known++
			}
		}
		return known == 3
	}, "a held device's source not written again after the storm")
	time.Sleep(2 * time.Second)
	rss1 := r13Rss(t, b.PID())
	probeMax, probeBad := l.end(t)
	t.Logf("%d/%d devices with 60 000-byte IDs; %d FLUSHALLs in 6 s: RSS %.1f MB before, peak %.1f, after %.1f MB; Redis keys after %s",
		ok, n, flushes, float64(rss0)/atk15MB, float64(peak)/atk15MB, float64(rss1)/atk15MB, strings.TrimSpace(e.redis.CLI("DBSIZE")))
	atk15Log(t, b, "heap released", "panic", "internal error")
	require.False(t, b.Exited(), "broker ended")
	assert.Zero(t, probeBad, "alice refused or unanswered")
	assert.Less(t, probeMax, 500*time.Millisecond, "a cache-hit CONNECT waited long")
	assert.Less(t, rss1-rss0, int64(20*atk15MB), "RSS kept after the storm")
	assert.Less(t, peak-rss0, int64(40*atk15MB), "RSS during the storm")
}

// Attack 4b: GOGC=off and GOMEMLIMIT=64MiB, and 1 500 devices holding
// 60 000-byte client IDs: the plugin's live heap (about 95 MB, README,
// Known limits) above the limit, where Go collects without pause while
// anything allocates (its limiter caps that at half the CPU). Measured:
// the devices' burst's CONNECT times, the broker's CPU while idle after,
// a cache-hit probe every 100 ms, the release. Held (2026-12-03): burst
// 2.74 s (CPU 2.48 s), CONNECT p99 33 ms, no release (nothing above the
// limit to give back), then 8.1% of a core with the probe; with Go's
// defaults (ATK15_DEFAULT_GC=1) 1.27 s (CPU 1.19 s), p99 20 ms, 3.8%.
func TestZZAtk15MemLimitUnderTheLiveHeap(t *testing.T) {
	atk15Skip(t)
	const n = 1500
	e := envWithoutBroker(t)
	addDevices(t, e, n)
	if os.Getenv("ATK15_DEFAULT_GC") == "" {
		t.Setenv("GOGC", "off")
		t.Setenv("GOMEMLIMIT", strconv.Itoa(64<<20))
	}
	b := atkRelBroker(t, e.conf("log_type all"), true)
	time.Sleep(1500 * time.Millisecond)
	before := strings.Count(b.Output(), "heap released")
	cpu0, _ := atkProcStat(t, b.PID())
	s := time.Now()
	ok, lat := r13Hold(t, b, n, func(i int) string { s := fmt.Sprintf("ml-%d-", i); return s + strings.Repeat("x", 60000-len(s)) }, -1, nil)
	burst := time.Since(s)
	cpu1, _ := atkProcStat(t, b.PID())
	end := time.Now()
	relAt := r13ReleaseAfter(b, before, end, 4*time.Second)
	l := atk15Start(b, 0)
	time.Sleep(5 * time.Second)
	cpu2, rss := atkProcStat(t, b.PID())
	idle := time.Since(end)
	probeMax, probeBad := l.end(t)
	t.Logf("GOGC=off GOMEMLIMIT=64MiB (not with ATK15_DEFAULT_GC=1): %d/%d devices with 60 000-byte IDs in %v (CPU %v); CONNECT p50 %v p99 %v max %v; release %v after; then %v with a probe every 100 ms: CPU %v (%.1f%% of a core); RSS %.1f MB",
		ok, n, burst.Round(time.Millisecond), cpu1-cpu0, r13Pct(lat, .5), r13Pct(lat, .99), r13Pct(lat, 1), relAt.Round(time.Millisecond),
		idle.Round(time.Millisecond), cpu2-cpu1, 100*(cpu2-cpu1).Seconds()/idle.Seconds(), float64(rss)/atk15MB)
	atk15Log(t, b, "heap released", "panic", "internal error")
	require.False(t, b.Exited(), "broker ended")
	assert.EqualValues(t, n, ok)
	assert.Zero(t, probeBad, "alice refused or unanswered")
	assert.Less(t, probeMax, 500*time.Millisecond, "a cache-hit CONNECT waited long")
	assert.Less(t, (cpu2 - cpu1).Seconds(), idle.Seconds()/10, "the broker over a tenth of a core with a probe every 100 ms")
}

// Attack 3b: SIGHUP the moment Redis stops (SIGSTOP), 1 000 devices held,
// clientid_conflict deny (a Redis round trip on the broker thread per
// CONNECT, bounded by redis_timeout) and the stranger's trickle. Mosquitto
// re-checks every client after the reload; README: the plugin never makes
// the broker wait on a dead Redis (any timeout marks it down at once), a
// reload's re-check is not a CONNECT. Measured: the probe's and a held
// client's PING's longest wait.
func TestZZAtk15SighupAsRedisStopsUnderDeny(t *testing.T) {
	atk15Skip(t)
	const n = 1000
	e := envWithoutBroker(t)
	addDevices(t, e, n)
	b := atkRelBroker(t, e.conf("log_type all", "auth_opt_clientid_conflict deny"), true)
	time.Sleep(1500 * time.Millisecond)
	ok, _ := r13Hold(t, b, n, func(i int) string { return fmt.Sprintf("sd-%d", i) }, -1, nil)
	pinger, code := atk15Dial(t, b, "pinger")
	require.EqualValues(t, accepted, code)
	time.Sleep(time.Second)
	l := atk15Start(b, 12)
	time.Sleep(500 * time.Millisecond)
	require.NoError(t, e.redis.Signal(syscall.SIGSTOP))
	defer func() { _ = e.redis.Signal(syscall.SIGCONT) }()
	require.NoError(t, syscall.Kill(b.PID(), syscall.SIGHUP))
	var pings []time.Duration
	for k := 0; k < 20; k++ {
		s := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := pinger.Ping(ctx)
		cancel()
		require.NoError(t, err, "no PINGRESP within 10 s")
		pings = append(pings, time.Since(s))
		time.Sleep(100 * time.Millisecond)
	}
	require.NoError(t, syscall.Kill(b.PID(), syscall.SIGHUP)) // again, Redis marked down by now
	time.Sleep(time.Second)
	require.NoError(t, e.redis.Signal(syscall.SIGCONT))
	time.Sleep(time.Second)
	probeMax, probeBad := l.end(t)
	sort.Slice(pings, func(i, j int) bool { return pings[i] < pings[j] })
	t.Logf("%d/%d devices; Redis stopped and SIGHUP at once: held client's PING p50 %v max %v", ok, n, r13Pct(pings, .5), r13Pct(pings, 1))
	atk15Log(t, b, "panic", "internal error", "Reloading", "redis", "Redis")
	require.False(t, b.Exited(), "broker ended")
	assert.Less(t, probeMax, time.Second, "a CONNECT waited over a second")
	assert.Less(t, r13Pct(pings, 1), time.Second, "a held client's PING waited over a second")
	t.Logf("probe not accepted: %d", probeBad)
}

// atk15Dial connects alice with client ID id from 127.15.252.1, held until
// the test ends.
func atk15Dial(t *testing.T, b *testenv.Mosquitto, id string) (*mqttc.Conn, byte) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: b.Addr, SourceIP: "127.15.252.1", ClientID: id, Username: str("alice"), Password: str("alice-pw")})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c, code
}

// Attack 2c: the username throttle through a FLUSHALL storm: guesses of
// alice's password, each from another address (under fail_limit each)
// with a 60 000-byte client ID, while Redis is flushed every 400 ms.
// README: a broker's own count of the username decides when Redis lost
// it; no more than username_fail_limit + 1 checked per fail_window here.
func TestZZAtk15UsernameThrottleThroughFlushStorm(t *testing.T) {
	atk15Skip(t)
	maddr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	e := envWithoutBroker(t)
	b := atkRelBroker(t, e.conf("log_type all", "auth_opt_metrics_addr "+maddr, "auth_opt_fail_window 5m", "auth_opt_username_fail_limit 5"), true)
	stop := make(chan struct{})
	flushed := make(chan int)
	go func() {
		k := 0
		defer func() { flushed <- k }()
		for {
			select {
			case <-stop:
				return
			case <-time.After(400 * time.Millisecond):
			}
			if _, err := e.redis.TryCLI("FLUSHALL"); err == nil {
				k++
			}
		}
	}()
	codes := map[byte]int{}
	for i := 0; i < 100; i++ {
		code, _ := atk15Huge(b, fmt.Sprintf("127.15.253.%d", 1+i), int64(3e6+i), "alice", "guess"+strconv.Itoa(i))
		codes[code]++
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	k := <-flushed
	checked := value(scrape(t, maddr), "mosquitto_guard_connects_total", "result", "refused", "rule", "bad-password")
	t.Logf("100 guesses of alice from 100 addresses, %d FLUSHALLs: codes %v; password checks refused %v", k, codes, checked)
	atk15Log(t, b, "panic", "internal error", "throttle")
	require.False(t, b.Exited(), "broker ended")
	assert.LessOrEqual(t, checked, 7.0, "README: username_fail_limit + 1 checks per fail_window on one broker")
}
