package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// Issue 12: under a steady load of CONNECTs, Go's sysmon thread no longer
// polls at 20 µs in the broker (cgo/yield.go). Before, it woke 2 000 to
// 2 400 times a second and took about 5 % of the broker's CPU: the busiest
// of the broker's threads other than its main one. With the yield that
// thread wakes a few hundred times a second. Two brokers on one Redis,
// under the same load in turn (a devices' reconnect loop, one user, each
// CONNECT a verification-cache hit): one with MOSQUITTO_GUARD_NO_YIELD
// (the baseline), one without; twice each. The load is bounded (1.5 s a
// broker, 8 clients).
func TestYieldKeepsSysmonAsleep(t *testing.T) {
	e := envWithoutBroker(t)
	brokers := map[bool]*testenv.Mosquitto{}
	for _, yield := range []bool{false, true} {
		if !yield {
			t.Setenv("MOSQUITTO_GUARD_NO_YIELD", "1")
		} else {
			os.Unsetenv("MOSQUITTO_GUARD_NO_YIELD") // t.Setenv restores it at the end
		}
		b := testenv.StartMosquitto(t, e.conf())
		require.True(t, b.WaitOutput("mosquitto-guard: ready", 5*time.Second))
		brokers[yield] = b
	}
	os.Unsetenv("MOSQUITTO_GUARD_NO_YIELD")
	worst := map[bool][]float64{}
	for round := 0; round < 2; round++ {
		for _, yield := range []bool{false, true} {
			connects, busiest := yieldLoad(t, brokers[yield], round)
			t.Logf("round %d, yield %v: %d CONNECTs (%.0f a second); the busiest thread but the main one woke %.0f times a second", round, yield, connects, float64(connects)/1.5, busiest)
			worst[yield] = append(worst[yield], busiest)
		}
	}
	for i := range worst[true] {
		assert.Less(t, worst[true][i], 1000.0, "round %d: a thread of the broker woke %.0f times a second with the yield (sysmon polling)", i, worst[true][i])
	}
}

// yieldLoad runs 8 clients reconnecting in a loop to b for 1.5 s and
// returns the CONNECTs and the most voluntary
// context switches a second of any thread of b but its main one, over the
// last second of the load.
func yieldLoad(t *testing.T, b *testenv.Mosquitto, round int) (int64, float64) {
	t.Helper()
	var n atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				conn, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: b.Addr, SourceIP: fmt.Sprintf("127.0.%d.%d", 40+w, 1+i%250),
					ClientID: fmt.Sprintf("yield-%d-%d", round, w), Username: str("alice"), Password: str("alice-pw")})
				cancel()
				if err != nil || code != accepted {
					t.Errorf("connect: %v, code %d", err, code)
					return
				}
				conn.Disconnect()
				n.Add(1)
			}
		}()
	}
	time.Sleep(500 * time.Millisecond)
	before := threadSwitches(t, b.PID())
	start := time.Now()
	time.Sleep(time.Second)
	after := threadSwitches(t, b.PID())
	d := time.Since(start).Seconds()
	close(stop)
	wg.Wait()
	busiest := 0.0
	for tid, v := range after {
		if tid == b.PID() {
			continue
		}
		busiest = max(busiest, float64(v-before[tid])/d)
	}
	return n.Load(), busiest
}

// threadSwitches returns each thread's voluntary context switches.
func threadSwitches(t *testing.T, pid int) map[int]int64 {
	t.Helper()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	require.NoError(t, err)
	out := map[int]int64{}
	for _, f := range tasks {
		raw, err := os.ReadFile(f)
		if err != nil {
			continue // the thread ended
		}
		tid, _ := strconv.Atoi(filepath.Base(filepath.Dir(f)))
		for _, l := range strings.Split(string(raw), "\n") {
			if v, ok := strings.CutPrefix(l, "voluntary_ctxt_switches:"); ok {
				out[tid], _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			}
		}
	}
	return out
}
