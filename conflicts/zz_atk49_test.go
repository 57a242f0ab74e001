package conflicts

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// atk49FlappingSetup starts broker b's worker (real clock, deny, lease
// 1.5 s: a tick every 500 ms) on Redis r, after broker iz (which never
// renews a lease: it died before its first renewal) wrote alice's live
// entry of client ID x ten seconds old, older than broker_lease.
func atk49FlappingSetup(t *testing.T, r *testenv.Redis) (b *Tracker, stop func()) {
	r.CLI("FLUSHALL")
	opts := testOptions()
	opts.Deny = true
	opts.Lease = 1500 * time.Millisecond
	z, _, _ := redisTracker(t, r, "iz", opts)
	_, holder, err := z.Claim("x", "alice", "192.0.2.1", time.Now().Add(-10*time.Second))
	require.NoError(t, err)
	require.Nil(t, holder)
	require.NotEmpty(t, r.CLI("HGET", "guard:conn:x", "iz"), "iz's entry of alice")
	b = New(opts, Deps{Store: newRecStore(t, r), Log: (&logSink{}).log, Relist: func() {}})
	b.instance = "ib"
	st, done := make(chan struct{}), make(chan struct{})
	go func() { b.Run(st); close(done) }()
	require.Eventually(t, func() bool { return r.CLI("ZSCORE", "guard:brokers", "ib") != "" }, 2*time.Second, 10*time.Millisecond, "b's first renewal")
	return b, func() { close(st); <-done }
}

// HOLDS (control): without RedisLost, b's first tick (broker_lease/3 after
// its start) clears unseenAll, and iz's entry, older than broker_lease, of
// a broker never seen, no longer counts: bob is let in on x.
func TestAtk49NoFlapTickClearsUnseenAll(t *testing.T) {
	r := testenv.StartRedis(t)
	b, stop := atk49FlappingSetup(t, r)
	defer stop()
	assert.Eventually(t, func() bool { return !b.unseenAll.Load() }, 2*time.Second, 10*time.Millisecond, "a tick clears unseenAll")
	_, holder, err := b.Claim("x", "bob", "192.0.2.2", time.Now())
	require.NoError(t, err)
	assert.Nil(t, holder, "iz never leased; its entry is older than broker_lease")
}

// DEFECT: a replica session that breaks more often than broker_lease/3
// (OnLost's backoff restarts at 100 ms after every session that worked:
// a proxy's idle cut, a pubsub output-buffer limit, a CLIENT KILL loop)
// calls RedisLost each time; each early renewal resets the lease ticker
// (tracker.Run), so the regular tick never comes, and only a tick clears
// unseenAll (renewLease(early) never does). b's lease runs all along (each
// early renewal succeeds, lapsed=false) but b stays in its start-up view
// for as long as the flapping lasts: the entry of a broker that died
// before its first renewal counts whatever its age, and under deny bob is
// refused client ID x for ever (here 3 s = 2 x broker_lease, 6 ticks'
// worth).
// Claim: README "until a renewal at its regular tick (every
// broker_lease/3) succeeds with its lease running"; "a broker it has not
// seen yet ... while they are younger than broker_lease".
// Observed: unseenAll still true after 3 s of early renewals every 150 ms,
// no tick ran; bob refused by iz's 13 s-old entry.
// Expected: a tick (or its equivalent) every broker_lease/3 however often
// RedisLost asks, unseenAll cleared within about broker_lease/3 of a
// renewal with the lease running, bob let in as in the control.
// Runs: failed 4 of 4 (-count=2 once, then -count=1 twice).
func TestAtk49FlappingSessionNeverClearsUnseenAll(t *testing.T) {
	r := testenv.StartRedis(t)
	b, stop := atk49FlappingSetup(t, r)
	defer stop()
	end := time.Now().Add(3 * time.Second)
	for time.Now().Before(end) {
		b.RedisLost() // the replica's session broke again
		time.Sleep(150 * time.Millisecond)
	}
	require.NotEmpty(t, r.CLI("ZSCORE", "guard:brokers", "ib"), "b's lease runs: the early renewals succeed")
	assert.False(t, b.unseenAll.Load(), "unseenAll still set after 3 s (6 ticks' worth) of successful renewals")
	_, holder, err := b.Claim("x", "bob", "192.0.2.2", time.Now())
	require.NoError(t, err)
	assert.Nil(t, holder, "bob refused by the entry of a broker never leased, 13 s old (broker_lease 1.5 s)")
}

// DEFECT: the early renewal (e27b97f) puts a resumed broker's lease back
// in Redis at once, but another broker's view names it only at its own
// next renewal. After a flush, broker a paused (12 s, less than its 30 s
// lease) while b ticked twice (the lapsed tick set unseenAll, the next,
// its lease running, cleared it: a, whose lease the flush took, named by
// nobody). a resumes: its replica's notice renews its lease at once and
// relists alice's connection of x (held two minutes). Until b's next tick
// (up to broker_lease/3 later) b ignores that entry (a unnamed, the entry
// older than broker_lease) and lets bob take x under deny, a's lease
// running and alice live in Redis all along.
// Claim: README "The replica's notice also renews the broker's lease at
// once ... so that the entries written again count for the other brokers
// as the lease does (atk47 ... with this broker paused for 4 s of its 6 s
// lease, another principal took their client IDs)".
// Observed: bob's claim on b let in (holder nil) after a's early renewal
// and relist.
// Expected: refused, as it is after b's next tick (checked last).
// Runs: failed 4 of 4 (-count=2 once, then -count=1 twice).
func TestAtk49ResumeAfterOthersClearingTickDenyLetsIn(t *testing.T) {
	t.Skip("a Known limit (README, \"A late relist counts for the others at their next renewal\"), pinned by TestLimitLateRelistNotYetNamed")
	r := testenv.StartRedis(t)
	r.CLI("FLUSHALL")
	opts := testOptions()
	opts.Deny = true
	a, _, b, _, clk := twoTrackers(t, r, opts)
	x, holder, err := a.Claim("x", "alice", "192.0.2.1", clk.now())
	require.NoError(t, err)
	require.Nil(t, holder)
	a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x}})
	for range 12 {
		clk.advance(10 * time.Second)
		a.renew()
		b.renew()
	}
	r.CLI("FLUSHALL") // a pauses now, for 12 s
	clk.advance(time.Second)
	b.renew() // its tick: lapsed, unseenAll
	require.True(t, b.unseenAll.Load())
	clk.advance(10 * time.Second)
	b.renew() // its next tick: lease running, unseenAll cleared
	require.False(t, b.unseenAll.Load())
	clk.advance(time.Second)
	// a resumes: its replica notices the flush, renews at once, relists.
	a.renewLease(true)
	require.NotEmpty(t, r.CLI("ZSCORE", "guard:brokers", "ia"), "a's lease back")
	a.handleSafely([]event{{kind: evRelist, clientID: "x", conn: x}, {kind: evRelistDone, conn: Conn{Seq: a.LastSeq()}}})
	require.Contains(t, r.CLI("HKEYS", "guard:conn:x"), "ia", "alice's live entry relisted")
	clk.advance(300 * time.Millisecond)
	_, holder, err = b.Claim("x", "bob", "192.0.2.2", clk.now())
	require.NoError(t, err)
	assert.NotNil(t, holder, "alice live on a, a's lease running: bob refused")

	clk.advance(8 * time.Second)
	b.renew() // b's next tick names a
	_, holder, err = b.Claim("x", "bob", "192.0.2.3", clk.now())
	require.NoError(t, err)
	assert.NotNil(t, holder, "refused once b's tick names a")
}
