package e2e

import (
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// atk40 attacks the end check (2bf0e84) with two real brokers.

// TestAtk40FlushHitAndRunHolderLeaves: HOLDS. README, the paragraph "A
// connection that ends before its relist": alice holds the client ID on
// broker-a; Redis is flushed; bob takes it on broker-b for 50 ms and
// leaves; alice leaves 30 ms after him, before broker-a's relist. Her end
// finds no live entry and is checked: bob is flagged. Nothing else checks
// it again (bob's use is held: broker-b's relist does not hold him any
// more; alice is gone before her relist). Expected: exactly one finding
// alice,bob in the stream, under flag and deny.
func TestAtk40FlushHitAndRunHolderLeaves(t *testing.T) {
	for _, mode := range []string{"flag", "deny"} {
		t.Run(mode, func(t *testing.T) {
			id := "atk40-hr-" + mode
			a, b := twoBrokers(t, "auth_opt_clientid_conflict "+mode)
			alice, code := a.dial(as("127.0.140.1", id, "alice", "alice-pw"))
			require.EqualValues(t, accepted, code)
			a.waitLive(id, 1)
			eventually(t, 3*time.Second, func() bool { return a.seenRecord(id, "alice") != nil }, "alice's use recorded")
			time.Sleep(300 * time.Millisecond)
			a.redis.CLI("FLUSHALL")
			bob, code := atk29Dial(b, as("127.0.140.2", id, "bob", "bob-pw"))
			require.EqualValues(t, accepted, code, "the flush took alice's entry")
			time.Sleep(50 * time.Millisecond)
			_ = bob.Disconnect()
			bob.Close()
			time.Sleep(30 * time.Millisecond)
			_ = alice.Disconnect()
			alice.Close()
			time.Sleep(5 * time.Second)
			t.Logf("kinds=%v logged=%d", atk37Kinds(a, id), atk37Logged(id, a, b))
			assert.Equal(t, []string{"cross-principal:[\"alice\",\"bob\"]"}, atk37Kinds(a, id), "one finding: bob took x while alice held it")
		})
	}
}

// atk40Monitor runs redis-cli MONITOR on e's Redis until the test ends;
// its output so far is read with the returned function.
func atk40Monitor(t *testing.T, e *env) func() string {
	t.Helper()
	var buf atk40Buf
	cmd := exec.Command("redis-cli", "-p", strconv.Itoa(e.redis.Port), "MONITOR")
	cmd.Stdout = &buf
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	time.Sleep(200 * time.Millisecond)
	return buf.String
}

type atk40Buf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *atk40Buf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *atk40Buf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// atk40Between is the MONITOR lines between ECHO from and ECHO to.
func atk40Between(out, from, to string) []string {
	var lines []string
	in := false
	for _, l := range strings.Split(out, "\n") {
		switch {
		case strings.Contains(l, `"ECHO" "`+from+`"`):
			in = true
		case strings.Contains(l, `"ECHO" "`+to+`"`):
			in = false
		case in:
			lines = append(lines, l)
		}
	}
	return lines
}

// TestAtk40ScriptFlushOrdinaryEndsNoPeek: HOLDS. README: "an end that finds
// its live entry costs no command more"; store.WriteConns: a NOSCRIPT
// replay keeps what the first attempt's commands read (the Prior merge). A
// SCRIPT FLUSH right before an ordinary disconnect (the batch's EVALSHAs
// fail; under flag its plain HDEL ran in the first attempt, and finds
// nothing in the replay) must not make the end look missing: no end check
// (a Peek: HGETALL of the live and seen hashes) and no finding. alice
// connects and leaves on broker-a, then on broker-b, four times, with a
// SCRIPT FLUSH before every second disconnect; MONITOR records each
// disconnect's commands. Expected: no HGETALL from a broker between a
// disconnect and its end's record, no finding.
func TestAtk40ScriptFlushOrdinaryEndsNoPeek(t *testing.T) {
	for _, mode := range []string{"flag", "deny"} {
		t.Run(mode, func(t *testing.T) {
			id := "atk40-sf-" + mode
			a, b := twoBrokers(t, "auth_opt_clientid_conflict "+mode)
			mon := atk40Monitor(t, a)
			n := 0
			cycle := func(e *env, flush bool) {
				n++
				c, code := e.dial(as("127.0.140.3", id, "alice", "alice-pw"))
				require.EqualValues(t, accepted, code)
				e.waitLive(id, 1)
				eventually(t, 3*time.Second, func() bool { return e.seenRecord(id, "alice") != nil }, "alice's use recorded")
				time.Sleep(100 * time.Millisecond)
				if flush {
					e.redis.CLI("SCRIPT", "FLUSH")
				}
				e.redis.CLI("ECHO", "atk40-from-"+strconv.Itoa(n))
				_ = c.Disconnect()
				c.Close()
				e.waitLive(id, 0)
				eventually(t, 3*time.Second, func() bool {
					s := e.seenRecord(id, "alice")
					return s != nil && s["disconnected_ms"] != nil
				}, "alice's end recorded")
				time.Sleep(300 * time.Millisecond)
				e.redis.CLI("ECHO", "atk40-to-"+strconv.Itoa(n))
			}
			for k := range 4 {
				cycle(a, k%2 == 1)
				cycle(b, k%2 == 0)
			}
			time.Sleep(200 * time.Millisecond)
			out := mon()
			peeks, evals := 0, 0
			for k := 1; k <= n; k++ {
				for _, l := range atk40Between(out, "atk40-from-"+strconv.Itoa(k), "atk40-to-"+strconv.Itoa(k)) {
					if strings.Contains(l, `"hgetall" "guard:`) && !strings.Contains(l, "lua]") {
						peeks++
						t.Logf("disconnect %d: %s", k, l)
					}
					if strings.Contains(l, `"eval" "`) {
						evals++
					}
				}
			}
			t.Logf("peeks=%d replays(eval)=%d kinds=%v", peeks, evals, atk37Kinds(a, id))
			require.NotZero(t, evals, "the SCRIPT FLUSH made a disconnect's batch replay")
			assert.Empty(t, atk37Kinds(a, id), "one principal: no finding")
			assert.Zero(t, peeks, "no end check for an ordinary disconnect after a SCRIPT FLUSH")
		})
	}
}

// TestAtk40SameBrokerTakeoverNoPeek: HOLDS. README: "an end that finds
// its live entry costs no command more"; under deny "a reconnect's claim
// replaces the field before the old connection's end is written"
// (casScript's -1: not Missing). alice reconnects with the same client ID
// on broker-a four times while connected (Mosquitto takes the session
// over and closes the old connection), then once on broker-b. MONITOR
// records each takeover's commands. Expected: no end check (a Peek: a
// plain HGETALL of the live and seen hashes beyond the connect's own:
// flag mode's connect reads both with plain HGETALLs, deny's in its
// scripts), no cross-principal finding. An end is its live entry's
// removal: HDEL, or casScript by its hash, or by its source (EVAL: a
// script's first calls after the start, until Redis has compiled it).
func TestAtk40SameBrokerTakeoverNoPeek(t *testing.T) {
	for _, mode := range []string{"flag", "deny"} {
		t.Run(mode, func(t *testing.T) {
			id := "atk40-to-" + mode
			a, b := twoBrokers(t, "auth_opt_clientid_conflict "+mode)
			mon := atk40Monitor(t, a)
			var held []interface{ Close() error }
			t.Cleanup(func() {
				for _, c := range held {
					_ = c.Close()
				}
			})
			c, code := a.dial(as("127.0.140.5", id, "alice", "alice-pw"))
			require.EqualValues(t, accepted, code)
			held = append(held, c)
			a.waitLive(id, 1)
			time.Sleep(300 * time.Millisecond)
			for k := 1; k <= 5; k++ {
				e := a
				if k == 5 {
					e = b
				}
				a.redis.CLI("ECHO", "atk40-from-"+strconv.Itoa(k))
				c, code := atk29Dial(e, as("127.0.140.5", id, "alice", "alice-pw"))
				require.EqualValues(t, accepted, code)
				held = append(held, c)
				time.Sleep(700 * time.Millisecond)
				a.redis.CLI("ECHO", "atk40-to-"+strconv.Itoa(k))
			}
			out := mon()
			want := map[string]int{"flag": 2, "deny": 0}[mode]
			extra, ends := 0, 0
			for k := 1; k <= 5; k++ {
				n := 0
				for _, l := range atk40Between(out, "atk40-from-"+strconv.Itoa(k), "atk40-to-"+strconv.Itoa(k)) {
					if strings.Contains(l, `"guard:conn:`+id+`"`) && (strings.Contains(l, `"evalsha"`) || strings.Contains(l, `"eval"`) || strings.Contains(l, `"hdel"`)) {
						ends++
					}
					if strings.Contains(l, `"hgetall" "guard:`) && !strings.Contains(l, "lua]") {
						n++
					}
				}
				if n > want {
					extra += n - want
					t.Logf("takeover %d: %d plain HGETALLs", k, n)
				}
			}
			var cross []string
			for _, k := range atk37Kinds(a, id) {
				if strings.HasPrefix(k, "cross") {
					cross = append(cross, k)
				}
			}
			t.Logf("kinds=%v ends=%d", atk37Kinds(a, id), ends)
			require.GreaterOrEqual(t, ends, 4, "the old connections' ends were written within the intervals")
			assert.Empty(t, cross, "one principal: no cross-principal finding")
			assert.Zero(t, extra, "no end check for a takeover's end")
		})
	}
}
