package e2e

import (
	"context"
	"fmt"
	"os"
	"sort"
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

// r13Skip skips a test that shows a defect unless ATKR13=1.
func r13Skip(t *testing.T, why string) {
	if os.Getenv("ATKR13") == "" {
		t.Skip("defect: " + why)
	}
}

// r13Held skips an attack that held unless ATK_LOAD=1: exercised, kept
// out of make test's time.
func r13Held(t *testing.T) {
	if os.Getenv("ATK_LOAD") != "1" {
		t.Skip("ATK_LOAD=1: exercised, holds; kept out of make test's time")
	}
}

// r13Rss is a process's VmRSS in bytes.
func r13Rss(t *testing.T, pid int) int64 {
	_, r := atkProcStat(t, pid)
	return r
}

// r13Hold connects n devices (dev<i>, pw) to b with client IDs made by id,
// from 8 workers, holding them until the test ends; it returns the
// accepted count and every CONNECT's time dial to CONNACK. mid, if set,
// runs once when device at is dialled.
func r13Hold(t *testing.T, b *testenv.Mosquitto, n int, id func(i int) string, at int, mid func()) (int64, []time.Duration) {
	var next, ok atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				if i == at && mid != nil {
					mid()
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				s := time.Now()
				c, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: b.Addr, SourceIP: fmt.Sprintf("127.13.%d.%d", i/250, 1+i%250),
					ClientID: id(i), Username: str(fmt.Sprintf("dev%d", i)), Password: str("pw")})
				el := time.Since(s)
				cancel()
				if err == nil {
					if code == accepted {
						ok.Add(1)
					}
					mu.Lock()
					lat = append(lat, el)
					mu.Unlock()
					t.Cleanup(func() { c.Close() })
				}
			}
		}()
	}
	wg.Wait()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return ok.Load(), lat
}

