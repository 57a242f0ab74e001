package conflicts

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// atk39 attacks the end check after b4f7ab0 (Prior.Newer, span's window
// edge, retryEnds, pendingEnds).

// Was a DEFECT (fixed: first by leftScript's -1 for a use begun at or after the connection; since atk41 no other use of the principal skips the check). Prior.Newer is leftScript's 0, which it returns for any record
// of another connection of the principal without an end ("not d"), not only
// for a newer one. A ghost (an open use of an older connection of the
// principal, on a broker that died before its reap reached the snapshot,
// brought back by a Redis restarted from that snapshot) is taken for a
// newer use, and span skips the end check. README: an end whose removal
// finds no live entry is checked "as its relist would have checked them,
// up to its end; not when a newer use of its principal holds the record
// (that connect evaluated everything before it)". Here no newer use exists:
// the record is older than the holder, and its connect evaluated nothing
// after it. With a conflict_window shorter than the ghost's age, bob's
// connect ignores the ghost (older than the window; its broker's lease is
// gone), finds nothing; alice's end after the restart finds her entry
// missing, and leftScript keeps the ghost: Newer, skipped. Observed: no
// finding; expected alice,bob (bob took x while alice held it).
func TestAtk39GhostOpenUseTakenForNewer(t *testing.T) {
	r := testenv.StartRedis(t)
	for _, deny := range []bool{false, true} {
		t.Run(map[bool]string{false: "flag", true: "deny"}[deny], func(t *testing.T) {
			r.CLI("FLUSHALL")
			opts := testOptions()
			opts.Window = 5 * time.Second
			opts.Deny = deny
			a, as, b, bs, clk := twoTrackers(t, r, opts)
			c, cs, _ := redisTracker(t, r, "ic", opts)
			c.now = clk.now
			c.renew()
			// alice's older connection on broker C: the snapshot holds its
			// open use (C dies later; its reap's end is after the snapshot).
			o := c.NewConn("alice", "192.0.2.7", clk.now())
			c.handleSafely([]event{{kind: evConnect, clientID: "x", conn: o}})
			seen := strings.Split(strings.TrimSpace(r.CLI("HGETALL", "guard:seen:x")), "\n")
			require.Len(t, seen, 2, "alice's open use of o")
			require.NotContains(t, seen[1], `"disconnected_ms":1`, "open")
			// C dies; its connection ends unseen. Past the window, alice
			// connects on A.
			clk.advance(10 * time.Second)
			a.renew()
			b.renew()
			x := a.NewConn("alice", "192.0.2.1", clk.now())
			if deny {
				_, err := as.Claim(t.Context(), "x", a.StoreConn(x), claimAll)
				require.NoError(t, err)
			}
			a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x}})
			clk.advance(time.Second)
			// Redis restarts from the older snapshot: x's entry and use are
			// gone, the ghost's use is back (its live entry too, but its
			// broker's lease is gone: ignored, so not restored here).
			r.CLI("FLUSHALL")
			r.CLI("HSET", "guard:seen:x", seen[0], seen[1])
			a.renew()
			b.renew()
			clk.advance(100 * time.Millisecond)
			y := b.NewConn("bob", "192.0.2.2", clk.now())
			if deny {
				_, err := bs.Claim(t.Context(), "x", b.StoreConn(y), claimAll)
				require.NoError(t, err)
			}
			b.handleSafely([]event{{kind: evConnect, clientID: "x", conn: y}})
			require.Empty(t, findingsOf("x", as, bs, cs), "bob's connect found nothing in the window")
			clk.advance(30 * time.Millisecond)
			a.handleSafely([]event{{kind: evDisconnect, clientID: "x", conn: x}})
			assert.Equal(t, []string{"alice,bob"}, findingsOf("x", as, bs, cs), "bob took x while alice held it")
		})
	}
}

