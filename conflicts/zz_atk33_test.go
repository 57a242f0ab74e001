package conflicts

import (
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// atk33Tracker is redisTracker with its log sink kept.
func atk33Tracker(t *testing.T, r *testenv.Redis, instance string, opts Options) (*Tracker, *recStore, *clock, *logSink) {
	t.Helper()
	s := newRecStore(t, r)
	c, clk, ls := tracker(t, s, opts)
	c.instance = instance
	return c, s, clk, ls
}

func atk33Findings(s *recStore, id string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.findings[id]...)
}

// Was a DEFECT (fixed: a relist evaluates nothing of a connection Redis
// listed before its write): a relist after a lease lapse with NO flush re-reports an overlap
// that the other principal's own connect reported already. README
// ("Client-ID conflicts", "A running broker records its connections in
// Redis again"): each relisted connection is checked against the
// connections made since it was, so that "another principal that took the
// client ID while it was not listed (after a flush, before the relist) is
// flagged then, as its connect would have been had the entry been there";
// relistConns' doc: "a relist is no new use". conflicts/lease.go
// relistConns (34b3245) evaluates every seen record made since the
// relisted connection, whether or not alice was listed when it was made.
//
// alice holds x on ia; bob connects x on ib while alice is listed (his
// connect flags alice,bob: reported) and leaves. Nothing is flushed. ia is
// paused past its lease (its lease entry gone); its next renewal asks for
// a relist, and the relist of alice runs. Two hours on (findings_fold 1h
// past) the relist reports alice,bob again as a fresh finding (logged,
// published, counted, a second stream entry); within findings_fold it
// counts a "repeat" that never happened into the fold's count. (And a
// lapse asks for two relists: the second, 6 s on, counts it once more.)
//
// Observed: a second AddFinding of alice,bob at ia's relist; past the fold
// period, a second entry in guard:findings. Expected: none: bob's use was
// made while alice was listed, and its connect reported it.
func TestAtk33RelistAfterLapseReReportsOldOverlap(t *testing.T) {
	r := testenv.StartRedis(t)
	for _, tc := range []struct {
		name  string
		after time.Duration
	}{{"past_fold", 2 * time.Hour}, {"within_fold", 10 * time.Minute}} {
		t.Run(tc.name, func(t *testing.T) {
			r.CLI("FLUSHALL")
			opts := testOptions()
			a, as, clk, alog := atk33Tracker(t, r, "ia", opts)
			b, bs, _ := redisTracker(t, r, "ib", opts)
			b.now = clk.now
			var asked atomic.Int32
			a.relist = func() { asked.Add(1) }
			a.renew()
			b.renew()
			a.renew()

			x := a.NewConn("alice", "192.0.2.1", clk.now())
			a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x}})
			clk.advance(time.Second)
			y := b.NewConn("bob", "192.0.2.2", clk.now())
			b.handleSafely([]event{{kind: evConnect, clientID: "x", conn: y}})
			clk.advance(time.Second)
			b.handleSafely([]event{{kind: evDisconnect, clientID: "x", conn: y}})
			require.Equal(t, []string{"alice,bob"}, atk33Findings(bs, "x"), "bob's connect reported the overlap")
			require.Equal(t, "1", r.CLI("XLEN", "guard:findings"))

			clk.advance(tc.after)
			// ia paused past its lease; nothing else lost.
			r.CLI("ZREM", "guard:brokers", "ia")
			a.renew()
			require.EqualValues(t, 1, asked.Load(), "the lapsed lease asked for a relist")
			linesBefore := strings.Count(alog.all(), "event=finding")
			a.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x}, {kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
			got := atk33Findings(as, "x")
			t.Logf("findings at ia's relist: %v; stream %s; log: %s", got, r.CLI("XLEN", "guard:findings"), alog.all())
			assert.Empty(t, got, "no finding: bob's use was made while alice was listed, and his connect reported it")
			assert.Equal(t, linesBefore, strings.Count(alog.all(), "event=finding"), "no finding logged")
			assert.Equal(t, "1", r.CLI("XLEN", "guard:findings"), "one finding in the stream")
			for _, k := range strings.Fields(r.CLI("KEYS", "guard:fold:*")) {
				assert.Equal(t, "1", r.CLI("HGET", k, "count"), "the fold counts bob's one use, not the relist")
			}
		})
	}
}