// r13ReleaseAfter waits until window after end for a heap release line
// beyond the first before in b's output, and returns how long after end
// it was seen (0: none within window).
func r13ReleaseAfter(b *testenv.Mosquitto, before int, end time.Time, window time.Duration) time.Duration {
	for time.Since(end) < window {
		if strings.Count(b.Output(), "heap released") > before {
			return time.Since(end)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return 0
}

func r13Pct(lat []time.Duration, p float64) time.Duration {
	if len(lat) == 0 {
		return 0
	}
	return lat[min(len(lat)-1, int(float64(len(lat))*p))].Round(time.Millisecond)
}

// TestZZR13HugeClientIDBurst: 1 500 devices hold client IDs of 60 000
// bytes each (a client chooses it; MQTT allows 65 535): 90 MB of client IDs
// pass through the plugin in one burst. The heap release must still come
// and the RSS the devices keep must be about what short IDs keep (the
// tracker keeps a fixed-size entry a client ID), and CONNECTs stay fast.
//
// Found (ATKR13=1): the release comes (0.5 s after), CONNECT p99 29 ms, but
// the plugin keeps each held client's whole client ID on the Go heap (the
// release's log: live 95.2 MB for 1 500 devices): RSS kept a device 124 KB
// with the plugin against 59 KB for Mosquitto alone with the same IDs and
// 2.2 KB with short IDs; peak 255 MB. The README's per-connection figures
// (180 bytes live) and tracking's 256-byte tracking form say nothing of it.
func TestZZR13HugeClientIDBurst(t *testing.T) {
	r13Skip(t, "a held connection's client ID (up to 64 KB) is kept whole on the plugin's Go heap: 65 KB a device more than Mosquitto alone, twice Mosquitto's own cost, no stated bound")
	const n = 1500
	e := envWithoutBroker(t)
	addDevices(t, e, n)
	res := map[string]int64{}
	for _, kind := range []string{"short", "huge", "huge-noplugin"} {
		var b *testenv.Mosquitto
		if kind == "huge-noplugin" {
			b = testenv.StartMosquitto(t, "allow_anonymous true\nlog_type all")
		} else {
			b = atkRelBroker(t, e.conf("log_type all"), true)
		}
		time.Sleep(1500 * time.Millisecond)
		idle := r13Rss(t, b.PID())
		before := strings.Count(b.Output(), "heap released")
		id := func(i int) string { return fmt.Sprintf("%s-%d-", kind, i) }
		if strings.HasPrefix(kind, "huge") {
			id = func(i int) string { s := fmt.Sprintf("huge-%d-", i); return s + strings.Repeat("x", 60000-len(s)) }
		}
		ok, lat := r13Hold(t, b, n, id, -1, nil)
		end := time.Now()
		peak := r13Rss(t, b.PID())
		var relAt time.Duration
		for time.Since(end) < 4*time.Second {
			if relAt == 0 && strings.Count(b.Output(), "heap released") > before {
				relAt = time.Since(end)
			}
			time.Sleep(50 * time.Millisecond)
		}
		after := r13Rss(t, b.PID())
		res[kind] = after - idle
		t.Logf("burst ended %s", end.Format("15:04:05.000"))
		t.Logf("%s IDs: %d/%d accepted; CONNECT p50 %v p99 %v max %v; RSS idle %.1f MB, at the end %.1f MB, 4 s later %.1f MB (%.2f KB a device); release %v after",
			kind, ok, n, r13Pct(lat, .5), r13Pct(lat, .99), r13Pct(lat, 1), float64(idle)/(1<<20), float64(peak)/(1<<20), float64(after)/(1<<20),
			float64(after-idle)/1024/n, relAt)
		for _, l := range strings.Split(b.Output(), "\n") {
			if strings.Contains(l, "heap released") || strings.Contains(l, "panic") || strings.Contains(l, "internal error") {
				t.Log(l)
			}
		}
		require.False(t, b.Exited())
		assert.EqualValues(t, n, ok)
		if kind != "huge-noplugin" {
			assert.NotZero(t, relAt, "%s: no release within 4 s", kind)
		}
		assert.Less(t, r13Pct(lat, .99), 300*time.Millisecond, "%s: CONNECT p99", kind)
	}
	t.Logf("RSS kept a device: plugin short %.2f KB, plugin huge %.2f KB, no plugin huge %.2f KB", float64(res["short"])/1024/n, float64(res["huge"])/1024/n, float64(res["huge-noplugin"])/1024/n)
	assert.Less(t, res["huge"]-res["huge-noplugin"], res["short"]+int64(n)*8192, "the plugin's share with huge client IDs is over 8 KB a device more than with short ones")
}

// TestZZR13FaultsDuringBurstAndRelease: SIGHUP to the broker in the middle
// of a burst and again while the release should be running, Redis FLUSHALL
// mid-burst and Redis restarted-like (SIGSTOP 2 s) after: the broker
// lives, the release comes, a CONNECT after is answered quickly.
func TestZZR13FaultsDuringBurstAndRelease(t *testing.T) {
	r13Held(t)
	const n = 3000
	e := envWithoutBroker(t)
	addDevices(t, e, n+10)
	b := atkRelBroker(t, e.conf("log_type all"), true)
	time.Sleep(1500 * time.Millisecond)
	before := strings.Count(b.Output(), "heap released")
	ok, lat := r13Hold(t, b, n, func(i int) string { return fmt.Sprintf("f-%d", i) }, n/2, func() {
		require.NoError(t, syscall.Kill(b.PID(), syscall.SIGHUP))
		e.redis.CLI("FLUSHALL")
	})
	end := time.Now()
	t.Logf("%d/%d accepted; CONNECT p50 %v p99 %v max %v", ok, n, r13Pct(lat, .5), r13Pct(lat, .99), r13Pct(lat, 1))
	// SIGHUP at each 100 ms for 1.5 s: lands on the release.
	for i := 0; i < 15; i++ {
		time.Sleep(100 * time.Millisecond)
		require.NoError(t, syscall.Kill(b.PID(), syscall.SIGHUP))
	}
	require.NoError(t, e.redis.Signal(syscall.SIGSTOP))
	time.Sleep(2 * time.Second)
	require.NoError(t, e.redis.Signal(syscall.SIGCONT))
	var relAt time.Duration
	for time.Since(end) < 6*time.Second && relAt == 0 {
		if strings.Count(b.Output(), "heap released") > before {
			relAt = time.Since(end)
		}
		time.Sleep(50 * time.Millisecond)
	}
	require.False(t, b.Exited(), "broker ended")
	s := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	c, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: b.Addr, ClientID: "after", Username: str("alice"), Password: str("alice-pw")})
	cancel()
	require.NoError(t, err)
	c.Close()
	t.Logf("after: code %d in %v; release %v after the burst", code, time.Since(s), relAt)
	for _, l := range strings.Split(b.Output(), "\n") {
		if strings.Contains(l, "heap released") || strings.Contains(l, "panic") || strings.Contains(l, "internal error") {
			t.Log(l)
		}
	}
	t.Logf("reload lines: %d", strings.Count(b.Output(), "reload"))
	assert.EqualValues(t, accepted, code)
	assert.NotZero(t, relAt)
	assert.Less(t, r13Pct(lat, .99), 300*time.Millisecond)
}