// Was a DEFECT (fixed: span starts a millisecond after the window). span's edge is off by one millisecond. A connect flags another
// principal's use whose last moment is at now-conflict_window or later
// (evaluate drops only last < now-window), so a connect made exactly
// conflict_window after the held use flagged it; span checks the uses
// made at last+window or later (between: ConnectedMs >= from), so the end
// check reports it again. README: "One whose use Redis held is checked only
// against the uses made more than conflict_window after that use". Observed:
// two findings (bob's connect's, alice's end's); expected one.
func TestAtk39WindowEdgeExactMillisecondRepeats(t *testing.T) {
	r := testenv.StartRedis(t)
	opts := testOptions()
	opts.Window = 2 * time.Second
	a, as, b, bs, clk := twoTrackers(t, r, opts)
	x := a.NewConn("alice", "192.0.2.1", clk.now())
	a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x}})
	clk.advance(opts.Window) // exactly the window after her use began
	r.CLI("DEL", "guard:conn:x")
	y := b.NewConn("bob", "192.0.2.2", clk.now())
	b.handleSafely([]event{{kind: evConnect, clientID: "x", conn: y}})
	require.Equal(t, []string{"alice,bob"}, findingsOf("x", as, bs), "bob's connect flagged her open use, at the window's edge")
	clk.advance(200 * time.Millisecond)
	a.handleSafely([]event{{kind: evDisconnect, clientID: "x", conn: x}})
	assert.Equal(t, []string{"alice,bob"}, findingsOf("x", as, bs), "no repeat")
}

// DEFECT, left as a stated repeat (README, the end check; skipped): what the
// retry reads is the same when the first attempt found the entry lost (a
// flush before it) and when it found it there: its removal finds nothing
// and its principal's record is its own, ended by that attempt. A skip
// would miss the first; the check repeats the second, folded within
// findings_fold, and only for ends whose write was answered too late.
// An ordinary end (its live entry there, nothing lost) whose write
// Redis took but answered too late is kept for a retry; the retry's removal
// finds nothing (its own first attempt took it), flushRetry ignores what
// Redis held of the use and checks it from its connect, against every use
// since: bob, whose connect saw alice live and flagged her, is reported
// again, and the retry costs a read (Peek). README: an end "that finds its
// live entry costs no command more", and only uses no connect evaluated are
// checked ("every connect since saw it"); the twice-reporting it admits is a
// connect's late-answered write's use made meanwhile and two brokers of one
// principal, not this. Observed: alice,bob twice, one Peek; expected once.
func TestAtk39LateAnsweredEndRetryRepeats(t *testing.T) {
	t.Skip("a stated repeat (README, the end check): a late-answered end cannot tell a loss before its first attempt from none, and a miss is worse than a repeat")
	r := testenv.StartRedis(t)
	for _, deny := range []bool{false, true} {
		t.Run(map[bool]string{false: "flag", true: "deny"}[deny], func(t *testing.T) {
			r.CLI("FLUSHALL")
			opts := testOptions()
			opts.Deny = deny
			fs := &failAfterWrite{recStore: newRecStore(t, r)}
			a, b, bs, clk := twoTrackersOn(t, r, fs, opts)
			as := fs.recStore
			connect := func(tr *Tracker, s *recStore, who, ip string) Conn {
				c := tr.NewConn(who, ip, clk.now())
				if deny {
					_, err := s.Claim(t.Context(), "x", tr.StoreConn(c), claimAll)
					require.NoError(t, err)
				}
				tr.handleSafely([]event{{kind: evConnect, clientID: "x", conn: c}})
				return c
			}
			x := connect(a, as, "alice", "192.0.2.1")
			clk.advance(time.Second)
			connect(b, bs, "bob", "192.0.2.2")
			require.Equal(t, []string{"alice,bob"}, findingsOf("x", as, bs), "bob's connect saw alice live")
			clk.advance(time.Second)
			fs.fail.Store(true)
			a.handleSafely([]event{{kind: evDisconnect, clientID: "x", conn: x}})
			fs.fail.Store(false)
			require.Equal(t, "0", strings.TrimSpace(r.CLI("HEXISTS", "guard:conn:x", "ia")), "Redis took the end")
			clk.advance(time.Second)
			a.renew() // flushRetry
			assert.Equal(t, []string{"alice,bob"}, findingsOf("x", as, bs), "no repeat")
			assert.Zero(t, peeks(as), "an ordinary end: no read")
		})
	}
}