// Was a DEFECT (fixed: a relist evaluates nothing of a connection Redis
// listed before its write): a relist after Redis restarted from a snapshot
// flags another broker's ghost made since the relisted connection, and
// names it live.
// README: each relisted connection is checked against the connections made
// since it was, "(an older connection was there at the relisted one's
// connect, which evaluated it, or is a ghost that its own broker
// removes)"; relistConns evaluates live entries of alive brokers made
// since the relisted connection, a ghost included.
//
// alice holds x on ia; carol connects x on ib (her connect reports
// alice,carol), a snapshot is taken while carol holds x, carol leaves.
// Two hours later Redis restarts from that snapshot (carol's entry, and
// her use without its end, are back, and alice's entry). ia relists
// first.
//
// Observed: a new finding alice,carol, carol shown live (no end), though
// she has held nothing for two hours (ib's removal drops her ghost a
// moment later). Expected: no finding (or at least not carol as live).
func TestAtk33RelistFlagsASnapshotGhostMadeSince(t *testing.T) {
	r := testenv.StartRedis(t)
	kb := keys.Builder{Prefix: "guard:"}
	opts := testOptions()
	a, as, clk, alog := atk33Tracker(t, r, "ia", opts)
	b, _, _ := redisTracker(t, r, "ib", opts)
	b.now = clk.now
	a.renew()
	b.renew()
	a.renew()

	x := a.NewConn("alice", "192.0.2.1", clk.now())
	a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x}})
	clk.advance(time.Second)
	w := b.NewConn("carol", "192.0.2.3", clk.now())
	b.handleSafely([]event{{kind: evConnect, clientID: "x", conn: w}})
	// The snapshot: carol live, her use without its end.
	ghost := r.CLI("HGET", kb.Conn("x"), "ib")
	carolSeen := r.CLI("HGET", kb.Seen("x"), "carol")
	require.NotEmpty(t, ghost)
	clk.advance(time.Second)
	b.handleSafely([]event{{kind: evDisconnect, clientID: "x", conn: w}})
	clk.advance(2 * time.Hour)

	// Redis restarts from the snapshot (fold records past findings_fold).
	// Changed with the fix (its author): alice's entry stays, as the
	// snapshot, taken after her connect, holds it; the test removed it,
	// which no snapshot does. Without her entry, carol's use is one made
	// while alice was not listed (after a flush, before the snapshot),
	// which no connect evaluated, and the relist rightly flags it
	// (TestRelistFlagsAHitAndRunAfterAFlush).
	r.CLI("HSET", kb.Conn("x"), "ib", ghost)
	r.CLI("SADD", kb.BrokerConns("ib"), "x")
	r.CLI("HSET", kb.Seen("x"), "carol", carolSeen)
	before := len(atk33Findings(as, "x"))
	linesBefore := strings.Count(alog.all(), "event=finding")

	a.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x}, {kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
	b.handleSafely([]event{{kind: evRelistDone, conn: Conn{Seq: b.LastSeq()}}})
	require.Equal(t, "1", r.CLI("HLEN", kb.Conn("x")), "carol's ghost is gone: alice alone holds x")
	t.Logf("findings %v; log: %s", atk33Findings(as, "x"), alog.all())
	assert.Len(t, atk33Findings(as, "x"), before, "no new finding: carol has held nothing for two hours")
	assert.Equal(t, linesBefore, strings.Count(alog.all(), "event=finding"), "no finding logged at the relist")
}

// DEFECT, left as a Known limit (skipped): with the brokers' clocks 10 s apart, a relist misses the
// hit-and-run it was changed to catch (34b3245). README: "another
// principal that took the client ID while it was not listed (after a
// flush, before the relist) is flagged then, ... also if it has let go
// again". relistConns' 'since' filter compares the seen record's
// ConnectedMs, stamped by ib's clock, with the relisted connection's,
// stamped by ia's: a use made after alice connected but stamped earlier
// than her connect is dropped. (The same holds for a live one, since
// atk30/atk31.)
//
// ia's clock runs 10 s ahead of ib's. alice connects x on ia; 2 s later
// (real time) Redis is flushed; 1 s later bob takes x on ib (nothing live)
// and leaves 50 ms later; ia relists.
//
// Observed: no finding. Expected: alice,bob (bob used x while alice held
// it).
func TestAtk33RelistMissesHitAndRunUnderClockSkew(t *testing.T) {
	t.Skip("Known limit, not fixed (README, Known limits: brokers' clocks): the relist compares times stamped by two brokers' clocks, as leases and conflict_window do; a skew larger than the relisted connection's age hides a use")
	r := testenv.StartRedis(t)
	opts := testOptions()
	a, as, aclk := redisTracker(t, r, "ia", opts)
	b, bs, bclk := redisTracker(t, r, "ib", opts)
	aclk.advance(10 * time.Second) // ia's clock is 10 s ahead
	a.renew()
	b.renew()
	a.renew()

	x := a.NewConn("alice", "192.0.2.1", aclk.now())
	a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x}})
	aclk.advance(2 * time.Second)
	bclk.advance(2 * time.Second)
	r.CLI("FLUSHALL")
	a.renew()
	b.renew()
	aclk.advance(time.Second)
	bclk.advance(time.Second)
	y := b.NewConn("bob", "192.0.2.2", bclk.now())
	b.handleSafely([]event{{kind: evConnect, clientID: "x", conn: y}})
	aclk.advance(50 * time.Millisecond)
	bclk.advance(50 * time.Millisecond)
	b.handleSafely([]event{{kind: evDisconnect, clientID: "x", conn: y}})
	require.Empty(t, atk33Findings(bs, "x"), "bob's connect found nothing live")

	a.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x}, {kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
	assert.Equal(t, []string{"alice,bob"}, atk33Findings(as, "x"), "bob used x while alice held it")
}

