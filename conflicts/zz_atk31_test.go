package conflicts

import (
	"context"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// atk31BeforeEval is a go-redis hook that runs fn once, just before the
// first pipeline holding a script call (EVAL/EVALSHA) goes to Redis: for a
// Reap, its batch's writes, sent after its recheck of the lease.
type atk31BeforeEval struct {
	once atomic.Bool
	fn   func()
}

func (h *atk31BeforeEval) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *atk31BeforeEval) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return next
}
func (h *atk31BeforeEval) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			if n := strings.ToLower(c.Name()); (n == "evalsha" || n == "eval") && h.once.CompareAndSwap(false, true) {
				h.fn()
				break
			}
		}
		return next(ctx, cmds)
	}
}

// Was a DEFECT (fixed: renew asks for a relist once more renewBound and a second after the lapse): a second broker's reap racing the relist deletes the relisted
// entries, and nothing relists them again. README: "when a renewal finds
// its own lease lapsed (... a reap under way stops at that renewal)";
// conflicts/lease.go renew (Lapsed -> relist) and store/conns.go
// Reap/reapIDs: the lease is rechecked (one round trip) before a batch's
// writes, and the writes (a compare-and-delete of the value read) go in a
// later round trip. ia comes back from a pause between the reaper's
// recheck and its writes: its renewal finds the lease lapsed, asks for a
// relist, and the relist writes x again, with the very value the reaper
// read; the reaper's compare-and-delete then removes it, and ends alice's
// use of x in her seen record while she holds x. ia's lease runs now: its
// next renewals are not Lapsed, so x stays live nowhere while ia holds it
// (under deny, another principal may take x).
//
// Observed: x not live in Redis after the relist and the next renewal;
// alice's seen record of x has an end. Expected: x live (the relist came
// after the reap's check, or another relist is asked for).
func TestAtk31ReapRacingRelistDeletesRelisted(t *testing.T) {
	r := testenv.StartRedis(t)
	kb := keys.Builder{Prefix: "guard:"}
	opts := testOptions()
	a, _, clk := redisTracker(t, r, "ia", opts)
	var asked atomic.Int32
	a.relist = func() { asked.Add(1) }
	a.renew()
	x := a.NewConn("alice", "192.0.2.1", clk.now())
	a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x}})
	require.Equal(t, "1", r.CLI("HLEN", kb.Conn("x")))

	// ia paused past its lease; ib's reap is under way.
	r.CLI("ZADD", "guard:brokers", "1", "ia")
	rs := store.New(store.Options{Addrs: []string{r.Addr}, Timeout: 5 * time.Second}, kb)
	t.Cleanup(func() { rs.Close() })
	hook := &atk31BeforeEval{fn: func() {
		// ia is back between the reaper's recheck and its writes: it
		// renews, finds its lease lapsed, and relists what it holds.
		a.renew()
		a.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x}, {kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
	}}
	rs.Client().AddHook(hook)
	err := rs.Reap(t.Context(), "ia", time.Now().UnixMilli(), opts.Lease, opts.Window)
	require.True(t, hook.once.Load(), "the reap wrote")
	t.Logf("reap: %v", err)
	require.EqualValues(t, 1, asked.Load(), "the lapsed lease asked for a relist")

	// Changed with the fix (its author): a renewal renewBound and a second
	// after the lapse asks for a relist again, and that relist writes x
	// again. (Before, no further relist was asked for, and x stayed live
	// nowhere.)
	a.renew() // ia's next renewal, at once: its lease runs
	assert.EqualValues(t, 1, asked.Load(), "not yet")
	clk.advance(renewBound + time.Second)
	a.renew()
	require.EqualValues(t, 2, asked.Load(), "a relist once more, after a reap past its last look at the lease")
	a.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x}, {kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
	assert.Equal(t, "1", r.CLI("HLEN", kb.Conn("x")), "x is held by ia: live in Redis")
	assert.Equal(t, "1", r.CLI("SISMEMBER", kb.BrokerConns("ia"), "x"))
	assert.NotContains(t, r.CLI("HGET", kb.Seen("x"), "alice"), "disconnected_ms", "alice holds x: her use has no end")
}

