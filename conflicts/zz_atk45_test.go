package conflicts

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// atk45 attacks f05c243..511acd0: the lease view (unseenAll), RedisLost /
// forgetMarks / lostAt / fresh / clockBack, and curSkipped / readDone.

// TestAtk45ClockBackRevivesMarksMadeBeforeLoss: DEFECT (511acd0). README:
// once the broker learns that Redis may have lost its keys "it forgets which
// client IDs it read quiet and which principals' uses it recorded, so the
// next connect of each reads and records again"; "A mark ahead of the
// clock (it went back) does not spare a read"; 511acd0: "the marks made
// before the loss stay spent". alice connects and leaves x at second S
// (quiet mark and seen mark at S). A second later the replica reports Redis
// flushed (RedisLost) and a batch stamps lostAt = S+1. The clock then steps
// back 3 s (an NTP step), a batch runs (clockBack: lostAt = S-2), and the
// clock runs on. 2 s after her first use alice reconnects at S+2: her
// pre-loss marks at S are now after lostAt and no longer ahead of the
// clock, so they count again. Expected: her reconnect reads and records
// again (Read, Seen), as in the control (no step). Observed (stepBack): no
// read, no seen record, 4 of 4 runs (-count=2, twice): the flush lost
// alice's use and her client ID's state, and nothing writes it back (a
// principal taking x after her is not flagged against her use). clockBack
// lowers lostAt below marks made before the loss; once the clock passes
// them again, fresh takes them for marks made after it. Any step back
// that crosses a second boundary below a pre-loss mark does it, for as
// long as the mark is young (10 s quiet, 30 s seen).
func TestAtk45ClockBackRevivesMarksMadeBeforeLoss(t *testing.T) {
	r := testenv.StartRedis(t)
	for _, c := range []struct {
		name           string
		at, loss, back time.Duration // alice's use after S, the loss after it, the step back
	}{
		{"control", 0, time.Second, 0},
		{"stepBack3s", 0, time.Second, 3 * time.Second},
		// the notice in the use's own second, a step back of 0.9 s
		{"stepBack900ms", 500 * time.Millisecond, 300 * time.Millisecond, 900 * time.Millisecond},
	} {
		t.Run(c.name, func(t *testing.T) {
			r.CLI("FLUSHALL")
			a, as, clk := redisTracker(t, r, "ia", testOptions())
			a.renew()
			clk.advance(c.at)
			x := a.NewConn("alice", "192.0.2.1", clk.now())
			a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x}, {kind: evDisconnect, clientID: "x", conn: x}})
			clk.advance(c.loss)
			r.CLI("FLUSHALL")
			a.RedisLost()
			y := a.NewConn("carol", "192.0.2.3", clk.now())
			a.handleSafely([]event{{kind: evConnect, clientID: "y", conn: y}}) // lostAt: this second
			if c.back > 0 {
				clk.advance(-c.back)
				z := a.NewConn("dave", "192.0.2.4", clk.now())
				a.handleSafely([]event{{kind: evConnect, clientID: "z", conn: z}}) // clockBack
				clk.advance(c.back)
			}
			clk.advance(time.Second) // by the clock, a second after the notice
			x2 := a.NewConn("alice", "192.0.2.1", clk.now())
			n := len(as.writes)
			a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x2}})
			require.Greater(t, len(as.writes), n)
			w := as.writes[n]
			assert.True(t, w.Read, "a quiet mark made before the loss spares no read")
			assert.NotNil(t, w.Seen, "a seen mark made before the loss spares no record")
			assert.Equal(t, "1", r.CLI("EXISTS", "guard:seen:x"), "alice's use is in Redis again")
		})
	}
}