// HOLDS: with ia and ib on one clock, a principal that took x after the
// flush and let go is flagged at the relist even when it had a seen record
// (of an older use, before alice came, flagged then) that its new use
// overwrote, and carol, who let go before alice came, is not named again;
// the relisting broker's own earlier user of x (dave, on ia, displaced by
// alice's takeover before she was relisted) is not named either.
func TestAtk33RelistNamesOnlyUsesSince(t *testing.T) {
	r := testenv.StartRedis(t)
	opts := testOptions()
	a, as, clk, _ := atk33Tracker(t, r, "ia", opts)
	b, _, _ := redisTracker(t, r, "ib", opts)
	b.now = clk.now
	a.renew()
	b.renew()
	a.renew()

	// bob and carol used x on ib, and let go.
	for _, p := range []string{"bob", "carol"} {
		c := b.NewConn(p, "192.0.2.9", clk.now())
		b.handleSafely([]event{{kind: evConnect, clientID: "x", conn: c}})
		clk.advance(time.Second)
		b.handleSafely([]event{{kind: evDisconnect, clientID: "x", conn: c}})
		clk.advance(time.Second)
	}
	// dave holds x on ia; alice takes it over there.
	d := a.NewConn("dave", "192.0.2.4", clk.now())
	a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: d}})
	clk.advance(time.Second)
	x := a.NewConn("alice", "192.0.2.1", clk.now())
	a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x, other: &d}})
	n := len(atk33Findings(as, "x"))
	r.CLI("FLUSHALL")
	a.renew()
	b.renew()
	clk.advance(time.Minute) // past seenRefresh: bob's new use is recorded
	y := b.NewConn("bob", "192.0.2.2", clk.now())
	b.handleSafely([]event{{kind: evConnect, clientID: "x", conn: y}})
	clk.advance(100 * time.Millisecond)
	b.handleSafely([]event{{kind: evDisconnect, clientID: "x", conn: y}})

	a.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x}, {kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
	got := atk33Findings(as, "x")[n:]
	assert.Equal(t, []string{"alice,bob"}, got, "bob only: carol and dave let go before alice held x")
}

// atk33EndlessGhosts is deadlineGhosts without the deadline failure: a
// brokerconns set with no end, each page 20 ms.
type atk33EndlessGhosts struct {
	deadlineGhosts
}

// Was a DEFECT (fixed: a removal yields to a later relist's, RelistDone's ghostsUpTo): the removals of two relists run side by side, each a chain of
// continuations, and a round of the worker spends a budget on each: the
// broker thread's events wait for N x ghostBudget (N relists whose
// removals have not ended), not "at most 4 s at a time". README: "the
// removal reads the set 500 members a round trip for at most 4 s at a
// time (the worker's bound for one part is 5 s): a larger set ... is done
// in parts, each going on from where the one before stopped, after the
// events queued meanwhile". conflicts/tracker.go handlePart queues each
// removal's continuation; nothing ends an older relist's removal when a
// newer one starts (whose own removal covers the same set, from its
// start, with a higher maxSeq). A lapse alone asks for two relists 6 s
// apart (renew's relistAgainAt); a full queue's dropped connect or a
// failed batch asks for more (at most one a second), and the more time
// removals take, the likelier those become.
//
// Here ghostBudget is 300 ms and the set endless (20 ms a page): three
// relists' removals, then one round of the worker.
//
// Observed: three continuations queued; the round takes about 3 x 300 ms.
// Expected: one removal going on (the newest), a round of about 300 ms.
func TestAtk33OverlappingRemovalsMultiplyTheWait(t *testing.T) {
	defer func(d time.Duration) { ghostBudget = d }(ghostBudget)
	ghostBudget = 300 * time.Millisecond
	g := &atk33EndlessGhosts{deadlineGhosts{Store: newMemStore()}}
	clk := newClock()
	a := New(testOptions(), Deps{Store: g, Now: clk.now, Relist: func() {}})
	// Changed with the fix (its author): each relist's end is queued by
	// RelistDone, as relistLoop does (before, the events were handed in
	// directly, which told the tracker of no newer relist), and the
	// worker takes what is queued after each.
	for seq := uint64(7); seq <= 9; seq++ {
		require.True(t, a.RelistDone(seq))
		a.handleSafely(a.events.Take()) // its continuation stays queued
	}
	evs := a.events.Take()
	start := time.Now()
	a.handleSafely(evs)
	took := time.Since(start)
	left := a.events.Take()
	t.Logf("continuations queued %d; one round took %v; then %d queued", len(evs), took, len(left))
	assert.LessOrEqual(t, len(evs), 1, "one removal goes on, not one per relist")
	assert.Less(t, took, 2*ghostBudget, "a round of the worker spends one budget on removals")
}