// atk31Slow is a go-redis hook that makes each command and pipeline take
// rtt more: a Redis a few milliseconds away (another host, another zone).
type atk31Slow struct{ rtt time.Duration }

func (h atk31Slow) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h atk31Slow) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { time.Sleep(h.rtt); return next(ctx, cmd) }
}
func (h atk31Slow) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { time.Sleep(h.rtt); return next(ctx, cmds) }
}

// Was a DEFECT (fixed: a removal whose bound is spent queues its continuation from its cursor): a ghost past what one relist's removal reaches in its 5 s bound
// is never removed, by that relist or any later one. README: "the removal
// reads the set 500 members a round trip, within the worker's 5 s bound
// for one part (a larger set is done in part, and in whole by a later
// relist)". conflicts/lease.go dropGhosts starts every removal at cursor 0
// (SSCAN order is the set's hash order, the same each time), and
// conflicts/tracker.go handlePart (evRelistDone) only logs its error: no
// relist is asked for, and the next one stops at the same place. Here
// Redis answers 20 ms away and brokerconns:ia holds 120 000 client IDs
// (two round trips a page of 500: about 62 000 reached in 5 s); the ghost
// is the last one SSCAN returns.
//
// Observed: after two removals (two relists), the ghost's live entry is
// still there. Expected: removed "in whole by a later relist".
func TestAtk31LargeSetGhostNeverRemoved(t *testing.T) {
	r := testenv.StartRedis(t)
	kb := keys.Builder{Prefix: "guard:"}
	a, as, clk := redisTracker(t, r, "ia", testOptions())
	a.renew()
	ctx := t.Context()
	rdb := as.Client()
	set := kb.BrokerConns("ia")
	for i := 0; i < 120000; i += 10000 {
		ms := make([]any, 0, 10000)
		for j := i; j < i+10000; j++ {
			ms = append(ms, "m-"+strconv.Itoa(j))
		}
		require.NoError(t, rdb.SAdd(ctx, set, ms...).Err())
	}
	// The last member in SSCAN order becomes a ghost: an entry of a
	// connection of ia's that ended, brought back by a snapshot.
	var last string
	for cursor := uint64(0); ; {
		ids, next, err := rdb.SScan(ctx, set, cursor, "", 500).Result()
		require.NoError(t, err)
		if len(ids) > 0 {
			last = ids[len(ids)-1]
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	y := a.NewConn("bob", "192.0.2.2", clk.now())
	a.handleSafely([]event{{kind: evConnect, clientID: last, conn: y}})
	ghost := r.CLI("HGET", kb.Conn(last), "ia")
	require.NotEmpty(t, ghost)
	a.handleSafely([]event{{kind: evDisconnect, clientID: last, conn: y}})
	r.CLI("HSET", kb.Conn(last), "ia", ghost)
	r.CLI("SADD", set, last)

	rdb.AddHook(atk31Slow{rtt: 20 * time.Millisecond})
	// Changed with the fix (its author): a removal whose bound is spent
	// queues its continuation from where it stopped; the worker (not
	// running here) would take it after the events queued meanwhile.
	// (Before, a later relist started over at the set's start.)
	// Changed again (its author): up to 6 removals, not 3: a removal now
	// stops at its 4 s budget (ghostBudget), and under -race on a loaded
	// CI machine two removals of 5 s reached about half the set.
	evs := []event{{kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}}
	for i := 0; i < 6 && len(evs) > 0; i++ {
		start := time.Now()
		a.handleSafely(evs)
		t.Logf("removal %d took %v", i+1, time.Since(start))
		evs = a.events.Take()
	}
	assert.Equal(t, "0", r.CLI("HLEN", kb.Conn(last)), "the ghost is removed by a later relist")

	// Baseline: the same removal with Redis near reaches the ghost.
	near := &recStore{Store: store.New(store.Options{Addrs: []string{r.Addr}, Timeout: 5 * time.Second}, kb)}
	t.Cleanup(func() { near.Close() })
	a.store = near
	a.handleSafely([]event{{kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
	assert.Equal(t, "0", r.CLI("HLEN", kb.Conn(last)), "baseline: a removal that reaches it removes the ghost")
}

// Was a DEFECT (fixed: a relist evaluates only the live connections made since the relisted one): a relist after Redis restarted from an older snapshot flags a
// conflict with another broker's ghost: a connection that ended long ago,
// whose entry the snapshot brought back and that its own broker's relist
// removes a moment later (both relist at once: both replicas lose their
// session). conflicts/lease.go relistConns (7be1db9) evaluates each
// relisted connection against every live entry read back, a ghost of
// another broker alive included. README: "Each is read back and checked
// against the client ID's live connections: another principal that took
// the client ID while it was not listed (after a flush, before the
// relist) is flagged then" - and so is one that let go of it before the
// snapshot's restart, which no connect would have flagged.
//
// bob held x on ib and disconnected; an hour later (past the window of
// 30 min: her connect flags nothing) alice connected x on ia. Redis restarts
// from a snapshot taken while bob held x. ia relists before ib.
//
// Observed: a finding naming alice and bob at ia's relist, though bob has
// held nothing for an hour (ib's relist then removes his ghost). Expected:
// no new finding.
func TestAtk31RelistFlagsAnotherBrokersGhost(t *testing.T) {
	r := testenv.StartRedis(t)
	kb := keys.Builder{Prefix: "guard:"}
	opts := testOptions()
	opts.Window = 30 * time.Minute // bob's use of x, an hour old, is past it: alice's connect flags nothing
	as := &recStore{Store: store.New(store.Options{Addrs: []string{r.Addr}, Timeout: 5 * time.Second}, kb)}
	t.Cleanup(func() { as.Close() })
	a, clk, alog := tracker(t, as, opts)
	a.instance = "ia"
	b, bs, bclk := redisTracker(t, r, "ib", opts)
	a.renew()
	b.renew()
	a.renew()

	y := b.NewConn("bob", "192.0.2.2", bclk.now())
	b.handleSafely([]event{{kind: evConnect, clientID: "x", conn: y}})
	ghost := r.CLI("HGET", kb.Conn("x"), "ib") // the snapshot has it
	bclk.advance(time.Minute)
	b.handleSafely([]event{{kind: evDisconnect, clientID: "x", conn: y}})
	require.Equal(t, "0", r.CLI("HLEN", kb.Conn("x")))

	clk.advance(time.Hour)
	bclk.advance(time.Hour)
	x := a.NewConn("alice", "192.0.2.1", clk.now())
	a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x}})
	as.mu.Lock()
	before := len(as.findings["x"])
	as.mu.Unlock()
	linesBefore := strings.Count(alog.all(), "event=finding")

	// Redis restarts from the older snapshot: bob's entry is back, and
	// alice's is not.
	r.CLI("HDEL", kb.Conn("x"), "ia")
	r.CLI("SREM", kb.BrokerConns("ia"), "x")
	r.CLI("HSET", kb.Conn("x"), "ib", ghost)
	r.CLI("SADD", kb.BrokerConns("ib"), "x")

	a.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x}, {kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
	b.handleSafely([]event{{kind: evRelistDone, conn: Conn{Seq: b.LastSeq()}}})
	require.Equal(t, "1", r.CLI("HLEN", kb.Conn("x")), "bob's ghost is gone: alice alone holds x")
	_ = bs

	as.mu.Lock()
	after := as.findings["x"]
	as.mu.Unlock()
	t.Logf("findings on x before the relist %d, after %v; log: %s", before, after, alog.all())
	assert.Len(t, after, before, "no new finding: bob has held nothing for an hour")
	assert.Equal(t, linesBefore, strings.Count(alog.all(), "event=finding"), "no finding logged at the relist")
}

// atk31FlakyListed is a Redis store whose first Listed fails (one
// timeout).
type atk31FlakyListed struct {
	*recStore
	failed atomic.Bool
}

func (s *atk31FlakyListed) Listed(ctx context.Context, instance string, cursor uint64) ([]string, uint64, error) {
	if s.failed.CompareAndSwap(false, true) {
		return nil, 0, context.DeadlineExceeded
	}
	return s.recStore.Listed(ctx, instance, cursor)
}

// Was a DEFECT (fixed: a failed removal asks for a relist) (same line as TestAtk31LargeSetGhostNeverRemoved): one transient
// error in a relist's removal of ghosts leaves them for as long as the
// broker runs, unless something else asks for a relist: conflicts/tracker.go
// handlePart, case evRelistDone, logs the error and asks for nothing,
// while a failed relist part (case evRelist) and a failed batch (default)
// do ask (t.relist()). Under clientid_conflict deny a ghost refuses its
// client ID to every other principal (README: "under clientid_conflict
// deny the other brokers refused its client ID to every other principal
// for as long as the broker ran").
//
// Observed: the ghost stays, no relist asked for. Expected: removed, or a
// relist asked for (as a failed relist part does).
func TestAtk31FailedGhostRemovalNotRetried(t *testing.T) {
	r := testenv.StartRedis(t)
	kb := keys.Builder{Prefix: "guard:"}
	opts := testOptions()
	opts.Deny = true
	fs := &atk31FlakyListed{recStore: &recStore{Store: store.New(store.Options{Addrs: []string{r.Addr}, Timeout: 5 * time.Second}, kb)}}
	t.Cleanup(func() { fs.Close() })
	a, clk, alog := tracker(t, fs, opts)
	a.instance = "ia"
	var asked atomic.Int32
	a.relist = func() { asked.Add(1) }
	a.renew()
	y := a.NewConn("bob", "192.0.2.2", clk.now())
	a.handleSafely([]event{{kind: evConnect, clientID: "y", conn: y}})
	ghost := r.CLI("HGET", kb.Conn("y"), "ia")
	a.handleSafely([]event{{kind: evDisconnect, clientID: "y", conn: y}})
	// Redis restarted from a snapshot that holds y.
	r.CLI("HSET", kb.Conn("y"), "ia", ghost)
	r.CLI("SADD", kb.BrokerConns("ia"), "y")

	a.handleSafely([]event{{kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
	t.Logf("log: %s", alog.all())
	for i := 0; i < 3; i++ {
		clk.advance(opts.Lease / 3)
		a.renew() // the lease runs: no relist from there
	}
	assert.True(t, asked.Load() > 0 || r.CLI("HLEN", kb.Conn("y")) == "0", "y's ghost is removed, or a relist asked for")
}

// HOLDS: a held connection with a 64 KB client ID (kept in Redis under its
// keys.Tracking form) is found in the memo by the relist's removal
// (conflicts/lease.go dropGhosts: t.idKey of the brokerconns member), both
// after its connect and after its relist, so its live entry stays; a
// ghost with a 64 KB client ID goes.
func TestAtk31LongClientIDRelistKeepsHeld(t *testing.T) {
	r := testenv.StartRedis(t)
	kb := keys.Builder{Prefix: "guard:"}
	a, _, clk := redisTracker(t, r, "ia", testOptions())
	a.renew()
	long := strings.Repeat("x", 64<<10)
	gone := strings.Repeat("y", 64<<10)
	held, lid := tracked(long)
	ghostID, gid := tracked(gone)
	require.NotEqual(t, long, held, "kept under its tracking form")
	x := a.NewConn("alice", "192.0.2.1", clk.now())
	y := a.NewConn("bob", "192.0.2.2", clk.now())
	a.handleSafely([]event{{kind: evConnect, clientID: held, long: lid, conn: x}, {kind: evConnect, clientID: ghostID, long: gid, conn: y}})
	ghost := r.CLI("HGET", kb.ConnTracked(ghostID), "ia")
	require.NotEmpty(t, ghost)
	a.handleSafely([]event{{kind: evDisconnect, clientID: ghostID, conn: y}})
	r.CLI("HSET", kb.ConnTracked(ghostID), "ia", ghost)
	r.CLI("SADD", kb.BrokerConns("ia"), ghostID)

	a.handleSafely([]event{{kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
	assert.Equal(t, "1", r.CLI("HLEN", kb.ConnTracked(held)), "held: kept after its connect")
	assert.Equal(t, "0", r.CLI("HLEN", kb.ConnTracked(ghostID)), "the ghost goes")
	r.CLI("FLUSHALL")
	a.handleSafely([]event{{kind: evRelist, clientID: held, long: lid, conn: x}, {kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
	assert.Equal(t, "1", r.CLI("HLEN", kb.ConnTracked(held)), "held: relisted and kept")
	assert.Equal(t, "1", r.CLI("SISMEMBER", kb.BrokerConns("ia"), held))
}
