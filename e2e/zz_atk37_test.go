package e2e

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// atk37Kinds lists the kinds of the findings for clientID.
func atk37Kinds(e *env, clientID string) []string {
	var k []string
	for _, f := range e.findings() {
		if f["clientid"] == clientID {
			k = append(k, f["kind"]+":"+f["principals"])
		}
	}
	return k
}

// atk37Logged counts the finding log lines for clientID on the given
// brokers (the findings stream goes with a flush; the log does not).
func atk37Logged(clientID string, es ...*env) int {
	n := 0
	for _, e := range es {
		for _, l := range strings.Split(e.broker.Output(), "\n") {
			if strings.Contains(l, "event=finding") && strings.Contains(l, `client_id="`+clientID+`"`) {
				n++
			}
		}
	}
	return n
}

// atk37Alice connects alice with id on broker a and waits for her use.
func atk37Alice(t *testing.T, a *env, ip, id string) {
	t.Helper()
	_, code := a.dial(as(ip, id, "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	a.waitLive(id, 1)
	eventually(t, 3*time.Second, func() bool { return a.seenRecord(id, "alice") != nil }, "alice's use recorded")
}

// TestAtk37HitAndRunWhileRedisHung: HOLDS (a finding alice,bob is written). README, Client-ID conflicts, "Detection
// does not depend on timing", and the relist paragraph: "A connection whose
// connect or relist write failed (Redis may have taken it and answered too
// late) is checked at its next relist ... a failed connect's against
// everything, as its connect would have been". alice holds the client ID on
// broker-a; Redis hangs (SIGSTOP) for 3 s (redis_timeout 1s); bob takes the
// client ID on broker-b during the hang, for 300 ms, and leaves; Redis
// comes back. Expected: a cross-principal finding (alice's live entry was
// in Redis throughout). Observed: see the log line.
func TestAtk37HitAndRunWhileRedisHung(t *testing.T) {
	const id = "atk37-hung"
	a, b := twoBrokers(t, "auth_opt_redis_timeout 1s")
	atk37Alice(t, a, "127.0.137.1", id)
	require.NoError(t, a.redis.Signal(syscall.SIGSTOP))
	cont := func() { _ = a.redis.Signal(syscall.SIGCONT) }
	t.Cleanup(cont)
	time.Sleep(200 * time.Millisecond)
	bob, code := atk29Dial(b, as("127.0.137.2", id, "bob", "bob-pw"))
	require.EqualValues(t, accepted, code, "flag mode admits bob from the replica")
	time.Sleep(300 * time.Millisecond)
	_ = bob.Disconnect()
	bob.Close()
	time.Sleep(2500 * time.Millisecond)
	cont()
	time.Sleep(6 * time.Second)
	t.Logf("conn=%q seen: alice=%v bob=%v kinds=%v", a.redis.CLI("HKEYS", "guard:conn:"+id), a.seenRecord(id, "alice"), a.seenRecord(id, "bob"), atk37Kinds(a, id))
	assert.NotZero(t, atk32Findings(a, id), "bob used alice's live client ID while Redis hung: a finding is due")
}

// TestAtk37HolderLeavesBeforeRelist: was marked HOLDS; a DEFECT under load.
// Was a DEFECT (fixed: conflicts' checkEnds: an end whose live entry Redis
// no longer held is checked as a relist would check it): it passed 4 times
// here and failed in a CI run (no finding): broker-a noticed the flush
// after alice had left, so alice was not relisted, and broker-b's relist
// skips bob, whose own use Redis holds; alice's use, ended after bob's
// connect, was checked by nobody.
// Original: HOLDS (broker-b's relist of bob flags it). alice holds the client ID on broker-a;
// Redis is flushed; bob takes the client ID on broker-b and stays; alice
// leaves 30 ms later, before broker-a's relist (so she is not relisted).
// README: a finding is written when "a client ID is used by a principal
// other than one that used it within conflict_window"; the relist
// paragraph covers a principal that took the client ID "after a flush ...
// before the relist". Expected: a cross-principal finding alice,bob.
func TestAtk37HolderLeavesBeforeRelist(t *testing.T) {
	const id = "atk37-leave"
	a, b := twoBrokers(t)
	alice, code := a.dial(as("127.0.137.3", id, "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	a.waitLive(id, 1)
	eventually(t, 3*time.Second, func() bool { return a.seenRecord(id, "alice") != nil }, "alice's use recorded")
	time.Sleep(300 * time.Millisecond)
	a.redis.CLI("FLUSHALL")
	bob, code := atk29Dial(b, as("127.0.137.4", id, "bob", "bob-pw"))
	require.EqualValues(t, accepted, code)
	t.Cleanup(func() { bob.Close() })
	time.Sleep(30 * time.Millisecond)
	_ = alice.Disconnect()
	alice.Close()
	time.Sleep(4 * time.Second)
	require.NoError(t, bob.Ping(t.Context()), "bob still connected")
	t.Logf("conn=%q seen: alice=%v bob=%v kinds=%v", a.redis.CLI("HKEYS", "guard:conn:"+id), a.seenRecord(id, "alice"), a.seenRecord(id, "bob"), atk37Kinds(a, id))
	assert.NotZero(t, atk32Findings(a, id), "bob took alice's live client ID right after a flush: a finding is due")
}

// TestAtk37SighupAfterFlushHitAndRun: HOLDS. As TestAtk32HitAndRunAfterFlush, with
// a SIGHUP to broker-a right after the flush (bad luck: a config reload at
// that moment). README: the relist flags "another principal that took the
// client ID while it was not there (after a flush ... before the relist)
// ... also if it has let go again". Expected: a finding.
func TestAtk37SighupAfterFlushHitAndRun(t *testing.T) {
	const id = "atk37-hup"
	a, b := twoBrokers(t)
	atk37Alice(t, a, "127.0.137.5", id)
	time.Sleep(300 * time.Millisecond)
	a.redis.CLI("FLUSHALL")
	require.NoError(t, a.broker.Signal(syscall.SIGHUP))
	bob, code := atk29Dial(b, as("127.0.137.6", id, "bob", "bob-pw"))
	require.EqualValues(t, accepted, code)
	time.Sleep(50 * time.Millisecond)
	_ = bob.Disconnect()
	bob.Close()
	eventually(t, 10*time.Second, func() bool { return a.redis.CLI("HEXISTS", "guard:seen:"+id, "alice") == "1" }, "broker-a records alice again")
	time.Sleep(2 * time.Second)
	t.Logf("kinds=%v", atk37Kinds(a, id))
	assert.NotZero(t, atk32Findings(a, id), "bob used alice's live client ID after the flush: a finding is due")
}

// TestAtk37DoubleFlushHitAndRun: DEFECT, left as a Known limit (skipped). Redis flapping: alice holds the client ID
// on broker-a; FLUSHALL; bob takes it on broker-b for 50 ms and leaves;
// a second FLUSHALL 150 ms after the first (before broker-a's relist, which
// the replica's 0.5 s flush check triggers). README: "another principal
// that took the client ID while it was not there (after a flush ...
// before the relist) is flagged then ... also if it has let go again".
// Expected: a finding (logged; the stream goes with the flush). Observed
// (3 of 3 runs): no finding line on either broker; bob's seen record went
// with the second flush, before broker-a's relist read it, and broker-b,
// which no longer holds bob, records nothing of him again. With the second
// flush 2 s later (TestAtk37DoubleFlushAfterRelist) the finding is logged.
func TestAtk37DoubleFlushHitAndRun(t *testing.T) {
	t.Skip("Known limit, not fixed (README, Known limits: two flushes before a relist): the second flush takes bob's use record, and no broker holds him any more to write it again")
	a, b := atk37DoubleFlush(t, "atk37-flap", 100*time.Millisecond)
	assert.NotZero(t, atk37Logged("atk37-flap", a, b), "bob used alice's live client ID between two flushes: a finding is due")
}

// TestAtk37DoubleFlushAfterRelist: HOLDS (control): the same with the
// second flush 2 s after bob left, after the relists of the first.
func TestAtk37DoubleFlushAfterRelist(t *testing.T) {
	a, b := atk37DoubleFlush(t, "atk37-flap2", 2*time.Second)
	assert.NotZero(t, atk37Logged("atk37-flap2", a, b), "bob used alice's live client ID after a flush: a finding is due")
}

// atk37DoubleFlush: alice holds id on broker-a; FLUSHALL; bob takes id on
// broker-b for 50 ms and leaves; FLUSHALL again gap after he left.
func atk37DoubleFlush(t *testing.T, id string, gap time.Duration) (*env, *env) {
	t.Helper()
	a, b := twoBrokers(t)
	atk37Alice(t, a, "127.0.137.7", id)
	time.Sleep(300 * time.Millisecond)
	a.redis.CLI("FLUSHALL")
	bob, code := atk29Dial(b, as("127.0.137.8", id, "bob", "bob-pw"))
	require.EqualValues(t, accepted, code)
	time.Sleep(50 * time.Millisecond)
	_ = bob.Disconnect()
	bob.Close()
	time.Sleep(gap)
	a.redis.CLI("FLUSHALL")
	eventually(t, 10*time.Second, func() bool { return a.redis.CLI("HEXISTS", "guard:seen:"+id, "alice") == "1" }, "broker-a records alice again")
	time.Sleep(3 * time.Second)
	t.Logf("seen: alice=%v bob=%v kinds=%v", a.seenRecord(id, "alice"), a.seenRecord(id, "bob"), atk37Kinds(a, id))
	return a, b
}

// TestAtk37NoFalseConflictAfterFlush: HOLDS. alice holds the client
// ID on broker-a; Redis is flushed; alice's device moves to broker-b
// (disconnects from a, connects on b) before the relist, and a SIGHUP hits
// both brokers. Only one principal ever used the client ID: no
// cross-principal finding.
func TestAtk37NoFalseConflictAfterFlush(t *testing.T) {
	const id = "atk37-same"
	a, b := twoBrokers(t)
	alice, code := a.dial(as("127.0.137.9", id, "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	a.waitLive(id, 1)
	time.Sleep(300 * time.Millisecond)
	a.redis.CLI("FLUSHALL")
	_ = alice.Disconnect()
	alice.Close()
	_, code = atk29Dial(b, as("127.0.137.10", id, "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	require.NoError(t, a.broker.Signal(syscall.SIGHUP))
	require.NoError(t, b.broker.Signal(syscall.SIGHUP))
	time.Sleep(4 * time.Second)
	a.redis.CLI("FLUSHALL")
	time.Sleep(3 * time.Second)
	k := atk37Kinds(a, id)
	t.Logf("kinds=%v", k)
	for _, s := range k {
		assert.False(t, strings.HasPrefix(s, "cross-principal"), "false cross-principal finding: %s", s)
	}
}

// TestAtk37ChurnLeavesNothingBehind: HOLDS. README Bounds: a
// disconnect "is never lost ... so no ended connection stays live in
// guard:conn:<id>"; seen records are kept conflict_window with a TTL.
// 200 connections with distinct client IDs (every 4th 1 000 bytes long),
// churned while Redis is flushed twice and the broker gets a SIGHUP: at
// the end no guard:conn key, the broker's brokerconns set empty, and every
// guard:seen key carries a TTL.
func TestAtk37ChurnLeavesNothingBehind(t *testing.T) {
	e := newEnv(t)
	long := strings.Repeat("L", 1000)
	for i := 0; i < 200; i++ {
		id := fmt.Sprintf("atk37-churn-%d", i)
		if i%4 == 0 {
			id += long
		}
		c, code := atk29Dial(e, as(fmt.Sprintf("127.0.138.%d", i%250+1), id, "alice", "alice-pw"))
		require.EqualValues(t, accepted, code)
		if i == 60 || i == 140 {
			e.redis.CLI("FLUSHALL")
		}
		if i == 100 {
			require.NoError(t, e.broker.Signal(syscall.SIGHUP))
		}
		time.Sleep(5 * time.Millisecond)
		_ = c.Disconnect()
		c.Close()
	}
	time.Sleep(4 * time.Second)
	conns := e.redis.CLI("--scan", "--pattern", "guard:conn:*")
	assert.Empty(t, conns, "no ended connection stays live")
	for _, k := range strings.Fields(e.redis.CLI("--scan", "--pattern", "guard:brokerconns:*")) {
		assert.Equal(t, "0", e.redis.CLI("SCARD", k), "%s empty", k)
	}
	seen := strings.Fields(e.redis.CLI("--scan", "--pattern", "guard:seen:*"))
	t.Logf("seen keys: %d", len(seen))
	for _, k := range seen {
		ttl, _ := strconv.Atoi(e.redis.CLI("PTTL", k))
		assert.Positive(t, ttl, "%s has a TTL", k[:min(len(k), 60)])
	}
}

// atk37OutageHitAndRun: alice holds id on broker-a; Redis dies (SIGKILL);
// bob takes id on broker-b for 300 ms during the outage and leaves; Redis
// comes back empty after down. flaps more outages follow, 1 s apart.
func atk37OutageHitAndRun(t *testing.T, id string, down time.Duration, flaps int) (*env, *env) {
	t.Helper()
	a, b := twoBrokers(t, "auth_opt_redis_timeout 1s")
	atk37Alice(t, a, "127.0.139.1", id)
	time.Sleep(300 * time.Millisecond)
	a.redis.Kill()
	time.Sleep(200 * time.Millisecond)
	bob, code := atk29Dial(b, as("127.0.139.2", id, "bob", "bob-pw"))
	require.EqualValues(t, accepted, code, "flag mode admits bob from the replica")
	time.Sleep(300 * time.Millisecond)
	_ = bob.Disconnect()
	bob.Close()
	time.Sleep(down)
	a.redis.Restart()
	for i := 0; i < flaps; i++ {
		time.Sleep(time.Second)
		a.redis.Kill()
		time.Sleep(500 * time.Millisecond)
		a.redis.Restart()
	}
	eventually(t, 15*time.Second, func() bool { return a.redis.CLI("HEXISTS", "guard:seen:"+id, "alice") == "1" }, "broker-a records alice again")
	time.Sleep(3 * time.Second)
	t.Logf("seen: alice=%v bob=%v kinds=%v", a.seenRecord(id, "alice"), a.seenRecord(id, "bob"), atk37Kinds(a, id))
	return a, b
}

// TestAtk37HitAndRunDuringOutage: HOLDS. README, "A connection whose connect or
// relist write failed ... is checked at its next relist ... a failed
// connect's against everything", and the disconnect "is never lost: it
// waits in a spill ... and is written once the queue is drained". Redis
// restarted empty brings a relist of alice, "checked against the client
// ID's connections made since it was, live or ended within
// conflict_window". Expected: a finding alice,bob.
func TestAtk37HitAndRunDuringOutage(t *testing.T) {
	const id = "atk37-down"
	a, b := atk37OutageHitAndRun(t, id, 2*time.Second, 0)
	assert.NotZero(t, atk37Logged(id, a, b), "bob used alice's live client ID during the outage: a finding is due")
}

// TestAtk37HitAndRunDuringFlappingOutage: HOLDS (the finding is logged before the
// next restart empties the stream). The same, with Redis dying and
// coming back empty twice more, 1 s apart.
func TestAtk37HitAndRunDuringFlappingOutage(t *testing.T) {
	const id = "atk37-flapdown"
	a, b := atk37OutageHitAndRun(t, id, 2*time.Second, 2)
	assert.NotZero(t, atk37Logged(id, a, b), "bob used alice's live client ID during the outage: a finding is due")
}

// TestAtk37HitAndRunDuringOutageSlowBroker: HOLDS. As TestAtk37HitAndRunDuringOutage
// (one outage, Redis back empty), but broker-b, where bob came and went, is
// paused (SIGSTOP) from just before Redis returns until 3 s after, so
// broker-a's relist of alice runs before broker-b writes bob's ended use
// (its spilled disconnect). README: "Detection does not depend on timing";
// a failed connect is "checked at its next relist ... against everything,
// as its connect would have been"; the disconnect "is never lost". Expected:
// a finding alice,bob (alice was live in Redis when bob connected).
func TestAtk37HitAndRunDuringOutageSlowBroker(t *testing.T) {
	const id = "atk37-downslow"
	a, b := twoBrokers(t, "auth_opt_redis_timeout 1s")
	atk37Alice(t, a, "127.0.139.3", id)
	time.Sleep(300 * time.Millisecond)
	a.redis.Kill()
	time.Sleep(200 * time.Millisecond)
	bob, code := atk29Dial(b, as("127.0.139.4", id, "bob", "bob-pw"))
	require.EqualValues(t, accepted, code, "flag mode admits bob from the replica")
	time.Sleep(300 * time.Millisecond)
	_ = bob.Disconnect()
	bob.Close()
	time.Sleep(time.Second)
	require.NoError(t, b.broker.Signal(syscall.SIGSTOP))
	cont := func() { _ = b.broker.Signal(syscall.SIGCONT) }
	t.Cleanup(cont)
	a.redis.Restart()
	eventually(t, 10*time.Second, func() bool { return a.redis.CLI("HEXISTS", "guard:seen:"+id, "alice") == "1" }, "broker-a records alice again")
	time.Sleep(3 * time.Second)
	cont()
	eventually(t, 10*time.Second, func() bool { return a.redis.CLI("HEXISTS", "guard:seen:"+id, "bob") == "1" }, "broker-b writes bob's use")
	time.Sleep(3 * time.Second)
	t.Logf("seen: alice=%v bob=%v kinds=%v", a.seenRecord(id, "alice"), a.seenRecord(id, "bob"), atk37Kinds(a, id))
	assert.NotZero(t, atk32Findings(a, id), "bob used alice's live client ID during the outage: a finding is due")
}

// TestAtk37EndStampedLateAfterHang: HOLDS (end within about 100 ms). README, Redis keys: guard:seen holds
// "principals that used a client ID within conflict_window: each one's
// latest connection, with its end once it ended"; Bounds: a disconnect the
// queue could not write "waits in a spill ... and is written once the
// queue is drained"; a cross-principal finding is due when "a client ID is
// used by a principal other than one that used it within conflict_window".
// bob leaves while Redis hangs (SIGSTOP, 5 s). Expected: his recorded end
// is when he left (within 1 s). If it is instead the time the spill was
// written, a hang longer than conflict_window (1m minimum, so not run here)
// makes the next principal's connect a false cross-principal finding: bob
// left 10 min ago, Redis hung 10 min, alice connects 1 s after it answers
// with conflict_window 1m.
func TestAtk37EndStampedLateAfterHang(t *testing.T) {
	const id = "atk37-late"
	e := newEnv(t, "auth_opt_redis_timeout 1s")
	bob, code := atk29Dial(e, as("127.0.139.5", id, "bob", "bob-pw"))
	require.EqualValues(t, accepted, code)
	e.waitLive(id, 1)
	eventually(t, 3*time.Second, func() bool { return e.seenRecord(id, "bob") != nil }, "bob's use recorded")
	require.NoError(t, e.redis.Signal(syscall.SIGSTOP))
	cont := func() { _ = e.redis.Signal(syscall.SIGCONT) }
	t.Cleanup(cont)
	time.Sleep(200 * time.Millisecond)
	left := time.Now().UnixMilli()
	_ = bob.Disconnect()
	bob.Close()
	time.Sleep(5 * time.Second)
	cont()
	var end float64
	eventually(t, 10*time.Second, func() bool {
		rec := e.seenRecord(id, "bob")
		if rec == nil || rec["disconnected_ms"] == nil {
			return false
		}
		end, _ = rec["disconnected_ms"].(float64)
		return true
	}, "bob's end recorded")
	t.Logf("bob left at %d, recorded end %d (%+d ms)", left, int64(end), int64(end)-left)
	assert.InDelta(t, float64(left), end, 1000, "bob's recorded end is when he left, not when Redis answered again")
}

// TestAtk37EndStampedLateConnectDuringHang: DEFECT, left as a Known limit (skipped). The same claims as
// TestAtk37EndStampedLateAfterHang, with bob connecting during the hang
// too (his connect's write fails): Redis hangs (SIGSTOP, 5 s); bob
// connects 200 ms in, stays 300 ms and leaves. Expected: his recorded end
// is when he left (within 1 s), not when Redis answered again. Observed
// (3 of 3 runs): disconnected_ms is +4 901 ms, the time Redis answered
// again (also seen in the two-broker outage tests here: +2.2 to +4.3 s).
// Consequence, by the same arithmetic: a device that connects and leaves
// during a hang longer than conflict_window is remembered as ending when
// Redis answers, so another principal's legitimate connect up to
// conflict_window later is a false cross-principal finding.
func TestAtk37EndStampedLateConnectDuringHang(t *testing.T) {
	t.Skip("Known limit, not fixed (README, Known limits: an end written after a hang): a connection whose connect's write failed during a hang is recorded as ending when Redis answers again")
	const id = "atk37-late2"
	e := newEnv(t, "auth_opt_redis_timeout 1s")
	require.NoError(t, e.redis.Signal(syscall.SIGSTOP))
	cont := func() { _ = e.redis.Signal(syscall.SIGCONT) }
	t.Cleanup(cont)
	time.Sleep(200 * time.Millisecond)
	bob, code := atk29Dial(e, as("127.0.139.7", id, "bob", "bob-pw"))
	require.EqualValues(t, accepted, code)
	time.Sleep(300 * time.Millisecond)
	left := time.Now().UnixMilli()
	_ = bob.Disconnect()
	bob.Close()
	time.Sleep(5 * time.Second)
	cont()
	var end float64
	var rec map[string]any
	eventually(t, 10*time.Second, func() bool {
		rec = e.seenRecord(id, "bob")
		if rec == nil || rec["disconnected_ms"] == nil {
			return false
		}
		end, _ = rec["disconnected_ms"].(float64)
		return true
	}, "bob's end recorded")
	t.Logf("bob left at %d, recorded %v (end %+d ms)", left, rec, int64(end)-left)
	assert.InDelta(t, float64(left), end, 1000, "bob's recorded end is when he left, not when Redis answered again")
}

// TestAtk37LongIDHitAndRunAfterFlush: HOLDS. A client that lies with packet
// sizes: the hit-and-run after a flush (TestAtk32HitAndRunAfterFlush,
// which holds) with client IDs kept in their tracking form (README: "whole
// up to 256 bytes, its hash beyond ... and for one starting with
// sha256:"): 65 535 bytes, 257 bytes, and one starting with "sha256:".
// Expected: a finding for each.
func TestAtk37LongIDHitAndRunAfterFlush(t *testing.T) {
	for name, id := range map[string]string{
		"65535": strings.Repeat("x", 65535),
		"257":   strings.Repeat("y", 257),
		"sha":   "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
	} {
		t.Run(name, func(t *testing.T) {
			a, b := twoBrokers(t)
			_, code := a.dial(as("127.0.140.1", id, "alice", "alice-pw"))
			require.EqualValues(t, accepted, code)
			time.Sleep(1500 * time.Millisecond)
			a.redis.CLI("FLUSHALL")
			bob, code := atk29Dial(b, as("127.0.140.2", id, "bob", "bob-pw"))
			require.EqualValues(t, accepted, code)
			time.Sleep(50 * time.Millisecond)
			_ = bob.Disconnect()
			bob.Close()
			time.Sleep(4 * time.Second)
			f := a.findings()
			t.Logf("findings: %d", len(f))
			assert.NotEmpty(t, f, "bob used alice's live client ID after the flush: a finding is due")
		})
	}
}