// HOLDS: a removal stopped after a page or two (ghostBudget 1 ms: a
// part) goes on from its cursor and ends: over a real brokerconns set of
// 3 000 client IDs (6+ pages of ~500), it ends within a few more parts
// than pages, removes the ghosts it meets (the first and the last in SSCAN
// order), keeps the held connection, and asks for no relist.
func TestAtk33ContinuationEnds(t *testing.T) {
	defer func(d time.Duration) { ghostBudget = d }(ghostBudget)
	r := testenv.StartRedis(t)
	kb := keys.Builder{Prefix: "guard:"}
	var asked atomic.Int32
	a, as, clk := redisTracker(t, r, "ia", testOptions())
	a.relist = func() { asked.Add(1) }
	a.renew()
	set := kb.BrokerConns("ia")
	ms := make([]any, 0, 3000)
	for i := 0; i < 3000; i++ {
		ms = append(ms, "m-"+strconv.Itoa(i))
	}
	require.NoError(t, as.Client().SAdd(t.Context(), set, ms...).Err())
	held := a.NewConn("alice", "192.0.2.1", clk.now())
	a.handleSafely([]event{{kind: evConnect, clientID: "m-5", conn: held}})
	var order []string
	for cursor := uint64(0); ; {
		ids, next, err := as.Client().SScan(t.Context(), set, cursor, "", 500).Result()
		require.NoError(t, err)
		order = append(order, ids...)
		if cursor = next; cursor == 0 {
			break
		}
	}
	ghosts := []string{order[0], order[len(order)-1]}
	for _, id := range ghosts {
		if id == "m-5" {
			t.Skip("the held client ID is first or last in SSCAN order")
		}
		c := a.NewConn("bob", "192.0.2.2", clk.now())
		a.handleSafely([]event{{kind: evConnect, clientID: id, conn: c}})
		g := r.CLI("HGET", kb.Conn(id), "ia")
		a.handleSafely([]event{{kind: evDisconnect, clientID: id, conn: c}})
		r.CLI("HSET", kb.Conn(id), "ia", g)
		r.CLI("SADD", set, id)
	}
	ghostBudget = time.Millisecond
	evs := []event{{kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}}
	parts := 0
	for ; len(evs) > 0 && parts < 100; parts++ {
		a.handleSafely(evs)
		evs = a.events.Take()
	}
	t.Logf("parts: %d", parts)
	assert.Empty(t, evs, "the removal ended")
	assert.LessOrEqual(t, parts, 40)
	for _, id := range ghosts {
		assert.Equal(t, "0", r.CLI("HLEN", kb.Conn(id)), "ghost %s removed", id)
	}
	assert.Equal(t, "1", r.CLI("HLEN", kb.Conn("m-5")), "held: kept")
	assert.Zero(t, asked.Load(), "no relist asked for")
}

// HOLDS: a removal whose Redis stops answering (CLIENT PAUSE 8 s) keeps the
// worker no longer than its part's 5 s bound, and goes on (its
// continuation queued) or asks for a relist: it is not lost.
// SUSPECTED (logged, not asserted): which of the two is a coin toss (1 run
// in 3 asked for a relist here): a page stopped by the part's bound is
// still told from a failing Redis by ctx.Err() alone, the race 0fa151f
// removed only between pages (its commit: "ctx stays the bound of one slow
// page").
func TestAtk33RemovalOnAPausedRedisIsBounded(t *testing.T) {
	r := testenv.StartRedis(t)
	kb := keys.Builder{Prefix: "guard:"}
	var asked atomic.Int32
	a, as, _ := redisTracker(t, r, "ia", testOptions())
	a.relist = func() { asked.Add(1) }
	a.renew()
	require.NoError(t, as.Client().SAdd(t.Context(), kb.BrokerConns("ia"), "g").Err())
	r.CLI("CLIENT", "PAUSE", "8000")
	start := time.Now()
	a.handleSafely([]event{{kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
	took := time.Since(start)
	evs := a.events.Take()
	t.Logf("took %v; continuations %d; relists asked %d", took, len(evs), asked.Load())
	assert.Less(t, took, 6*time.Second, "bounded by its part's 5 s")
	assert.True(t, len(evs) == 1 || asked.Load() > 0, "it goes on, or a relist is asked for")
	time.Sleep(8*time.Second - time.Since(start) + 100*time.Millisecond)
}
