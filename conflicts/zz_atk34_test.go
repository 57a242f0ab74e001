package conflicts

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// lostReplyStore is a real store (recStore) whose next relist write (a
// batch with ConnWrite.Prior) reaches Redis and is applied there, but whose
// reply is lost: the caller gets an error (a read timeout past the part's
// bound on a slow Redis; on a Redis Cluster, one node failing the
// pipeline — MOVED mid-resharding, a node failing over — while the
// others applied their share).
type lostReplyStore struct {
	*recStore
	lose    atomic.Bool
	loseAny atomic.Bool // the next write of any kind (a connect batch)
}

func (s *lostReplyStore) WriteConns(ctx context.Context, ws []store.ConnWrite, window time.Duration) ([]store.State, error) {
	states, err := s.recStore.WriteConns(ctx, ws, window)
	prior := false
	for _, w := range ws {
		prior = prior || w.Prior
	}
	if err == nil && (prior && s.lose.CompareAndSwap(true, false) || s.loseAny.CompareAndSwap(true, false)) {
		return nil, errors.New("read tcp 127.0.0.1:1->127.0.0.1:6379: i/o timeout")
	}
	return states, err
}

// Was a DEFECT (fixed in d50f8ce: a relist whose write failed is owed its check, Tracker.unchecked): a relist whose write Redis applied but whose reply was lost
// hides, for good, a use made while the connection was not listed.
//
// README ("Client-ID conflicts", "A running broker records its
// connections in Redis again"): each relisted connection "whose live
// entry Redis did not hold just before the write ... is read back and
// checked ...: another principal that took the client ID while it was not
// listed (after a flush or a reap, before the relist) is flagged then";
// Redis "not tak[ing]" a relist's write asks for another relist.
// conflicts/lease.go relistConns returns WriteConns' error before it
// evaluates anything, and the relist it asks for reads Prior.Listed =
// true (the first attempt's write is there now): it evaluates nothing.
//
// alice holds x on ia; Redis restarts empty; bob takes x on ib (his
// connect finds nothing) and leaves. ia's relist is applied by Redis, its
// reply lost (handlePart asks for a relist again); the second relist runs.
//
// Observed: no finding at either relist. Expected: alice,bob flagged (as
// when the first relist's reply arrives: the control subtest).
func TestAtk34RelistReplyLostHidesHitAndRun(t *testing.T) {
	r := testenv.StartRedis(t)
	for _, lose := range []bool{false, true} {
		t.Run(map[bool]string{false: "reply_arrives", true: "reply_lost"}[lose], func(t *testing.T) {
			r.CLI("FLUSHALL")
			opts := testOptions()
			rs := newRecStore(t, r)
			ls := &lostReplyStore{recStore: rs}
			a, clk, alog := tracker(t, ls, opts)
			a.instance = "ia"
			var asked atomic.Int32
			a.relist = func() { asked.Add(1) }
			b, _, _ := redisTracker(t, r, "ib", opts)
			b.now = clk.now
			a.renew()
			b.renew()
			a.renew()

			x := a.NewConn("alice", "192.0.2.1", clk.now())
			a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x}})
			clk.advance(time.Second)
			r.CLI("FLUSHALL") // Redis restarted empty
			y := b.NewConn("bob", "192.0.2.2", clk.now())
			b.handleSafely([]event{{kind: evConnect, clientID: "x", conn: y}})
			clk.advance(50 * time.Millisecond)
			b.handleSafely([]event{{kind: evDisconnect, clientID: "x", conn: y}})
			require.Empty(t, atk33Findings(rs, "x"), "bob's connect found nothing: the flush took alice's entry")

			ls.lose.Store(lose)
			a.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x}})
			if lose {
				require.EqualValues(t, 1, asked.Load(), "the failed relist asked for another")
				require.Contains(t, r.CLI("HGET", "guard:conn:x", "ia"), "alice", "Redis applied the first relist's write")
				a.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x}})
			}
			a.handleSafely([]event{{kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
			got := atk33Findings(rs, "x")
			t.Logf("findings: %v; log: %s", got, alog.all())
			assert.Equal(t, []string{"alice,bob"}, got, "bob took x while alice was not listed: flagged at the relist")
		})
	}
}