// TestZZR13StrangerTrickleHoldsTheRelease: after a burst of 3 000 devices
// (held), a stranger with no account sends a CONNECT every 50 ms with an
// unknown username and a 60 000-byte password, from rotating addresses:
// each refused CONNECT's garbage (the password's copies) keeps the plugin
// allocating over 1 MB a second, so the release after the devices' burst
// does not come while the trickle lasts. Without the trickle it comes
// within about 1 s (TestHeapReleasedAfterABurst).
//
// Found (ATKR13=1, R13_ONEIP=1 for one banned address): no release in the
// 8 s of the trickle, then 0.2 to 0.5 s after it stops; RSS 26.3 to 26.9 MB
// during against 24.2 to 24.6 MB after. At 100 ms (R13_GAP=100ms, 600 KB/s)
// it still holds; at 200 ms it does not.
func TestZZR13StrangerTrickleHoldsTheRelease(t *testing.T) {
	const n = 3000
	e := envWithoutBroker(t)
	addDevices(t, e, n)
	b := atkRelBroker(t, e.conf("log_type all"), true)
	time.Sleep(1500 * time.Millisecond)
	idle := r13Rss(t, b.PID())
	ok, _ := r13Hold(t, b, n, func(i int) string { return fmt.Sprintf("t-%d", i) }, -1, nil)
	before := strings.Count(b.Output(), "heap released")
	end := time.Now()
	atEnd := r13Rss(t, b.PID())
	pw := strings.Repeat("z", 60000)
	gap := 50 * time.Millisecond
	if d, err := time.ParseDuration(os.Getenv("R13_GAP")); err == nil {
		gap = d // another rate for the stranger
	}
	stop := make(chan struct{})
	var sent, refused atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(gap):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			src := fmt.Sprintf("127.14.%d.%d", (i/250)%250, 1+i%250)
			if os.Getenv("R13_ONEIP") != "" {
				src = "127.14.0.1" // one address: banned after fail_limit
			}
			c, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: b.Addr, SourceIP: src,
				ClientID: fmt.Sprintf("s-%d", i), Username: str(fmt.Sprintf("nobody%d", i)), Password: str(pw)})
			cancel()
			sent.Add(1)
			if err == nil {
				if code != accepted {
					refused.Add(1)
				}
				if c != nil {
					c.Close()
				}
			}
		}
	}()
	const window = 8 * time.Second
	relAt := r13ReleaseAfter(b, before, end, window)
	during := r13Rss(t, b.PID())
	close(stop)
	<-done
	stopped := time.Now()
	var relAfter time.Duration
	for time.Since(stopped) < 4*time.Second && relAt == 0 && relAfter == 0 {
		if strings.Count(b.Output(), "heap released") > before {
			relAfter = time.Since(stopped)
		}
		time.Sleep(50 * time.Millisecond)
	}
	after := r13Rss(t, b.PID())
	mb := func(v int64) float64 { return float64(v) / (1 << 20) }
	t.Logf("%d/%d devices; stranger: %d CONNECTs sent (%d refused) over %v; RSS idle %.1f MB, at the burst's end %.1f, at the trickle's end %.1f, after %.1f MB",
		ok, n, sent.Load(), refused.Load(), window, mb(idle), mb(atEnd), mb(during), mb(after))
	t.Logf("release during the trickle: %v after the burst (0 = none); after the trickle stopped: %v", relAt, relAfter)
	for _, l := range strings.Split(b.Output(), "\n") {
		if strings.Contains(l, "heap released") {
			t.Log(l)
		}
	}
	require.False(t, b.Exited())
	assert.NotZero(t, relAt, "no release in %v after the devices' burst while a stranger trickles refused CONNECTs at 20/s", window)
}