// HOLDS (changed since atk41: Prior.Newer is gone, and the repeat it hid is stated): the NOSCRIPT replay keeps Prior.Newer. atk38's repeat after a
// reap (alice again on a third broker, flagged by bob's connect), with the
// script cache flushed before alice@A's end: her end is skipped, no repeat.
func TestAtk39NoscriptReplayKeepsNewer(t *testing.T) {
	r := testenv.StartRedis(t)
	opts := testOptions()
	a, as, clk := redisTracker(t, r, "ia", opts)
	b, bs, _ := redisTracker(t, r, "ib", opts)
	c, cs, _ := redisTracker(t, r, "ic", opts)
	b.now = clk.now
	c.now = clk.now
	a.renew()
	b.renew()
	c.renew()
	x := a.NewConn("alice", "192.0.2.1", clk.now())
	a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x}})
	r.CLI("ZADD", "guard:brokers", "1", "ia")
	clk.advance(2 * opts.Lease)
	b.renew()
	c.renew()
	require.Equal(t, "0", strings.TrimSpace(r.CLI("HEXISTS", "guard:conn:x", "ia")), "reaped")
	clk.advance(time.Second)
	z := c.NewConn("alice", "192.0.2.9", clk.now())
	c.handleSafely([]event{{kind: evConnect, clientID: "x", conn: z}})
	clk.advance(time.Second)
	y := b.NewConn("bob", "192.0.2.2", clk.now())
	b.handleSafely([]event{{kind: evConnect, clientID: "x", conn: y}})
	require.Equal(t, []string{"alice,bob"}, findingsOf("x", as, bs, cs))
	clk.advance(time.Second)
	r.CLI("SCRIPT", "FLUSH")
	a.handleSafely([]event{{kind: evDisconnect, clientID: "x", conn: x}})
	// Since atk41 a newer use of the principal vouches for nothing (its
	// connect may have skipped its read): the end is read and the finding
	// repeated, as without the replay (README).
	assert.Equal(t, []string{"alice,bob", "alice,bob"}, findingsOf("x", as, bs, cs), "the stated repeat, after the replay too")
	assert.Equal(t, 1, peeks(as), "read once")
}

// HOLDS: ordinary ends cost no read and no command more than a plain end:
// a takeover by the same principal on another broker (both modes), and a
// connect and disconnect folded into one batch after a flush (the pair
// writes no live entry: its end has nothing to find missing).
func TestAtk39OrdinaryEndsNoExtraCommands(t *testing.T) {
	r := testenv.StartRedis(t)
	for _, deny := range []bool{false, true} {
		t.Run(map[bool]string{false: "flag", true: "deny"}[deny], func(t *testing.T) {
			r.CLI("FLUSHALL")
			opts := testOptions()
			opts.Deny = deny
			a, as, b, bs, clk := twoTrackers(t, r, opts)
			connect := func(tr *Tracker, s *recStore, id, who, ip string) Conn {
				c := tr.NewConn(who, ip, clk.now())
				if deny {
					_, err := s.Claim(t.Context(), id, tr.StoreConn(c), claimAll)
					require.NoError(t, err)
				}
				tr.handleSafely([]event{{kind: evConnect, clientID: id, conn: c}})
				return c
			}
			endCost := func(tr *Tracker, id string, c Conn) int64 {
				before := commandsSoFar(t, r)
				tr.handleSafely([]event{{kind: evDisconnect, clientID: id, conn: c}})
				return commandsSoFar(t, r) - before
			}
			// Baseline: a plain end, warm scripts.
			p := connect(a, as, "w", "alice", "192.0.2.1")
			clk.advance(time.Second)
			endCost(a, "w", p)
			p = connect(a, as, "p", "alice", "192.0.2.1")
			clk.advance(time.Second)
			plain := endCost(a, "p", p)
			// Same principal on the other broker meanwhile.
			x := connect(a, as, "x", "alice", "192.0.2.1")
			clk.advance(time.Second)
			connect(b, bs, "x", "alice", "192.0.2.3")
			clk.advance(time.Second)
			assert.LessOrEqual(t, endCost(a, "x", x), plain, "takeover elsewhere: no more than a plain end")
			// A folded pair after a flush.
			r.CLI("FLUSHALL")
			a.renew()
			b.renew()
			q := a.NewConn("alice", "192.0.2.1", clk.now())
			if deny {
				_, err := as.Claim(t.Context(), "q", a.StoreConn(q), claimAll)
				require.NoError(t, err)
			}
			clk.advance(10 * time.Millisecond)
			a.handleSafely([]event{{kind: evConnect, clientID: "q", conn: q}, {kind: evDisconnect, clientID: "q", conn: q}})
			assert.Zero(t, peeks(as, bs), "no read for ordinary ends")
			assert.Empty(t, findingsOf("x", as, bs))
			assert.Empty(t, findingsOf("q", as, bs))
		})
	}
}
