package conflicts

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// atk30Fill fills a's queue with filler events (other traffic while Redis
// is slow), so that the next enqueue finds it full.
func atk30Fill(t *testing.T, a *Tracker) {
	t.Helper()
	for a.events.Put(event{kind: evRefused, clientID: "filler"}) {
	}
	require.Zero(t, a.Room())
}

// atk30Drain discards what a's queue holds (the filler), as if handled.
func atk30Drain(a *Tracker) {
	for a.events.Len() > 0 {
		_ = a.events.Take()
	}
	a.events.Release()
}

// Was a DEFECT (fixed: Relisted forgets the dropped connect, so its end is spilled): a relisted connection whose connect the queue had dropped is
// never unlisted when its disconnect also meets a full queue: it stays
// live in Redis after it ended, for as long as the broker runs.
//
// Targets conflicts/tracker.go enqueue (the spill): spill.dropped keeps
// the number of every connect the queue dropped, and a disconnect of such
// a number is thrown away ("its connect was dropped: nothing to undo").
// Relisted (conflicts/tracker.go) and relistConns (conflicts/lease.go:
// "The memo lists each whose client ID lists none (a connect the queue
// dropped): its disconnect then unlists it") write such a connection live
// and list it, but never take its number out of spill.dropped. Redis
// flapping makes exactly this: the queue fills while Redis is slow (x's
// connect dropped), Redis answers (health.back: a relist writes x live),
// Redis is slow again and the queue fills (x's DISCONNECT dropped). The
// memo lists x, so a later relist's dropGhosts keeps the ghost too.
// README: "so a connection that ends meanwhile is never written live after
// its end".
//
// Observed: conn:x keeps ia's live entry and x stays in brokerconns:ia
// after x's end. Expected: x is not live.
func TestAtk30RelistedThenSpilledDisconnectStaysLive(t *testing.T) {
	r := testenv.StartRedis(t)
	kb := keys.Builder{Prefix: "guard:"}
	for _, deny := range []bool{false, true} {
		t.Run(map[bool]string{false: "flag", true: "deny"}[deny], func(t *testing.T) {
			r.CLI("FLUSHALL")
			opts := testOptions()
			opts.Deny = deny
			a, _, clk := redisTracker(t, r, "ia", opts)
			x := a.NewConn("alice", "192.0.2.1", clk.now())

			// Redis slow: the queue is full when x connects.
			atk30Fill(t, a)
			a.Connected("x", x, nil)
			atk30Drain(a)
			a.drainSpill()
			require.Equal(t, "0", r.CLI("HLEN", kb.Conn("x")), "x's connect was dropped")

			// Redis answers: the relist records x.
			require.True(t, a.Relisted("x", x))
			a.handleSafely(a.events.Take())
			a.events.Release()
			require.Equal(t, "1", r.CLI("HLEN", kb.Conn("x")), "the relist wrote x live")

			// Redis slow again: x ends while the queue is full.
			clk.advance(time.Second)
			atk30Fill(t, a)
			a.Disconnected("x", x)
			atk30Drain(a)
			a.drainSpill()

			// A later relist (x no longer held) cannot remove it either.
			require.True(t, a.RelistDone(a.LastSeq()))
			a.handleSafely(a.events.Take())
			a.events.Release()

			assert.Equal(t, "0", r.CLI("HLEN", kb.Conn("x")), "x ended: it must not stay live in Redis")
			assert.Equal(t, "0", r.CLI("SISMEMBER", kb.BrokerConns("ia"), "x"), "x ended: not in brokerconns:ia")
		})
	}
}

// Was a DEFECT (fixed: RenewLease reads the score first and reports Lapsed): a renewal that finds its lease lapsed but still in guard:brokers
// (another broker's reap of it under way, its live entries deleted
// already) does not ask for a relist: ZADD updates the score, Added is
// false. The reaper then sees the lease run again (ErrLeaseRuns) and
// leaves the lease in place, so no later renewal finds it gone either.
//
// Targets conflicts/lease.go renew (`if l.Added && t.renewed ...`) and
// store/conns.go RenewLease (Added: added.Val() > 0). README: "a broker
// whose lease runs again by then, back from a pause, is left what is not
// yet reaped, and records the rest again". store's
// TestAtk30ReapInterruptedByRenewalNotAdded shows a real Reap leaves
// exactly this state (entries gone, lease kept); here that state is made
// by hand.
//
// Observed: no relist asked; x, held, is live nowhere in Redis. Expected:
// a relist is asked for.
func TestAtk30LapsedLeaseRenewedMidReapAsksNoRelist(t *testing.T) {
	r := testenv.StartRedis(t)
	kb := keys.Builder{Prefix: "guard:"}
	a, _, clk := redisTracker(t, r, "ia", testOptions())
	var asked atomic.Int32
	a.relist = func() { asked.Add(1) }
	a.renew()
	x := a.NewConn("alice", "192.0.2.1", clk.now())
	a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x}})
	require.Equal(t, "1", r.CLI("HLEN", kb.Conn("x")))

	// ia paused past its lease; a reaper deleted its entries and was about
	// to remove its set and lease when ia came back.
	r.CLI("ZADD", "guard:brokers", "40000", "ia")
	r.CLI("HDEL", kb.Conn("x"), "ia")
	a.renew()
	assert.EqualValues(t, 1, asked.Load(), "ia's lease had lapsed and its live entries were reaped: a relist is needed")
}