// Was a DEFECT (fixed: a relist checks nothing of a connection whose principal's use Redis held, Prior.Seen): a relist after a reap re-reports an overlap that the other
// principal's own connect reported already (nothing flushed).
//
// A reap (store.Reap) ends alice's connection: her live entry goes, her
// principal's use keeps its end E within conflict_window. Every connect
// after E sees that ended use and flags it (bob's connect here reports
// alice,bob). README: "Each whose live entry Redis did not hold just
// before the write ... is read back and checked against the client ID's
// connections made since it was, or since the end a reap gave it": so
// every use made after the reap, each one already reported at its
// connect, is reported once more; relistConns' doc: "The past users are
// not evaluated again: the connection's connect did that, and a relist is
// no new use" (the atk33 fix, 'a lapsed lease: two relists, two repeats',
// for the reaped case).
//
// ia (alice holds x) pauses past its lease; ib reaps it; bob takes x on ib
// (his connect flags alice,bob: reported) and stays. ia comes back after
// `after`, its lease lapsed: its relist runs.
//
// Observed: a second AddFinding of alice,bob at ia's relist (past
// findings_fold, a second entry in guard:findings: a fresh finding logged
// and published; within it, a repeat counted into the fold). Expected:
// none: bob's use was reported at his connect, which saw alice's ended use.
func TestAtk34RelistAfterReapReReportsOverlap(t *testing.T) {
	r := testenv.StartRedis(t)
	for _, tc := range []struct {
		name  string
		after time.Duration
	}{{"past_fold", 2 * time.Hour}, {"within_fold", 10 * time.Minute}} {
		t.Run(tc.name, func(t *testing.T) {
			r.CLI("FLUSHALL")
			opts := testOptions()
			a, as, clk := redisTracker(t, r, "ia", opts)
			b, bs, _ := redisTracker(t, r, "ib", opts)
			b.now = clk.now
			a.renew()
			b.renew()
			a.renew()

			x := a.NewConn("alice", "192.0.2.1", clk.now())
			a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x}})
			// ia paused past its lease: ib reaps it (the unconditional form of
			// the reap renew runs, its end stamped on the shared fake clock).
			clk.advance(time.Minute)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			require.NoError(t, bs.Store.Reap(ctx, "ia", clk.now().UnixMilli(), 0, opts.Window))
			require.Empty(t, r.CLI("HGET", "guard:conn:x", "ia"), "reaped")
			clk.advance(time.Second)
			y := b.NewConn("bob", "192.0.2.2", clk.now())
			b.handleSafely([]event{{kind: evConnect, clientID: "x", conn: y}})
			require.Equal(t, []string{"alice,bob"}, atk33Findings(bs, "x"), "bob's connect saw alice's ended use: reported")
			require.Equal(t, "1", r.CLI("XLEN", "guard:findings"))

			clk.advance(tc.after) // ia back: its lease lapsed (reaped)
			a.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x}, {kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
			got := atk33Findings(as, "x")
			t.Logf("findings at ia's relist: %v; stream %s", got, r.CLI("XLEN", "guard:findings"))
			assert.Empty(t, got, "bob's connect reported his use already")
			assert.Equal(t, "1", r.CLI("XLEN", "guard:findings"), "one finding in the stream")
			for _, k := range strings.Fields(r.CLI("KEYS", "guard:fold:*")) {
				assert.Equal(t, "1", r.CLI("HGET", k, "count"), "the fold counts bob's one use, not the relist")
			}
		})
	}
}