// TestZZR13HungRedisQueueOfHugeIDs: Redis stopped (SIGSTOP), one device's
// credentials churn connect-and-close with distinct client IDs, short or
// of 60 000 bytes: the tracker's queue (at most 65 536 events) and the
// known-sources writer's hold them until Redis answers. What the broker
// keeps must not scale with the IDs' length.
//
// Found (ATKR13=1): 2 000 closed connections with 60 000-byte IDs, Redis
// stopped: RSS +255 MB (130.7 to 132.7 KB a CONNECT; short IDs 1.9 to 2.1
// KB), the release's log "live 127.0 MB" (one whole copy of each ID held
// while Redis does not answer); given back once Redis resumes (22.0 MB 4 s
// after). At the queue's 65 536 events that is about 4 GB live.
func TestZZR13HungRedisQueueOfHugeIDs(t *testing.T) {
	const n = 1000
	e := envWithoutBroker(t)
	addDevices(t, e, 1)
	res := map[string]int64{}
	for _, kind := range []string{"short", "huge"} {
		b := atkRelBroker(t, e.conf("log_type all"), true)
		time.Sleep(1500 * time.Millisecond)
		idle := r13Rss(t, b.PID())
		require.NoError(t, e.redis.Signal(syscall.SIGSTOP))
		var next atomic.Int64
		var wg sync.WaitGroup
		var ok atomic.Int64
		s := time.Now()
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
					id := fmt.Sprintf("%s-%d-", kind, i)
					if kind == "huge" {
						id += strings.Repeat("y", 60000-len(id))
					}
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					c, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: b.Addr, SourceIP: "127.15.0.1", ClientID: id, Username: str("dev0"), Password: str("pw")})
					cancel()
					if err == nil && c != nil {
						if code == accepted {
							ok.Add(1)
						}
						c.Close()
					}
				}
			}()
		}
		wg.Wait()
		took := time.Since(s)
		time.Sleep(3 * time.Second)
		held := r13Rss(t, b.PID())
		require.NoError(t, e.redis.Signal(syscall.SIGCONT))
		res[kind] = held - idle
		t.Logf("%s: %d/%d accepted in %v with Redis stopped; RSS idle %.1f MB, 3 s after %.1f MB (%.1f KB a CONNECT)", kind, ok.Load(), n, took.Round(time.Millisecond),
			float64(idle)/(1<<20), float64(held)/(1<<20), float64(held-idle)/1024/n)
		for _, l := range strings.Split(b.Output(), "\n") {
			if strings.Contains(l, "heap released") || strings.Contains(l, "not tracked") || strings.Contains(l, "panic") {
				t.Log(l)
			}
		}
		require.False(t, b.Exited())
	}
	assert.Less(t, res["huge"], res["short"]+int64(n)*4096, "with Redis stopped, huge client IDs keep over 4 KB a CONNECT more than short ones")
}

// TestZZR13DisconnectIPv6AndIPv4: DISCONNECT now passes a client's IP to
// the tracker as 16 bytes. Clients on listeners at ::1 and 127.0.0.1
// connect and leave: neither
// stays listed live in guard:conn:<id>.
func TestZZR13DisconnectIPv6AndIPv4(t *testing.T) {
	r13Held(t)
	e := envWithoutBroker(t)
	b := testenv.StartMosquitto(t, e.conf("listener "+testenv.PortPlaceholder+" 127.0.0.1", "listener "+testenv.PortPlaceholder+" ::1", "log_type all"))
	require.True(t, b.WaitOutput("mosquitto-guard: ready", 10*time.Second))
	port := b.Addr[strings.LastIndexByte(b.Addr, ':')+1:]
	for _, c := range []struct{ id, addr string }{{"v6-one", "[::1]:" + port}, {"v4", "127.0.0.1:" + port}} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: c.addr, ClientID: c.id, Username: str("alice"), Password: str("alice-pw")})
		cancel()
		require.NoError(t, err, c.addr)
		require.EqualValues(t, accepted, code)
		time.Sleep(500 * time.Millisecond)
		live := e.redis.CLI("HLEN", "guard:conn:"+c.id)
		conn.Disconnect()
		time.Sleep(1 * time.Second)
		after := e.redis.CLI("HLEN", "guard:conn:"+c.id)
		t.Logf("%s via %s: guard:conn HLEN while live %s, 1 s after DISCONNECT %s", c.id, c.addr, strings.TrimSpace(live), strings.TrimSpace(after))
		assert.Equal(t, "1", strings.TrimSpace(live))
		assert.Equal(t, "0", strings.TrimSpace(after), "%s still listed live", c.id)
	}
	for _, l := range strings.Split(b.Output(), "\n") {
		if strings.Contains(l, "v6-one") || strings.Contains(l, "v4") {
			t.Log(l)
		}
	}
}