// TestAtk45StaleViewDeadBrokerBackDenyLetsIn: DEFECT (arguable; 511acd0
// left it). 511acd0: "a broker whose first lease renewal failed (or whose
// renewals fail since) had an empty or stale view ... unseenAll is now set
// at start and at each failed renewal"; README: "while its renewals fail
// ... it counts them whatever their age". The fix makes a stale view count
// the brokers it does not name, but a broker it names as dead stays
// ignored for as long as its renewals fail. Broker b (alice's x) is cut
// off past broker_lease; a's renewal sees b's lease run out (ib: false) and
// reaps it; then a's renewals fail (atk44's model: Redis answers claims,
// not a's renewals). b comes back, renews, and alice's device reconnects
// to x on b. bob claims x on a. Expected: refused (alice holds x live on
// b, whose lease runs), as in the control (a's renewal after b's came back
// succeeds). Observed (renewFails): bob let in beside alice, 4 of 4 runs
// (-count=2, twice), a's view {ia:true ib:false} with unseenAll set: the
// entry of a broker named dead is skipped (leaseView.counts returns the
// name's value before looking at unseenAll's since). Unbounded: for as long
// as a's renewals fail (with renewals succeeding, up to broker_lease/3,
// the README's "ignores ... whose lease it saw run out at its last
// renewal"). Arguable: that sentence may be read as stating it.
func TestAtk45StaleViewDeadBrokerBackDenyLetsIn(t *testing.T) {
	r := testenv.StartRedis(t)
	for _, mode := range []string{"control", "renewFails"} {
		t.Run(mode, func(t *testing.T) {
			r.CLI("FLUSHALL")
			opts := testOptions()
			opts.Deny = true
			as := &atk44FailRenew{recStore: newRecStore(t, r)}
			a, clk, _ := tracker(t, as, opts)
			a.instance = "ia"
			clk.advance(time.Since(clk.now())) // the reaps compare the leases (real time) with the tracker's clock
			h, _, _ := redisTracker(t, r, "ib", opts)
			h.now = clk.now
			h.renew()
			a.renew()
			x, holder, err := h.Claim("x", "alice", "192.0.2.1", clk.now())
			require.NoError(t, err)
			require.Nil(t, holder)
			h.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x}})
			// b cut off past its lease: a sees it run out, and reaps it
			r.CLI("ZADD", "guard:brokers", strconv.FormatInt(time.Now().Add(-time.Minute).UnixMilli(), 10), "ib")
			a.renew()
			require.Equal(t, map[string]bool{"ia": true, "ib": false}, *a.live.Load())
			if mode == "renewFails" {
				as.fail = true
			}
			clk.advance(time.Second)
			h.renew() // b is back
			x2, holder, err := h.Claim("x", "alice", "192.0.2.1", clk.now())
			require.NoError(t, err)
			require.Nil(t, holder)
			h.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x2}})
			clk.advance(10 * time.Second)
			a.renew() // fails, but in the control
			_, holder, err = a.Claim("x", "bob", "192.0.2.2", clk.now())
			require.NoError(t, err, "Redis answers the claim")
			if holder == nil {
				t.Logf("bob let in beside alice; a's view %v, unseenAll %v", *a.live.Load(), a.unseenAll.Load())
			}
			assert.NotNil(t, holder, "alice holds x live on ib, whose lease runs: bob must be refused")
		})
	}
}

// atk45LostAnswer is a recStore whose next WriteConns, once lose is set,
// is taken by Redis and its answer lost (a timeout after the write).
type atk45LostAnswer struct {
	*recStore
	lose bool
}

func (s *atk45LostAnswer) WriteConns(ctx context.Context, ws []store.ConnWrite, window time.Duration) ([]store.State, error) {
	st, err := s.recStore.WriteConns(ctx, ws, window)
	if s.lose && err == nil {
		s.lose = false
		return nil, errors.New("atk45: the answer timed out")
	}
	return st, err
}

