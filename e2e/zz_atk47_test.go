package e2e

import (
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// atk47 attacks 13bb405's client-ID conflict tracking with two real
// brokers sharing one real Redis: a same-principal loop across brokers
// and the quiet-reconnect skip, a flush or an empty restart before a new
// broker's first lease tick, a Redis SIGSTOPped past broker_lease and
// flapping, and a flush followed by a short pause of the holder's broker.
//
// SUSPECTED, not tested apart: under clientid_conflict flag, the
// connects of TestAtk47FlushThenShortPauseDenyLetsIn made after the other
// broker's second post-flush renewal are evaluated with the holder's
// entry not counting, so they give no finding of their own; in the run
// made (flag, 16 connects of bob) the first one, before that renewal, was
// flagged and the rest fold into it within findings_fold, so no miss
// shows from outside.

// atk47LoggedKind counts the finding log lines of kind for id.
func atk47LoggedKind(id, kind string, es ...*env) int {
	n := 0
	for _, e := range es {
		for _, l := range strings.Split(e.broker.Output(), "\n") {
			if strings.Contains(l, "event=finding") && strings.Contains(l, "kind="+kind) && strings.Contains(l, `client_id="`+id+`"`) {
				n++
			}
		}
	}
	return n
}

// atk47Twins runs one principal's two devices (alice, one on each
// broker) on one client ID, each reconnecting while the other is live on
// the other broker: 2*rounds connects that find the principal's other
// connection live on another broker. wait is slept after the two first
// reads (device 1 alone on broker-a, then device 2 on broker-b with
// device 1 gone: both quiet).
func atk47Twins(t *testing.T, mode string, wait time.Duration, rounds, limit int) {
	id := "atk47-twins-" + mode + "-" + wait.String()
	a, b := twoBrokers(t, "auth_opt_clientid_conflict "+mode, "auth_opt_takeover_limit "+strconv.Itoa(limit), "auth_opt_takeover_window 1m")
	d1, code := a.dial(as("127.0.147.1", id, "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	a.waitLive(id, 1)
	_ = d1.Disconnect()
	d1.Close()
	a.waitLive(id, 0)
	d2, code := b.dial(as("127.0.147.2", id, "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	b.waitLive(id, 1)
	time.Sleep(wait)
	start := time.Now()
	for i := 0; i < rounds; i++ {
		d1, code = atk29Dial(a, as("127.0.147.1", id, "alice", "alice-pw"))
		require.EqualValues(t, accepted, code, "round %d: device 1 on broker-a", i)
		time.Sleep(300 * time.Millisecond)
		_ = d2.Disconnect()
		d2.Close()
		d2, code = atk29Dial(b, as("127.0.147.2", id, "alice", "alice-pw"))
		require.EqualValues(t, accepted, code, "round %d: device 2 on broker-b", i)
		time.Sleep(300 * time.Millisecond)
		_ = d1.Disconnect()
		d1.Close()
	}
	t.Cleanup(func() { d2.Close() })
	loop := time.Since(start)
	time.Sleep(3 * time.Second)
	t.Logf("%d cross-broker connects in %.1f s; guard:takeoverconns=%q; kinds=%v", 2*rounds, loop.Seconds(), a.redis.CLI("HLEN", "guard:takeoverconns:"+id), atk37Kinds(a, id))
	atk42Lines(t, a, b)
	assert.NotZero(t, atk47LoggedKind(id, "duplicate-connection", a, b),
		"alice's two devices found each other live on the other broker %d times in %.1f s (takeover_limit %d in 1m): a duplicate-connection finding is due", 2*rounds, loop.Seconds(), limit)
}

// TestAtk47TwinsAcrossBrokersQuietSkip: DEFECT (flag: 4 of 4 runs).
// README: a finding is written for a "duplicate connection: one
// principal's connections with the same ID displace each other, on this
// broker or live on another, takeover_limit times in takeover_window (two
// devices sharing one identity)". alice's device 1 connects on broker-a
// and leaves (broker-a's read: quiet); device 2 connects on broker-b (its
// read: alice alone, quiet). Then, within 10 s of those reads, for 5
// rounds device 1 reconnects on broker-a while device 2 is live on
// broker-b, and device 2 reconnects on broker-b while device 1 is live on
// broker-a: 10 connects in about 3 s, each finding alice's other
// connection live on the other broker (takeover_limit 3, takeover_window
// 1m). Expected: a duplicate-connection finding. Observed under flag: none
// on either broker, and no guard:takeovers counter at all (4 of 4 runs):
// each reconnect skipped its read ("a reconnect of a principal to a
// client ID that a read showed quiet ... less than 10 s before skips its
// own read"), and a connect that skipped its read evaluates only a
// takeover on its own broker (conflicts/batch.go: "a quiet client ID is
// not read: only a local takeover counts"). The control
// (TestAtk47TwinsAcrossBrokersAfterQuietMarks: the same loop 11 s after
// the first reads) is flagged, counter 10. So a pair of devices whose
// fight across brokers starts after a moment with both off goes
// uncounted for its first 10 s, however many times they flap.
func TestAtk47TwinsAcrossBrokersQuietSkip(t *testing.T) {
	atk47Twins(t, "flag", 0, 5, 3)
}

// TestAtk47TwinsAcrossBrokersQuietSkipDeny: DEFECT (3 of 3 runs). As
// TestAtk47TwinsAcrossBrokersQuietSkip under clientid_conflict deny, with
// takeover_limit 8. With takeover_limit 3 the same loop is reported (2 of
// 2 runs), but only 6 of its 10 cross-broker duplicates are counted
// (guard:takeovers 6; inferred, not traced: the quiet-reconnect skip
// hides 4, though the deny claim reads the client ID at every connect). Expected: a
// duplicate-connection finding (10 duplicates >= takeover_limit 8 within
// takeover_window 1m). Observed: none; guard:takeovers 6 (3 of 3 runs).
func TestAtk47TwinsAcrossBrokersQuietSkipDeny(t *testing.T) {
	atk47Twins(t, "deny", 0, 5, 8)
}

// TestAtk47TwinsAcrossBrokersAfterQuietMarks: HOLDS (flag 2 of 2;
// guard:takeovers 10). The control: the same loop begun 11 s after the first reads, once their
// quiet marks have run out, is reported.
func TestAtk47TwinsAcrossBrokersAfterQuietMarks(t *testing.T) {
	atk47Twins(t, "flag", 11*time.Second, 5, 3)
}

// atk47TryBob connects bob with id on e every 250 ms for d (each
// connection closed at once) and returns how many times he was let in,
// and the offsets at which he was.
func atk47TryBob(t *testing.T, e *env, ip, id string, d time.Duration) (int, []string) {
	t.Helper()
	n := 0
	var at []string
	start := time.Now()
	for time.Since(start) < d {
		c, code := atk29Dial(e, as(ip, id, "bob", "bob-pw"))
		if c != nil {
			_ = c.Disconnect()
			c.Close()
		}
		if code == accepted {
			n++
			at = append(at, time.Since(start).Truncate(10*time.Millisecond).String())
		}
		time.Sleep(250 * time.Millisecond)
	}
	return n, at
}

// TestAtk47FlushBeforeFirstTick: HOLDS (2 of 2 runs each). Scenario 2:
// broker-b runs; broker-a starts (broker_lease 6s: its first tick 2 s
// after its start renewal), alice connects to it at once and stays; Redis
// is flushed (or restarted empty) before broker-a's first tick. Once
// broker-a has written alice's live entry again (its relist), bob tries
// the client ID on broker-b every 250 ms for 8 s, and on broker-a.
// Expected under deny: every attempt refused; under flag: a
// cross-principal finding. (Bob before the relist is outside this test:
// README, a take "after a flush ... before the relist is flagged then".)
func TestAtk47FlushBeforeFirstTick(t *testing.T) {
	for _, how := range []string{"flush", "restart"} {
		for _, mode := range []string{"deny", "flag"} {
			t.Run(how+"-"+mode, func(t *testing.T) {
				id := "atk47-first-" + how + "-" + mode
				e := envWithoutBroker(t)
				opts := []string{"auth_opt_clientid_conflict " + mode, "auth_opt_broker_lease 6s"}
				b := &env{t: t, dir: e.dir, redis: e.redis, passwd: e.passwd}
				b.broker = startBroker(t, b.conf(append([]string{"auth_opt_broker_name broker-b"}, opts...)...))
				time.Sleep(3 * time.Second)
				a := &env{t: t, dir: e.dir, redis: e.redis, passwd: e.passwd}
				a.broker = startBroker(t, a.conf(append([]string{"auth_opt_broker_name broker-a"}, opts...)...))
				alice, code := atk29Dial(a, as("127.0.147.11", id, "alice", "alice-pw"))
				require.EqualValues(t, accepted, code)
				t.Cleanup(func() { alice.Close() })
				a.waitLive(id, 1)
				if how == "flush" {
					e.redis.CLI("FLUSHALL")
				} else {
					e.redis.Kill()
					e.redis.Restart()
				}
				a.waitLive(id, 1) // relisted
				if mode == "flag" {
					c, code := atk29Dial(b, as("127.0.147.12", id, "bob", "bob-pw"))
					require.EqualValues(t, accepted, code)
					time.Sleep(300 * time.Millisecond)
					c.Close()
					eventually(t, 5*time.Second, func() bool { return atk41LoggedCross(id, a, b) > 0 }, "bob took alice's live client ID: a finding is due")
					return
				}
				nb, atb := atk47TryBob(t, b, "127.0.147.12", id, 8*time.Second)
				na, ata := atk47TryBob(t, a, "127.0.147.12", id, time.Second)
				t.Logf("conn=%q brokers=%q", e.redis.CLI("HGETALL", "guard:conn:"+id), e.redis.CLI("ZRANGE", "guard:brokers", "0", "-1", "WITHSCORES"))
				atk42Lines(t, a, b)
				assert.Zero(t, nb, "alice holds the client ID on broker-a: bob let in on broker-b at %v", atb)
				assert.Zero(t, na, "bob let in on broker-a at %v", ata)
				assert.False(t, alice.Closed(100*time.Millisecond), "alice stays")
			})
		}
	}
}

// TestAtk47RedisStoppedPastLeaseThenFlapping: HOLDS (2 of 2 runs each
// mode; slowest fresh CONNACK during the stop 0.8 to 2.3 ms). Scenario 3: broker_lease 6s; alice holds one
// client ID on broker-a and another on broker-b; Redis is SIGSTOPped for
// 8 s (past the lease), continued, then stopped and continued every
// second for 6 s; a fresh client connects during the stop (its CONNACK
// timed: README, redis_timeout bounds what the broker thread waits for,
// "102-105 ms under clientid_conflict deny" with Redis stopped). Then
// bob tries each held client ID on the other broker and on its own,
// every 250 ms for 8 s from 1 s after the last SIGCONT. Expected under
// deny: each refused, no crash, both holders stay; under flag: a
// cross-principal finding per client ID.
func TestAtk47RedisStoppedPastLeaseThenFlapping(t *testing.T) {
	for _, mode := range []string{"deny", "flag"} {
		t.Run(mode, func(t *testing.T) {
			idA, idB := "atk47-stop-a-"+mode, "atk47-stop-b-"+mode
			a, b := twoBrokers(t, "auth_opt_clientid_conflict "+mode, "auth_opt_broker_lease 6s")
			ha, code := a.dial(as("127.0.147.21", idA, "alice", "alice-pw"))
			require.EqualValues(t, accepted, code)
			hb, code := b.dial(as("127.0.147.22", idB, "alice", "alice-pw"))
			require.EqualValues(t, accepted, code)
			a.waitLive(idA, 1)
			a.waitLive(idB, 1)
			time.Sleep(2500 * time.Millisecond)
			r := a.redis
			require.NoError(t, r.Signal(syscall.SIGSTOP))
			t.Cleanup(func() { _ = r.Signal(syscall.SIGCONT) })
			time.Sleep(2 * time.Second)
			var slowest time.Duration
			for i := 0; i < 4; i++ {
				start := time.Now()
				c, code := atk29Dial(a, as("127.0.147.23", "atk47-fresh-"+mode+string(rune('a'+i)), "alice", "alice-pw"))
				d := time.Since(start)
				slowest = max(slowest, d)
				if c != nil {
					c.Close()
				}
				assert.NotEqual(t, byte(255), code, "a fresh client gets a CONNACK while Redis is stopped")
				time.Sleep(500 * time.Millisecond)
			}
			time.Sleep(4 * time.Second) // 8 s stopped
			require.NoError(t, r.Signal(syscall.SIGCONT))
			for i := 0; i < 3; i++ {
				time.Sleep(time.Second)
				require.NoError(t, r.Signal(syscall.SIGSTOP))
				time.Sleep(time.Second)
				require.NoError(t, r.Signal(syscall.SIGCONT))
			}
			time.Sleep(time.Second)
			t.Logf("slowest fresh CONNACK while stopped: %s", slowest)
			if mode == "flag" {
				for _, p := range []struct {
					e  *env
					id string
				}{{b, idA}, {a, idB}} {
					c, code := atk29Dial(p.e, as("127.0.147.24", p.id, "bob", "bob-pw"))
					require.EqualValues(t, accepted, code)
					time.Sleep(300 * time.Millisecond)
					c.Close()
				}
				time.Sleep(4 * time.Second)
				atk42Lines(t, a, b)
				assert.NotZero(t, atk41LoggedCross(idA, a, b), "bob took %s, held by alice on broker-a", idA)
				assert.NotZero(t, atk41LoggedCross(idB, a, b), "bob took %s, held by alice on broker-b", idB)
				return
			}
			var wins []string
			start := time.Now()
			for time.Since(start) < 8*time.Second {
				for _, p := range []struct {
					name string
					e    *env
					id   string
				}{{"b/idA", b, idA}, {"a/idB", a, idB}, {"a/idA", a, idA}, {"b/idB", b, idB}} {
					c, code := atk29Dial(p.e, as("127.0.147.24", p.id, "bob", "bob-pw"))
					if c != nil {
						_ = c.Disconnect()
						c.Close()
					}
					if code == accepted {
						wins = append(wins, p.name+"@"+time.Since(start).Truncate(10*time.Millisecond).String())
					}
				}
				time.Sleep(250 * time.Millisecond)
			}
			t.Logf("conn A=%q B=%q brokers=%q", a.redis.CLI("HGETALL", "guard:conn:"+idA), a.redis.CLI("HGETALL", "guard:conn:"+idB), a.redis.CLI("ZRANGE", "guard:brokers", "0", "-1", "WITHSCORES"))
			atk42Lines(t, a, b)
			for _, e := range []*env{a, b} {
				for _, l := range strings.Split(e.broker.Output(), "\n") {
					if strings.Contains(l, "cleared the live connections") || strings.Contains(l, "panic") || strings.Contains(l, "internal error") {
						t.Log(l)
					}
				}
			}
			assert.Empty(t, wins, "bob let in beside alice's held client IDs (broker/id@time after the last SIGCONT + 1 s)")
			assert.False(t, ha.Closed(100*time.Millisecond), "holder on broker-a stays")
			assert.False(t, hb.Closed(100*time.Millisecond), "holder on broker-b stays")
			assert.False(t, a.broker.Exited(), "broker-a runs")
			assert.False(t, b.broker.Exited(), "broker-b runs")
		})
	}
}

// atk47Instance returns the member of guard:brokers whose name is in
// alice's live entry of id.
func atk47Instance(t *testing.T, e *env, id string) string {
	t.Helper()
	entry := e.redis.CLI("HGETALL", "guard:conn:"+id)
	for _, m := range strings.Split(e.redis.CLI("ZRANGE", "guard:brokers", "0", "-1"), "\n") {
		if m != "" && strings.Contains(entry, m) {
			return m
		}
	}
	t.Fatalf("no broker instance of %q in %q", entry, e.redis.CLI("ZRANGE", "guard:brokers", "0", "-1"))
	return ""
}

// TestAtk47FlushThenShortPauseDenyLetsIn: DEFECT (4 of 4 runs: bob let
// in 10, 10, 2 and 10 times of 16). Scenario 4 (atk44's suspicion). README:
// "With clientid_conflict deny, a new connection whose client ID is live
// under another principal, on this broker or any other, is refused"; and
// atk43's fix: "after a flush, a client held longer than broker_lease on
// another broker lost its client ID under deny until the next renewal"
// (fixed). broker_lease 6s. alice has held the client ID on broker-a for
// 8 s. Redis is flushed just after a lease renewal of broker-a; broker-a's
// replica notices and relists alice within 0.6 s (her live entry back,
// its connect 8 s old) but that relist writes no lease; broker-a is then
// paused (SIGSTOP) for 4 s, less than broker_lease, before its next tick.
// bob tries the client ID on broker-b every 250 ms during the pause.
// Expected: refused each time (the control, TestAtk47ShortPauseNoFlush,
// the same pause without the flush: refused 16 of 16). Observed: refused
// until broker-b's second renewal after the flush (its first found its
// lease lapsed: every entry counted), then let in (CONNACK 0) every time
// until broker-a resumed: broker-b's view, from a renewal with its lease
// running, does not name broker-a (no lease since the flush), and alice's
// entry, older than broker_lease, counts for nothing. None of bob's
// let-ins is flagged either (no action=flagged finding on either broker
// 5 s after the resume: broker-a's relist at its lapsed renewal finds
// alice's use held and checks nothing older than conflict_window).
func TestAtk47FlushThenShortPauseDenyLetsIn(t *testing.T) {
	atk47FlushPause(t, "deny", true)
}

// TestAtk47ShortPauseNoFlush: HOLDS (2 of 2; bob refused 16 of 16).
// The control: the same 4 s pause of broker-a without the flush; bob is
// refused throughout.
func TestAtk47ShortPauseNoFlush(t *testing.T) {
	atk47FlushPause(t, "deny", false)
}

func atk47FlushPause(t *testing.T, mode string, flush bool) {
	id := "atk47-pause-" + mode + "-" + strconv.FormatBool(flush)
	a, b := twoBrokers(t, "auth_opt_clientid_conflict "+mode, "auth_opt_broker_lease 6s")
	alice, code := a.dial(as("127.0.147.31", id, "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	t.Cleanup(func() { alice.Close() })
	a.waitLive(id, 1)
	time.Sleep(8 * time.Second)
	inst := atk47Instance(t, a, id)
	// Flush right after broker-a's renewal: its score jumps by ~2 s.
	old := a.redis.CLI("ZSCORE", "guard:brokers", inst)
	eventually(t, 3*time.Second, func() bool { return a.redis.CLI("ZSCORE", "guard:brokers", inst) != old }, "broker-a renews")
	flushed := time.Now()
	if flush {
		a.redis.CLI("FLUSHALL")
		eventually(t, 3*time.Second, func() bool { return a.redis.CLI("HLEN", "guard:conn:"+id) == "1" }, "broker-a relists alice")
	}
	lease := a.redis.CLI("ZSCORE", "guard:brokers", inst)
	require.NoError(t, a.broker.Signal(syscall.SIGSTOP))
	paused := time.Now()
	t.Cleanup(func() { _ = a.broker.Signal(syscall.SIGCONT) })
	t.Logf("relisted %.2f s after the flush; broker-a's lease then %q", paused.Sub(flushed).Seconds(), lease)
	n, at := atk47TryBob(t, b, "127.0.147.32", id, 4*time.Second)
	require.NoError(t, a.broker.Signal(syscall.SIGCONT))
	t.Logf("conn=%q brokers=%q", a.redis.CLI("HGETALL", "guard:conn:"+id), a.redis.CLI("ZRANGE", "guard:brokers", "0", "-1", "WITHSCORES"))
	time.Sleep(5 * time.Second)
	atk42Lines(t, a, b)
	flagged := 0
	for _, e := range []*env{a, b} {
		for _, l := range strings.Split(e.broker.Output(), "\n") {
			if strings.Contains(l, "event=finding") && strings.Contains(l, "action=flagged") && strings.Contains(l, `client_id="`+id+`"`) {
				flagged++
			}
		}
	}
	t.Logf("bob let in %d times at %v; flagged findings %d", n, at, flagged)
	if mode == "deny" {
		assert.Zero(t, n, "alice holds the client ID on broker-a, paused 4s (< broker_lease 6s): bob let in on broker-b at %v after the pause began", at)
	} else {
		require.NotZero(t, n)
		assert.NotZero(t, flagged, "bob used the client ID alice held live: a flagged cross-principal finding is due")
	}
	assert.False(t, alice.Closed(2*time.Second), "alice stays")
}
