package conflicts

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// atk35Store is a real store (recStore) that can be down (every
// WriteConns fails before it reaches Redis) or have its reaps fail (a
// reap Redis did not answer within renewBound).
type atk35Store struct {
	*recStore
	down     atomic.Bool
	reapFail atomic.Bool
}

func (s *atk35Store) WriteConns(ctx context.Context, ws []store.ConnWrite, window time.Duration) ([]store.State, error) {
	if s.down.Load() {
		return nil, errors.New("dial tcp 127.0.0.1:6379: connect: connection refused")
	}
	return s.recStore.WriteConns(ctx, ws, window)
}

func (s *atk35Store) ReapCount(ctx context.Context, instance string, endMs int64, lease, window time.Duration) (int, error) {
	if s.reapFail.Load() {
		return 0, errors.New("store: reap: i/o timeout")
	}
	return s.recStore.ReapCount(ctx, instance, endMs, lease, window)
}

func newAtk35Store(t *testing.T, r *testenv.Redis) *atk35Store {
	s := &atk35Store{recStore: newRecStore(t, r)}
	return s
}

// Was a DEFECT (fixed: a relist skips only a use Redis held within
// conflict_window, Prior.Seen and its time): a reap's end hides, for good, another principal that took the
// client ID more than conflict_window after it, while the reaped
// connection was still held by its broker.
//
// README ("Client-ID conflicts", "A running broker records its
// connections in Redis again"): "One Redis still held is checked against
// nothing: every connect since saw it (its live entry, or, after a reap,
// its use with the reap's end, which a connect flags within
// conflict_window too), so a lapsed lease, a reap ... reports nothing
// again". conflicts/lease.go relistConns skips a connection whose
// Prior.Seen is set. But a connect flags the reap's end only within
// conflict_window of it (rules.go evaluate: last < now-window is
// skipped): a connect later than that, before the relist, saw nothing.
// Before daf3a57 the check ran from max(ConnectedMs, EndedMs) and caught
// it.
//
// conflict_window 1 min. alice holds x on ia; ia pauses past its lease
// and is reaped (end E); 2 min later bob takes x on ib (his connect finds
// alice's use ended 2 min ago: nothing) and stays; ia comes back and
// relists alice. alice and bob now both hold x live.
//
// Observed: no finding at all. Expected: alice,bob at the relist (bob
// took x while alice was not listed and holds it live with her).
//
// The control subtest (seen_lost: alice's ended use gone too, as after a
// flush) is flagged at the relist: only Prior.Seen hides it.
func TestAtk35ReapEndPastWindowHidesTakeover(t *testing.T) {
	r := testenv.StartRedis(t)
	for _, held := range []bool{true, false} {
		t.Run(map[bool]string{true: "seen_held", false: "seen_lost"}[held], func(t *testing.T) {
			atk35ReapPastWindow(t, r, held)
		})
	}
}

func atk35ReapPastWindow(t *testing.T, r *testenv.Redis, held bool) {
	r.CLI("FLUSHALL")
	opts := testOptions()
	opts.Window = time.Minute
	a, as, clk := redisTracker(t, r, "ia", opts)
	b, bs, _ := redisTracker(t, r, "ib", opts)
	b.now = clk.now
	a.renew()
	b.renew()
	a.renew()

	x := a.NewConn("alice", "192.0.2.1", clk.now())
	a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x}})
	clk.advance(10 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, bs.Store.Reap(ctx, "ia", clk.now().UnixMilli(), 0, opts.Window))
	require.Empty(t, r.CLI("HGET", "guard:conn:x", "ia"), "reaped")
	clk.advance(2 * time.Minute)
	y := b.NewConn("bob", "192.0.2.2", clk.now())
	b.handleSafely([]event{{kind: evConnect, clientID: "x", conn: y}})
	require.Empty(t, atk33Findings(bs, "x"), "bob's connect: alice's use ended past the window")
	require.Contains(t, r.CLI("HGET", "guard:seen:x", "alice"), "disconnected_ms", "alice's ended use is held")

	if !held {
		r.CLI("HDEL", "guard:seen:x", "alice")
	}
	clk.advance(time.Second)
	a.renew()
	a.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x}, {kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
	require.Contains(t, r.CLI("HGET", "guard:conn:x", "ia"), "alice", "relisted")
	require.Contains(t, r.CLI("HGET", "guard:conn:x", "ib"), "bob", "bob holds x live")
	got := append(atk33Findings(as, "x"), atk33Findings(bs, "x")...)
	assert.Equal(t, []string{"alice,bob"}, got, "alice and bob hold x live at once; bob took it while alice was reaped")
}