// TestZZR13KnownSourcesOfHugeIDs: a device's credentials with 20 distinct
// 60 000-byte client IDs: what guard:known:<username> keeps a pair must be
// about the README's 100 bytes, not the ID's length.
func TestZZR13KnownSourcesOfHugeIDs(t *testing.T) {
	r13Held(t)
	e := envWithoutBroker(t)
	b := testenv.StartMosquitto(t, e.conf("log_type all"))
	require.True(t, b.WaitOutput("mosquitto-guard: ready", 10*time.Second))
	const n = 20
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("k-%d-", i)
		id += strings.Repeat("q", 60000-len(id))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: b.Addr, ClientID: id, Username: str("alice"), Password: str("alice-pw")})
		cancel()
		require.NoError(t, err)
		require.EqualValues(t, accepted, code)
		c.Close()
	}
	time.Sleep(1500 * time.Millisecond)
	card := strings.TrimSpace(e.redis.CLI("ZCARD", "guard:known:alice"))
	mem := strings.TrimSpace(e.redis.CLI("MEMORY", "USAGE", "guard:known:alice"))
	var bytes int
	fmt.Sscan(mem, &bytes)
	t.Logf("guard:known:alice: %s members, %d bytes (%d a member)", card, bytes, bytes/max(1, n))
	assert.Less(t, bytes, n*1024, "known sources keep over 1 KB a (username, client ID) pair")
}

// TestZZR13TakeoverStormLog: two devices share one client ID and
// principal and knock each other off as fast as they can for 3 s (a
// reconnect storm) while CONNECTs of others are timed: the plugin's log
// lines about it stay few (findings folded) and others' CONNECTs fast.
func TestZZR13TakeoverStormLog(t *testing.T) {
	r13Held(t)
	e := envWithoutBroker(t)
	b := testenv.StartMosquitto(t, e.conf("log_type all"))
	require.True(t, b.WaitOutput("mosquitto-guard: ready", 10*time.Second))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var made atomic.Int64
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				c, _, err := mqttc.Dial(ctx, mqttc.Options{Addr: b.Addr, ClientID: "shared-storm", Username: str("alice"), Password: str("alice-pw")})
				cancel()
				made.Add(1)
				if err == nil && c != nil {
					time.Sleep(5 * time.Millisecond)
					c.Close()
				}
			}
		}()
	}
	go func() { time.Sleep(3 * time.Second); close(stop) }()
	_, lat, failed := atkRelProbe(b, 50*time.Millisecond, stop)
	wg.Wait()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	time.Sleep(500 * time.Millisecond)
	plugin := 0
	for _, l := range strings.Split(b.Output(), "\n") {
		if strings.Contains(l, "mosquitto-guard:") && strings.Contains(l, "shared-storm") {
			plugin++
			if plugin <= 3 {
				t.Log(l)
			}
		}
	}
	t.Logf("%d storm CONNECTs; plugin log lines naming the ID %d; probe p50 %v max %v, %d failed", made.Load(), plugin, r13Pct(lat, .5), r13Pct(lat, 1), failed)
	assert.Less(t, plugin, 20)
	assert.Less(t, r13Pct(lat, 1), 300*time.Millisecond)
}

