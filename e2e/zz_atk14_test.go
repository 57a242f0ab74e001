package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
)

// atk14Skip skips unless ATK14=1 (README-only attack, 2026-12-03).
func atk14Skip(t *testing.T) {
	if os.Getenv("ATK14") == "" {
		t.Skip("ATK14=1: README-only attack on Known limits")
	}
}

// atk14Trickle holds 3 000 devices on a release-enabled broker, then runs a
// stranger sending refused CONNECTs with 60 000-byte client IDs and
// usernames (README: up to 128 KB allocated a CONNECT): perQuarter of them
// every quarter second, evenly spread, and, if pulse > 0, pulse of them at
// once every pulseEvery. It returns how long after the devices' burst the
// release came (0: none within window) and the stranger's CONNECTs a
// second on average.
func atk14Trickle(t *testing.T, perQuarter, pulse int, pulseEvery, window time.Duration) (time.Duration, float64) {
	const n = 3000
	e := envWithoutBroker(t)
	addDevices(t, e, n)
	b := atkRelBroker(t, e.conf("log_type all"), true)
	time.Sleep(1500 * time.Millisecond)
	ok, _ := r13Hold(t, b, n, func(i int) string { return fmt.Sprintf("t-%d", i) }, -1, nil)
	before := strings.Count(b.Output(), "heap released")
	end := time.Now()
	rss0 := r13Rss(t, b.PID())
	long := strings.Repeat("q", 59990)
	var sent, seq atomic.Int64
	var wg sync.WaitGroup
	one := func() {
		defer wg.Done()
		i := seq.Add(1)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, _, err := mqttc.Dial(ctx, mqttc.Options{Addr: b.Addr, SourceIP: "127.14.0.1",
			ClientID: fmt.Sprintf("s%08d", i) + long, Username: str(fmt.Sprintf("n%08d", i) + long), Password: str("pw")})
		sent.Add(1)
		if err == nil && c != nil {
			c.Close()
		}
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		step := releaseQuarter / time.Duration(perQuarter)
		tick := time.NewTicker(step)
		defer tick.Stop()
		lastPulse := time.Now()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			wg.Add(1)
			go one()
			if pulse > 0 && time.Since(lastPulse) >= pulseEvery {
				lastPulse = time.Now()
				for k := 0; k < pulse; k++ {
					wg.Add(1)
					go one()
				}
			}
		}
	}()
	relAt := r13ReleaseAfter(b, before, end, window)
	if relAt != 0 {
		time.Sleep(time.Second)
	}
	rss1 := r13Rss(t, b.PID())
	el := time.Since(end)
	close(stop)
	<-done
	wg.Wait()
	rate := float64(sent.Load()) / el.Seconds()
	t.Logf("%d/%d devices; stranger: %d CONNECTs (%.1f/s, about %.2f MB/s at 123 KB each) with 60 000-byte client ID and username, %d per quarter second + %d every %v; release %v after the burst (0: none in %v)",
		ok, n, sent.Load(), rate, rate*123e3/1e6, perQuarter, pulse, pulseEvery, relAt, window)
	t.Logf("RSS after the devices' burst %.1f MB, at the end %.1f MB", float64(rss0)/(1<<20), float64(rss1)/(1<<20))
	t.Logf("release lines: %q", atk14Lines(b.Output(), "heap released"))
	require.False(t, b.Exited())
	return relAt, rate
}

const releaseQuarter = 250 * time.Millisecond

func atk14Lines(out, s string) []string {
	var r []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, s) {
			r = append(r, l)
		}
	}
	return r
}

// Control: a steady trickle of 3 long CONNECTs a quarter second (about
// 1.5 MB/s, under the README's 4 MB/s): the release must come within 10 s
// (plus a tick or two).
func TestZZAtk14SteadyTrickle(t *testing.T) {
	atk14Skip(t)
	relAt, _ := atk14Trickle(t, 3, 0, 0, 25*time.Second)
	assert.NotZero(t, relAt, "no release in 25 s under a steady trickle below 4 MB/s")
	assert.Less(t, relAt, 12*time.Second, "README: the release is put off by 10 s at most below 4 MB a second")
}

// Attack: the same steady trickle plus a pulse of 10 long CONNECTs at once
// every 8 s: on average still far below the README's 4 MB a second (about
// 1.6 to 2 MB/s), yet each pulse puts over 1 MB in one quarter second,
// which restarts the slow rule's 10 s, and the steady part keeps every
// other quarter above the quiet 256 KB. README: "A stranger's refused
// CONNECTs can put the heap's release off, by 10 s at most below 4 MB a
// second of allocation".
//
// Found (2026-12-03, 3 runs): 13.0 CONNECTs/s (about 1.6 MB/s at 123 KB
// each): no release in 30 s; the control (TestZZAtk14SteadyTrickle, 12/s,
// no pulse): release 10.4 to 10.8 s after the burst. What the withheld
// release would give back here is small (the control's release: 27.2 MB
// to 26.0 MB of RSS), since a release already came during the devices'
// connects; the README's claim on timing does not hold.
func TestZZAtk14PulsedTrickleHoldsTheRelease(t *testing.T) {
	atk14Skip(t)
	relAt, rate := atk14Trickle(t, 3, 10, 8*time.Second, 30*time.Second)
	assert.Less(t, rate*128e3, 4e6, "the stranger stayed below 4 MB a second even at 128 KB a CONNECT")
	assert.NotZero(t, relAt, "no release in 30 s: a stranger below 4 MB/s on average holds the release for as long as it goes on")
}

// Attack: the failed-authentication queue with Redis hung (SIGSTOP), every
// fail scope on (ip, clientid, username: three counted keys a failure),
// and client ID and username at MQTT's most, 65 535 bytes each. README:
// "each failure holds at most 1 KB of its own, under 5 MB in all (3.2 to
// 3.5 KB of RSS a refused CONNECT)".
func TestZZAtk14FailQueueAllScopesMaxStrings(t *testing.T) {
	atk14Skip(t)
	e := envWithoutBroker(t)
	b := atkRelBroker(t, e.conf("log_type all", "auth_opt_redis_timeout 2s", "auth_opt_fail_scopes ip,clientid,username"), true)
	time.Sleep(1500 * time.Millisecond)
	idle := r13Rss(t, b.PID())
	require.NoError(t, e.redis.Signal(syscall.SIGSTOP))
	defer func() { _ = e.redis.Signal(syscall.SIGCONT) }()
	sent, n, took := hugeRefusedFlood(b, "a14-", "127.42", 65535)
	time.Sleep(time.Second)
	held := r13Rss(t, b.PID())
	t.Logf("%d CONNECTs sent, %d refused in %v with Redis stopped, fail_scopes ip,clientid,username, 65 535-byte ID and username; RSS idle %.1f MB, after %.1f MB: %.1f KB a refused CONNECT",
		sent, n, took.Round(time.Millisecond), float64(idle)/(1<<20), float64(held)/(1<<20), float64(held-idle)/1024/float64(max(n, 1)))
	require.False(t, b.Exited())
	require.Greater(t, n, int64(300), "enough refused CONNECTs to measure")
	assert.Less(t, held-idle, 2<<20+n*8192, "a refused CONNECT queued for counting holds under 8 KB of the broker's memory")
}