// TestAtk45RelistAnswerLostSkipBitIgnored: DEFECT (miss; f93925c,
// 511acd0's readDone not reached, the span's order). README: a reconnect
// that skipped its read has "its relist and its end's check then start at
// that earlier read, its own use held or not" (atk41). alice reads x quiet
// on a, Redis is flushed, bob takes and leaves x on b (his connect finds
// nothing), alice reconnects on a and skips her read (curSkipped). a's
// renewal finds its lease lapsed; its relist's write of alice is taken by
// Redis but the answer is lost (a timeout after the write: "Redis may
// have taken the writes and not answered in time"), so her check is owed;
// the relist 6 s later (relistAgainAt) checks it. Expected: bob flagged
// (alice,bob), as in the control (the first relist answered). Observed
// (answerLost): no finding, 4 of 4 runs (-count=2, twice): span's "owed
// && taken" case (the failed write's live entry and open use are there)
// comes before "skipped" and starts at alice's reconnect, after bob's
// hit-and-run; the earlier read is forgotten although readDone never ran
// (the owed check logged: a relist's, not a connect's). Confirmed by
// experiment, not committed: with "owed && taken && !skipped" in span the
// test passes. Not a regression of 511acd0: the case order predates it.
func TestAtk45RelistAnswerLostSkipBitIgnored(t *testing.T) {
	r := testenv.StartRedis(t)
	for _, mode := range []string{"control", "answerLost"} {
		t.Run(mode, func(t *testing.T) {
			r.CLI("FLUSHALL")
			opts := testOptions()
			as := &atk45LostAnswer{recStore: newRecStore(t, r)}
			a, b, bs, clk := twoTrackersOn(t, r, as, opts)
			x1 := a.NewConn("alice", "192.0.2.1", clk.now())
			a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x1}})
			clk.advance(time.Second)
			r.CLI("FLUSHALL")
			b.renew()
			y := b.NewConn("bob", "192.0.2.2", clk.now())
			b.handleSafely([]event{{kind: evConnect, clientID: "x", conn: y}})
			clk.advance(50 * time.Millisecond)
			b.handleSafely([]event{{kind: evDisconnect, clientID: "x", conn: y}})
			clk.advance(100 * time.Millisecond)
			x2 := a.NewConn("alice", "192.0.2.1", clk.now())
			a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x2, other: &x1}, {kind: evDisconnect, clientID: "x", conn: x1}})
			require.Empty(t, findingsOf("x", as.recStore, bs), "nothing read: x was quiet for alice")
			relist := func() {
				a.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x2}, {kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
			}
			clk.advance(200 * time.Millisecond)
			a.renew() // lapsed: the relist
			as.lose = mode == "answerLost"
			relist()
			require.False(t, as.lose, "the relist wrote")
			clk.advance(6 * time.Second) // relistAgainAt
			a.renew()
			t.Logf("checks owed before the second relist: %v", a.unchecked)
			relist()
			assert.Equal(t, []string{"alice,bob"}, findingsOf("x", as.recStore, bs), "bob's hit-and-run, after alice's read and before her reconnect, is flagged once")
		})
	}
}

// TestAtk45FreshStartAfterFlushDenyLetsIn: DEFECT (511acd0's unseenAll
// rule; atk43's defect on a broker whose first renewal follows the flush).
// README: "Until its first renewal succeeds ... and after a renewal that
// found its own lease lapsed (a flush takes every broker's lease), it
// counts them whatever their age, until a renewal succeeds with its lease
// running". alice has held x on broker b for two minutes. Redis restarts
// empty and, at the same time, broker a (re)starts (a host reboot with
// Redis and a on it; a's new instance). a's first renewal succeeds: its
// lease was absent, as every first renewal finds it, so unseenAll is
// cleared (lapsedAgain needs an earlier success), and its view names only
// itself. b renews and relists alice (her entry back, its connect two
// minutes old). bob claims x on a before a's next renewal. Expected:
// refused, as in the control (no flush: a's first renewal names b).
// Observed (flushAtStart): let in, 4 of 4 runs (-count=2, twice): b is
// unnamed and alice's entry older than broker_lease. A first renewal
// cannot tell a flush from a first start: after a flush the view it gives
// is as incomplete as after a lapse, and for up to broker_lease/3 every
// client ID held longer than broker_lease on another broker is open to
// another principal on a.
func TestAtk45FreshStartAfterFlushDenyLetsIn(t *testing.T) {
	r := testenv.StartRedis(t)
	for _, flush := range []bool{false, true} {
		t.Run(map[bool]string{false: "control", true: "flushAtStart"}[flush], func(t *testing.T) {
			r.CLI("FLUSHALL")
			opts := testOptions()
			opts.Deny = true
			b, _, clk := redisTracker(t, r, "ib", opts)
			b.renew()
			x, holder, err := b.Claim("x", "alice", "192.0.2.1", clk.now())
			require.NoError(t, err)
			require.Nil(t, holder)
			b.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x}})
			for range 12 { // two minutes, b renewing every 10 s
				clk.advance(10 * time.Second)
				b.renew()
			}
			if flush {
				r.CLI("FLUSHALL") // Redis restarted empty
			}
			clk.advance(time.Second)
			a, _, _ := redisTracker(t, r, "ia", opts) // a (re)started
			a.now = clk.now
			a.renew() // its first
			if flush {
				b.renew() // lapsed: b relists
				b.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x}, {kind: evRelistDone, conn: Conn{Seq: b.LastSeq()}}})
				require.Contains(t, r.CLI("HKEYS", "guard:conn:x"), "ib", "alice's live entry relisted")
			}
			clk.advance(2 * time.Second) // a's next renewal is up to 10 s away
			_, holder, err = a.Claim("x", "bob", "192.0.2.2", clk.now())
			require.NoError(t, err)
			if holder == nil {
				t.Logf("bob let in; a's view %v, unseenAll %v", *a.live.Load(), a.unseenAll.Load())
			}
			assert.NotNil(t, holder, "alice holds x live on b, whose lease runs: bob must be refused")
		})
	}
}