// TestZZR13RedisRestartedDuringBurst: Redis killed halfway through a burst
// of 3 000 held devices and started again 1 s after it: the broker lives,
// CONNECTs stay fast, the release comes, and a CONNECT after is accepted.
func TestZZR13RedisRestartedDuringBurst(t *testing.T) {
	r13Held(t)
	const n = 3000
	e := envWithoutBroker(t)
	addDevices(t, e, n)
	b := atkRelBroker(t, e.conf("log_type all"), true)
	time.Sleep(1500 * time.Millisecond)
	before := strings.Count(b.Output(), "heap released")
	ok, lat := r13Hold(t, b, n, func(i int) string { return fmt.Sprintf("rr-%d", i) }, n/2, func() { e.redis.Kill() })
	end := time.Now()
	t.Logf("%d/%d accepted, Redis killed at the half; CONNECT p50 %v p99 %v max %v", ok, n, r13Pct(lat, .5), r13Pct(lat, .99), r13Pct(lat, 1))
	time.Sleep(time.Second)
	e.redis.Restart()
	var relAt time.Duration
	for time.Since(end) < 5*time.Second && relAt == 0 {
		if strings.Count(b.Output(), "heap released") > before {
			relAt = time.Since(end)
		}
		time.Sleep(50 * time.Millisecond)
	}
	require.False(t, b.Exited())
	time.Sleep(2 * time.Second)
	s := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	c, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: b.Addr, ClientID: "after-rr", Username: str("alice"), Password: str("alice-pw")})
	cancel()
	require.NoError(t, err)
	c.Close()
	live := strings.TrimSpace(e.redis.CLI("SCARD", "guard:brokerconns:vm"))
	t.Logf("release %v after the burst; after Redis's restart a CONNECT %d in %v; keys in Redis %s", relAt, code, time.Since(s), strings.TrimSpace(e.redis.CLI("DBSIZE")))
	_ = live
	for _, l := range strings.Split(b.Output(), "\n") {
		if strings.Contains(l, "mosquitto-guard:") && !strings.Contains(l, "rr-") {
			t.Log(l)
		}
	}
	assert.EqualValues(t, accepted, code)
	assert.NotZero(t, relAt)
	assert.Less(t, r13Pct(lat, .99), 300*time.Millisecond)
}

// TestZZR13StrangerPacesReleases: a stranger with no account, from one
// address, sends 120 refused CONNECTs with 60 000-byte passwords, waits
// 1.3 s, and again, for 12 s: each round is a burst the plugin releases
// after. Counted: the releases logged at the broker's default log types
// (no log_type line) and the broker's CPU. Held: 5 to 6 releases in 12.4
// s (one each 2 to 3 s, 24 a minute; each 2 to 10 ms), the broker 4.8% of a
// core, the releases' lines 5 of the 3 289 the broker logged (Mosquitto's
// own lines for the refusals are the rest). The line is not in the
// README's Log lines.
func TestZZR13StrangerPacesReleases(t *testing.T) {
	r13Held(t)
	e := envWithoutBroker(t)
	b := atkRelBroker(t, e.conf(), true)
	time.Sleep(1500 * time.Millisecond)
	before := strings.Count(b.Output(), "heap released")
	cpu0, _ := atkProcStat(t, b.PID())
	pw := strings.Repeat("z", 60000)
	s := time.Now()
	sent := 0
	for time.Since(s) < 12*time.Second {
		for i := 0; i < 120; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			c, _, err := mqttc.Dial(ctx, mqttc.Options{Addr: b.Addr, SourceIP: "127.16.0.1", ClientID: fmt.Sprintf("p-%d", sent), Username: str(fmt.Sprintf("nobody%d", sent)), Password: str(pw)})
			cancel()
			sent++
			if err == nil && c != nil {
				c.Close()
			}
		}
		time.Sleep(1300 * time.Millisecond)
	}
	el := time.Since(s)
	cpu1, _ := atkProcStat(t, b.PID())
	rel := strings.Count(b.Output(), "heap released") - before
	lines := strings.Count(b.Output(), "\n")
	t.Logf("%d refused CONNECTs in %v; %d releases logged at the default log types (%.1f a minute); broker CPU %v (%.1f%% of a core); %d log lines in all",
		sent, el.Round(time.Millisecond), rel, float64(rel)/el.Minutes(), cpu1-cpu0, 100*(cpu1-cpu0).Seconds()/el.Seconds(), lines)
	for _, l := range strings.Split(b.Output(), "\n") {
		if strings.Contains(l, "heap released") {
			t.Log(l)
		}
	}
	assert.LessOrEqual(t, float64(rel), el.Seconds()+1, "more than one release a second")
}