// Was a DEFECT (fixed: a live entry alone no longer skips a relist's
// check): a lapsed lease whose reap has not run (failed, or a large reap
// still under way over several renewals) hides, for good, another
// principal that takes the client ID meanwhile.
//
// README: "One Redis still held is checked against nothing: every connect
// since saw it (its live entry ...), so a lapsed lease ... reports nothing
// again". But a connect does not count a live entry of a broker whose
// lease ran out (rules.go evaluate: alive[c.Instance]), and the
// principal's use without an end counts only from its connect, within
// conflict_window: bob's connect saw alice's entry and ignored it. The
// relist then finds alice listed (Prior.Listed) and checks nothing.
//
// conflict_window 1 min (a device connected longer than the window: with
// the 31d default, one connected over a month). alice holds x on ia for
// 2 min; ia's lease runs out; ib's renewal finds it dead and its reap
// fails; bob takes x on ib (nothing found) and stays; ia comes back and
// relists.
//
// Observed: no finding. Expected: alice,bob (both hold x live).
func TestAtk35UnreapedLapsedLeaseHidesTakeover(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("FLUSHALL")
	opts := testOptions()
	opts.Window = time.Minute
	a, as, clk := redisTracker(t, r, "ia", opts)
	bst := newAtk35Store(t, r)
	b, _, _ := tracker(t, bst, opts)
	b.instance = "ib"
	b.now = clk.now
	a.renew()
	b.renew()
	a.renew()

	x := a.NewConn("alice", "192.0.2.1", clk.now())
	a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x}})
	clk.advance(2 * time.Minute)
	// ia's lease ran out (paused); ib's renewal finds it dead, and its reap
	// is not answered in time.
	r.CLI("ZADD", "guard:brokers", "1", "ia")
	bst.reapFail.Store(true)
	b.renew()
	require.False(t, (*b.live.Load())["ia"], "ib holds ia dead")
	require.Contains(t, r.CLI("HGET", "guard:conn:x", "ia"), "alice", "not reaped")
	y := b.NewConn("bob", "192.0.2.2", clk.now())
	b.handleSafely([]event{{kind: evConnect, clientID: "x", conn: y}})
	require.Empty(t, atk33Findings(bst.recStore, "x"), "bob's connect ignored alice's entry: ia's lease had run out")

	clk.advance(time.Second)
	a.renew() // lapsed: ia relists
	b.renew()
	a.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x}, {kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
	got := append(atk33Findings(as, "x"), atk33Findings(bst.recStore, "x")...)
	assert.Equal(t, []string{"alice,bob"}, got, "alice and bob hold x live at once")
}