// Was a DEFECT (fixed in d50f8ce, as above): the same as TestAtk34RelistReplyLostHidesHitAndRun, with a
// real Redis Cluster and no fake: one node is full (maxmemory with
// noeviction, which README's Known limits ask for: "a write it refuses for
// memory fails, and the plugin records the connections again once writes
// pass") and refuses its share of the relist's pipeline while another node
// applies its own.
//
// Client ID id has its keys on node 0, client ID other on node 1. alice
// holds both on ia; Redis is flushed; bob takes id on ib (nothing found)
// and leaves. Node 1 is full as ia's relist runs (one part: id, other):
// node 0 writes alice's live entry of id, node 1 answers OOM, the part
// fails (a relist is asked for again). Node 1 gets room; the second
// relist reads Prior.Listed = true for id and evaluates nothing.
//
// Observed: no finding. Expected: alice,bob (bob took id while alice was
// not listed).
func TestAtk34ClusterOOMHidesHitAndRun(t *testing.T) {
	cl := testenv.StartRedisCluster(t, 2)
	// id's keys on node 0, other's on node 1 (a key's "conn:" and "seen:"
	// forms fall on the same half of the slots).
	id, other := "", ""
	for i := 0; i < 200 && (id == "" || other == ""); i++ {
		c := fmt.Sprintf("x%d", i)
		connSlot, _ := strconv.Atoi(strings.TrimSpace(cl.Nodes[0].CLI("CLUSTER", "KEYSLOT", "guard:conn:"+c)))
		seenSlot, _ := strconv.Atoi(strings.TrimSpace(cl.Nodes[0].CLI("CLUSTER", "KEYSLOT", "guard:seen:"+c)))
		switch {
		case connSlot < 8192 && seenSlot < 8192 && id == "":
			id = c
		case connSlot >= 8192 && seenSlot >= 8192 && other == "":
			other = c
		}
	}
	require.NotEmpty(t, id)
	require.NotEmpty(t, other)
	newStore := func() *recStore {
		s := &recStore{Store: store.New(store.Options{Addrs: strings.Split(cl.Addrs, ","), Timeout: time.Second}, keys.Builder{Prefix: "guard:"})}
		t.Cleanup(func() { s.Close() })
		return s
	}
	// A new cluster takes writes some 2 s after it forms.
	require.Eventually(t, func() bool {
		return strings.TrimSpace(cl.CLI("SET", "guard:probe", "1")) == "OK"
	}, 10*time.Second, 100*time.Millisecond)
	opts := testOptions()
	as, bs := newStore(), newStore()
	a, clk, alog := tracker(t, as, opts)
	a.instance = "ia"
	var asked atomic.Int32
	a.relist = func() { asked.Add(1) }
	b, _, _ := tracker(t, bs, opts)
	b.instance = "ib"
	b.now = clk.now
	require.Eventually(t, func() bool {
		a.renew()
		b.renew()
		return len(*a.live.Load()) == 2
	}, 10*time.Second, 100*time.Millisecond)

	x := a.NewConn("alice", "192.0.2.1", clk.now())
	xo := a.NewConn("alice", "192.0.2.1", clk.now())
	a.handleSafely([]event{{kind: evConnect, clientID: id, conn: x}, {kind: evConnect, clientID: other, conn: xo}})
	require.Contains(t, cl.CLI("HGET", "guard:conn:"+id, "ia"), "alice")
	clk.advance(time.Second)
	for _, n := range cl.Nodes {
		n.CLI("FLUSHALL") // Redis restarted empty
	}
	y := b.NewConn("bob", "192.0.2.2", clk.now())
	b.handleSafely([]event{{kind: evConnect, clientID: id, conn: y}})
	clk.advance(50 * time.Millisecond)
	b.handleSafely([]event{{kind: evDisconnect, clientID: id, conn: y}})
	require.Contains(t, cl.CLI("HGET", "guard:seen:"+id, "bob"), "disconnected_ms")
	require.Empty(t, atk33Findings(bs, id))

	// Node 1 is full (maxmemory-policy noeviction, as README asks): it
	// refuses writes; node 0 takes them.
	cl.Nodes[1].CLI("CONFIG", "SET", "maxmemory-policy", "noeviction")
	cl.Nodes[1].CLI("CONFIG", "SET", "maxmemory", "1")
	start := time.Now()
	a.handleSafely([]event{{kind: evRelist, clientID: id, conn: x}, {kind: evRelist, clientID: other, conn: xo}})
	t.Logf("first relist part took %v; asked %d; log: %s", time.Since(start), asked.Load(), alog.all())
	require.EqualValues(t, 1, asked.Load(), "the refused part asked for another relist")
	t.Logf("node 0 keys: %q", cl.Nodes[0].CLI("KEYS", "*"))
	require.Contains(t, cl.Nodes[0].CLI("HGET", "guard:conn:"+id, "ia"), "alice", "node 0 applied its share")
	cl.Nodes[1].CLI("CONFIG", "SET", "maxmemory", "0") // room again
	a.handleSafely([]event{{kind: evRelist, clientID: id, conn: x}, {kind: evRelist, clientID: other, conn: xo}, {kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
	got := atk33Findings(as, id)
	t.Logf("findings after the second relist: %v", got)
	assert.Equal(t, []string{"alice,bob"}, got, "bob took the client ID while alice was not listed")
}

// HOLDS: a relist whose first attempt meets NOSCRIPT (Redis restarted
// empty: its script cache too) keeps the first attempt's Prior: alice was
// not listed, so bob's hit-and-run made meanwhile is flagged once; the
// second relist (Listed now) adds nothing, also after another SCRIPT
// FLUSH (its first attempt reads Listed, the replay reads Listed).
func TestAtk34NoscriptReplayKeepsPrior(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("FLUSHALL")
	opts := testOptions()
	a, as, clk := redisTracker(t, r, "ia", opts)
	b, bs, _ := redisTracker(t, r, "ib", opts)
	b.now = clk.now
	a.renew()
	b.renew()
	a.renew()
	x := a.NewConn("alice", "192.0.2.1", clk.now())
	a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x}})
	clk.advance(time.Second)
	r.CLI("FLUSHALL")
	r.CLI("SCRIPT", "FLUSH")
	y := b.NewConn("bob", "192.0.2.2", clk.now())
	b.handleSafely([]event{{kind: evConnect, clientID: "x", conn: y}})
	clk.advance(50 * time.Millisecond)
	b.handleSafely([]event{{kind: evDisconnect, clientID: "x", conn: y}})
	require.Empty(t, atk33Findings(bs, "x"))
	r.CLI("SCRIPT", "FLUSH")
	r.CLI("CONFIG", "RESETSTAT")
	a.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x}, {kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
	require.Contains(t, r.CLI("INFO", "errorstats"), "NOSCRIPT", "the relist's first attempt met NOSCRIPT")
	assert.Equal(t, []string{"alice,bob"}, atk33Findings(as, "x"), "flagged at the relist that replayed")
	clk.advance(10 * time.Second)
	r.CLI("SCRIPT", "FLUSH")
	a.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x}, {kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
	assert.Equal(t, []string{"alice,bob"}, atk33Findings(as, "x"), "the second relist adds nothing")
}