// Was a DEFECT (fixed: relistConns reads the live hash back and evaluates it; the test now renews ia after ib first, as its worker does): after Redis lost its keys, another principal
// connected with a client ID this broker holds (nothing in Redis told it
// of the holder); the relist then writes the holder live beside it, and
// nobody reports that two principals hold the client ID at once. Relisted
// "Nothing is evaluated: a relisted connection made its findings at its
// connect" (conflicts/tracker.go; relistConns in conflicts/lease.go does
// no read). Under clientid_conflict flag this conflict is never flagged
// while both stay connected; README says the relist "writes each as its
// connect did", and a connect found exactly this.
//
// Observed: no finding for x on either broker. Expected: a finding naming
// alice and bob (as bob's connect makes when alice's entry is there:
// checked first, as the baseline).
func TestAtk30RelistFindsNoConcurrentHolder(t *testing.T) {
	r := testenv.StartRedis(t)
	for _, flush := range []bool{false, true} {
		t.Run(map[bool]string{false: "baseline", true: "flushed"}[flush], func(t *testing.T) {
			r.CLI("FLUSHALL")
			a, as, clk := redisTracker(t, r, "ia", testOptions())
			b, bs, _ := redisTracker(t, r, "ib", testOptions())
			a.renew()
			b.renew()
			a.renew() // ia learns ib alive, as its worker does every broker_lease/3 (added by the fix's author)
			x := a.NewConn("alice", "192.0.2.1", clk.now())
			a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x}})
			if flush {
				r.CLI("FLUSHALL") // Redis restarted empty
				a.renew()
				b.renew()
			}
			clk.advance(time.Second)
			y := b.NewConn("bob", "192.0.2.2", clk.now())
			b.handleSafely([]event{{kind: evConnect, clientID: "x", conn: y}})
			if flush {
				// ia relists what it holds.
				a.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x}, {kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
				require.Equal(t, "2", r.CLI("HLEN", "guard:conn:x"), "alice and bob are both live on x")
			}
			as.mu.Lock()
			bs.mu.Lock()
			got := append(append([]string(nil), as.findings["x"]...), bs.findings["x"]...)
			bs.mu.Unlock()
			as.mu.Unlock()
			assert.NotEmpty(t, got, "alice and bob hold x at once: a finding")
		})
	}
}

// HOLDS (checked): a broker reaped while paused past its lease (another
// broker's Reap ended alice's use of x at the lease's end and deleted her
// live entry) finds its lease gone at its next renewal, asks for a relist,
// and the relist writes x live again, lists it in brokerconns:ia, and
// writes alice's use of x again without an end (README: "its principal's
// use, without an end"), in both modes.
func TestAtk30RelistAfterReapReopensUse(t *testing.T) {
	r := testenv.StartRedis(t)
	kb := keys.Builder{Prefix: "guard:"}
	for _, deny := range []bool{false, true} {
		t.Run(map[bool]string{false: "flag", true: "deny"}[deny], func(t *testing.T) {
			r.CLI("FLUSHALL")
			opts := testOptions()
			opts.Deny = deny
			a, _, clk := redisTracker(t, r, "ia", opts)
			b, bs, _ := redisTracker(t, r, "ib", opts)
			var asked atomic.Int32
			a.relist = func() { asked.Add(1) }
			a.renew()
			b.renew()
			x := a.NewConn("alice", "192.0.2.1", clk.now())
			a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x}})
			r.CLI("ZADD", "guard:brokers", "1", "ia") // lapsed long ago
			require.NoError(t, bs.Reap(t.Context(), "ia", time.Now().UnixMilli(), opts.Lease, opts.Window))
			require.Contains(t, r.CLI("HGET", kb.Seen("x"), "alice"), "disconnected_ms", "the reap ended alice's use")
			require.Equal(t, "0", r.CLI("HLEN", kb.Conn("x")))

			a.renew()
			require.EqualValues(t, 1, asked.Load())
			a.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x}, {kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
			assert.Equal(t, "1", r.CLI("HLEN", kb.Conn("x")))
			assert.Equal(t, "1", r.CLI("SISMEMBER", kb.BrokerConns("ia"), "x"))
			assert.NotContains(t, r.CLI("HGET", kb.Seen("x"), "alice"), "disconnected_ms", "alice still holds x: her use has no end")
		})
	}
}

// HOLDS: a relisted connection whose connect the queue dropped is listed
// in the memo, and a memo sweep (much later) and a prune of unlisted
// entries keep it: the relist's end (dropGhosts) keeps its live entry,
// while an ended connection's ghost brought back beside it goes.
// Targets conflicts/sweep.go (forgettable: cur == 0 only) with
// conflicts/lease.go dropGhosts (`!ok || e.cur == 0`).
func TestAtk30SweepKeepsRelistedListed(t *testing.T) {
	r := testenv.StartRedis(t)
	kb := keys.Builder{Prefix: "guard:"}
	a, _, clk := redisTracker(t, r, "ia", testOptions())
	x := a.NewConn("alice", "192.0.2.1", clk.now())
	y := a.NewConn("bob", "192.0.2.2", clk.now())
	a.handleSafely([]event{{kind: evConnect, clientID: "y", conn: y}})
	ghost := r.CLI("HGET", kb.Conn("y"), "ia")
	a.handleSafely([]event{{kind: evDisconnect, clientID: "y", conn: y}})
	// x's connect was dropped; Redis restarted from a snapshot holding y.
	r.CLI("HSET", kb.Conn("y"), "ia", ghost)
	r.CLI("SADD", kb.BrokerConns("ia"), "y")
	a.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x}})
	clk.advance(24 * time.Hour)
	a.sweep(clk.now().UnixMilli())
	a.pruneUnlisted()
	a.handleSafely([]event{{kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
	assert.Equal(t, "1", r.CLI("HLEN", kb.Conn("x")), "x is held: kept")
	assert.Equal(t, "1", r.CLI("SISMEMBER", kb.BrokerConns("ia"), "x"))
	assert.Equal(t, "0", r.CLI("HLEN", kb.Conn("y")), "y's ghost goes")
}