// Was a DEFECT (fixed: a failed part owes no connect whose disconnect it
// holds; a complete relist forgets what it did not hand over): a connect whose disconnect is in the same failed batch is owed
// a check for ever (Tracker.unchecked leaks).
//
// README: a connection whose connect write failed "is checked at its next
// relist ... (the worker remembers up to 65 536 such"; tracker.go:
// "each leaves at that relist or its disconnect". batch.go writes()
// deletes the disconnect's Seq from unchecked while it builds the batch's
// writes, before the write; tracker.go handlePart owes every connect of
// the failed part after that: the ended connection is owed again, and
// neither a relist (it is not held) nor a disconnect ever comes for it.
// A device reconnecting in a loop while Redis is down leaks one entry per
// loop.
//
// Observed: unchecked keeps the ended connection after a relist and its
// RelistDone. Expected: nothing owed.
func TestAtk35FailedPairLeaksUnchecked(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("FLUSHALL")
	st := newAtk35Store(t, r)
	a, clk, _ := tracker(t, st, testOptions())
	a.instance = "ia"
	a.relist = func() {}
	a.renew()
	a.renew()

	held := a.NewConn("carol", "192.0.2.3", clk.now())
	a.handleSafely([]event{{kind: evConnect, clientID: "held", conn: held}})
	st.down.Store(true)
	x := a.NewConn("alice", "192.0.2.1", clk.now())
	a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x}, {kind: evDisconnect, clientID: "x", conn: x}})
	st.down.Store(false)
	clk.advance(time.Second)
	// The relist the failure asked for: carol's connection alone is held.
	a.handleSafely([]event{{kind: evRelist, clientID: "held", conn: held}, {kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
	assert.Empty(t, a.unchecked, "alice's connection ended: nothing is owed to it")
}

// Was a DEFECT (fixed as above): the entries TestAtk35FailedPairLeaksUnchecked leaks fill
// Tracker.unchecked (65 536), after which a connect batch whose reply is
// lost is never flagged again (TestAtk34ConnectReplyLostNeverFlagged's
// defect is back): owe drops it, the relist reads Prior.Listed and checks
// nothing.
//
// 65 536 reconnects of a device in loop while Redis is unreachable; Redis
// back; bob holds x on ib; alice connects x on ia, the reply lost.
//
// Observed: no finding. Expected: alice,bob.
func TestAtk35LeakedUncheckedDisablesOwedCheck(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("FLUSHALL")
	opts := testOptions()
	st := newAtk35Store(t, r)
	ls := &lostReplyStore{recStore: st.recStore}
	down := &atk35Store{recStore: st.recStore}
	// One tracker on a store that is down, then answers but loses a reply.
	sw := &switchStore{atk35Store: down, lost: ls}
	a, clk, _ := tracker(t, sw, opts)
	a.instance = "ia"
	a.relist = func() {}
	b, bs, _ := redisTracker(t, r, "ib", opts)
	b.now = clk.now
	a.renew()
	b.renew()
	a.renew()

	down.down.Store(true)
	const pairs = uncheckedMax
	batch := make([]event, 0, 8192)
	for i := 0; i < pairs; i++ {
		c := a.NewConn("dev", "192.0.2.9", clk.now())
		batch = append(batch, event{kind: evConnect, clientID: "loop", conn: c}, event{kind: evDisconnect, clientID: "loop", conn: c})
		if len(batch) == cap(batch) {
			a.handleSafely(batch)
			batch = batch[:0]
		}
	}
	if len(batch) > 0 {
		a.handleSafely(batch)
	}
	down.down.Store(false)
	t.Logf("unchecked after the outage: %d (none of them held)", len(a.unchecked))
	a.handleSafely([]event{{kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})

	clk.advance(time.Second)
	y := b.NewConn("bob", "192.0.2.2", clk.now())
	b.handleSafely([]event{{kind: evConnect, clientID: "x", conn: y}})
	clk.advance(time.Second)
	x := a.NewConn("alice", "192.0.2.1", clk.now())
	ls.loseAny.Store(true)
	a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x}})
	require.Contains(t, r.CLI("HGET", "guard:conn:x", "ia"), "alice", "Redis applied the connect")
	// Changed with the fix (its author): the map no longer fills with
	// ended connections, so alice's check is owed; before, this read
	// require.Len(t, a.unchecked, uncheckedMax).
	require.Len(t, a.unchecked, 1, "only alice's check is owed")
	a.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x}, {kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
	got := append(atk33Findings(st.recStore, "x"), atk33Findings(bs, "x")...)
	assert.Equal(t, []string{"alice,bob"}, got, "alice and bob hold x at once")
}