// Was a DEFECT (fixed: a failed connect batch owes its connects their check at the relist, as a connect; older than the Prior read): a connect
// batch whose write Redis applied but whose reply was lost never has its
// overlap flagged. handlePart asks for a relist ("Connects Redis did not
// take ... are recorded again"); the relist reads Prior.Listed = true
// (the connect's own write is there) and evaluates nothing. (Before
// 9e03fdc it evaluated only the connections made since alice, and bob's
// is older: missed too.)
//
// bob holds x on ib; alice connects x on ia; ia's batch reaches Redis,
// its reply is lost (a timeout past the part's bound; a Cluster node
// failing its share).
//
// Observed: no finding, at the connect or at the relist. Expected:
// alice,bob (two principals hold x at once: the case clientid_conflict is
// for).
func TestAtk34ConnectReplyLostNeverFlagged(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("FLUSHALL")
	opts := testOptions()
	rs := newRecStore(t, r)
	ls := &lostReplyStore{recStore: rs}
	a, clk, alog := tracker(t, ls, opts)
	a.instance = "ia"
	var asked atomic.Int32
	a.relist = func() { asked.Add(1) }
	b, bs, _ := redisTracker(t, r, "ib", opts)
	b.now = clk.now
	a.renew()
	b.renew()
	a.renew()

	y := b.NewConn("bob", "192.0.2.2", clk.now())
	b.handleSafely([]event{{kind: evConnect, clientID: "x", conn: y}})
	clk.advance(time.Second)
	x := a.NewConn("alice", "192.0.2.1", clk.now())
	ls.loseAny.Store(true)
	a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x}})
	require.EqualValues(t, 1, asked.Load(), "the failed batch asked for a relist")
	require.Contains(t, r.CLI("HGET", "guard:conn:x", "ia"), "alice", "Redis applied the connect")
	a.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x}, {kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
	got := append(atk33Findings(rs, "x"), atk33Findings(bs, "x")...)
	t.Logf("findings: %v; log: %s", got, alog.all())
	assert.Equal(t, []string{"alice,bob"}, got, "alice and bob hold x at once")
}