// switchStore is down while atk35Store.down is set, else a lostReplyStore.
type switchStore struct {
	*atk35Store
	lost *lostReplyStore
}

func (s *switchStore) WriteConns(ctx context.Context, ws []store.ConnWrite, window time.Duration) ([]store.State, error) {
	if s.down.Load() {
		return s.atk35Store.WriteConns(ctx, ws, window)
	}
	return s.lost.WriteConns(ctx, ws, window)
}

// Was a DEFECT (fixed: an owed check whose write Redis took looks only at
// uses made before its failure): a connect whose reply was lost is reported twice: once by the
// other principal's connect, which saw it live, once more by its owed
// check at the relist, which checks everything "as a connect" (from 0).
//
// README: "One Redis still held is checked against nothing: every connect
// since saw it"; relistConns' doc: "a relist is no new use", "The past
// users are not evaluated again" (atk33: an overlap reported at its
// connect was reported again at each relist). The owed check (daf3a57)
// evaluates every live and seen connection, those whose connects came
// after the write Redis took (and flagged it) included.
//
// alice connects x on ia, Redis applies it and the reply is lost; bob
// connects x on ib, sees alice live: alice,bob reported; ia's relist.
//
// Observed: alice,bob reported twice (a second AddFinding; a second
// stream entry past findings_fold). Expected: once.
func TestAtk35OwedConnectReReportsOverlap(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("FLUSHALL")
	opts := testOptions()
	rs := newRecStore(t, r)
	ls := &lostReplyStore{recStore: rs}
	a, clk, _ := tracker(t, ls, opts)
	a.instance = "ia"
	a.relist = func() {}
	b, bs, _ := redisTracker(t, r, "ib", opts)
	b.now = clk.now
	a.renew()
	b.renew()
	a.renew()

	x := a.NewConn("alice", "192.0.2.1", clk.now())
	ls.loseAny.Store(true)
	a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x}})
	require.Contains(t, r.CLI("HGET", "guard:conn:x", "ia"), "alice", "Redis applied the connect")
	clk.advance(time.Second)
	y := b.NewConn("bob", "192.0.2.2", clk.now())
	b.handleSafely([]event{{kind: evConnect, clientID: "x", conn: y}})
	require.Equal(t, []string{"alice,bob"}, atk33Findings(bs, "x"), "bob's connect saw alice live")

	clk.advance(2 * time.Hour) // past findings_fold
	a.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x}, {kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
	got := append(atk33Findings(rs, "x"), atk33Findings(bs, "x")...)
	t.Logf("findings: %v; stream entries %s", got, r.CLI("XLEN", "guard:findings"))
	assert.Equal(t, []string{"alice,bob"}, got, "one overlap, reported by bob's connect")
}

// The same for a relist whose write Redis took and did not answer: bob's
// connect, made after it, saw alice listed and reported the overlap; the
// owed check at the next relist (from alice's connect) reports it again.
// Was a DEFECT (fixed as above), as TestAtk35OwedConnectReReportsOverlap.
func TestAtk35OwedRelistReReportsOverlap(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("FLUSHALL")
	opts := testOptions()
	rs := newRecStore(t, r)
	ls := &lostReplyStore{recStore: rs}
	a, clk, _ := tracker(t, ls, opts)
	a.instance = "ia"
	a.relist = func() {}
	b, bs, _ := redisTracker(t, r, "ib", opts)
	b.now = clk.now
	a.renew()
	b.renew()
	a.renew()

	x := a.NewConn("alice", "192.0.2.1", clk.now())
	a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x}})
	clk.advance(time.Second)
	r.CLI("FLUSHALL")
	a.renew()
	b.renew()
	ls.lose.Store(true)
	a.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x}})
	require.Contains(t, r.CLI("HGET", "guard:conn:x", "ia"), "alice", "Redis applied the relist")
	clk.advance(time.Second)
	y := b.NewConn("bob", "192.0.2.2", clk.now())
	b.handleSafely([]event{{kind: evConnect, clientID: "x", conn: y}})
	require.Equal(t, []string{"alice,bob"}, atk33Findings(bs, "x"), "bob's connect saw alice live")
	clk.advance(2 * time.Hour)
	a.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x}, {kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
	got := append(atk33Findings(rs, "x"), atk33Findings(bs, "x")...)
	assert.Equal(t, []string{"alice,bob"}, got, "one overlap, reported by bob's connect")
}

// HOLDS: an owed check leaves at the connection's disconnect in a later
// batch (a failed relist write, then the client leaves), and at its next
// relist (a failed connect batch, then the relist).
func TestAtk35OwedLeavesAtDisconnectAndRelist(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("FLUSHALL")
	st := newAtk35Store(t, r)
	a, clk, _ := tracker(t, st, testOptions())
	a.instance = "ia"
	a.relist = func() {}
	a.renew()
	a.renew()

	x := a.NewConn("alice", "192.0.2.1", clk.now())
	z := a.NewConn("carol", "192.0.2.3", clk.now())
	a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x}})
	st.down.Store(true)
	a.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x}})
	a.handleSafely([]event{{kind: evConnect, clientID: "z", conn: z}})
	require.Len(t, a.unchecked, 2)
	st.down.Store(false)
	clk.advance(time.Second)
	a.handleSafely([]event{{kind: evDisconnect, clientID: "x", conn: x}})
	a.handleSafely([]event{{kind: evRelist, clientID: "z", conn: z}, {kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
	assert.Empty(t, a.unchecked)
}

// SUSPECTED (repeat across brokers): alice holds x on ia and on ic (two
// connections of one principal, two brokers); Redis is flushed; bob takes
// x on ib and leaves. Each broker's relist finds its connection absent
// (the seen record is the other's: Seen false) and flags bob: the one use
// is reported twice. Observed: AddFinding from ia and from ic (one stream
// entry within findings_fold, its fold count 2). Whether two connections
// of alice make two overlaps is the project's call; the test passes
// either way, and asserts only that bob's use is flagged.
func TestAtk35TwoBrokersOnePrincipalAfterFlush(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("FLUSHALL")
	opts := testOptions()
	a, as, clk := redisTracker(t, r, "ia", opts)
	b, bs, _ := redisTracker(t, r, "ib", opts)
	c, cs, _ := redisTracker(t, r, "ic", opts)
	b.now, c.now = clk.now, clk.now
	for range 2 {
		a.renew()
		b.renew()
		c.renew()
	}
	x1 := a.NewConn("alice", "192.0.2.1", clk.now())
	a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x1}})
	clk.advance(time.Second)
	x2 := c.NewConn("alice", "192.0.2.1", clk.now())
	c.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x2}})
	clk.advance(time.Second)
	r.CLI("FLUSHALL")
	y := b.NewConn("bob", "192.0.2.2", clk.now())
	b.handleSafely([]event{{kind: evConnect, clientID: "x", conn: y}})
	clk.advance(50 * time.Millisecond)
	b.handleSafely([]event{{kind: evDisconnect, clientID: "x", conn: y}})
	require.Empty(t, atk33Findings(bs, "x"))
	clk.advance(time.Second)
	c.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x2}, {kind: evRelistDone, conn: Conn{Seq: c.LastSeq()}}})
	a.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x1}, {kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
	got := append(append(atk33Findings(as, "x"), atk33Findings(bs, "x")...), atk33Findings(cs, "x")...)
	t.Logf("findings: %v (ia %v, ic %v); stream %s", got, atk33Findings(as, "x"), atk33Findings(cs, "x"), strings.TrimSpace(r.CLI("XLEN", "guard:findings")))
	for _, k := range strings.Fields(r.CLI("KEYS", "guard:fold:*")) {
		t.Logf("fold %s count %s", k, strings.TrimSpace(r.CLI("HGET", k, "count")))
	}
	assert.NotEmpty(t, got, "bob's hit-and-run is flagged")
}
