package conflicts

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// stopStore is a real store whose own-stop reap (lease 0) reaches none of
// the connections: the brokerconns set is a string while it runs (SSCAN
// meets WRONGTYPE), as a stop whose 1.5 s ran out before the first batch.
// It counts the takeover counts asked of it, and its calls.
type stopStore struct {
	*recStore
	r         *testenv.Redis
	takeovers atomic.Int64 // client IDs counted
	calls     atomic.Int64 // calls to count them
}

func (s *stopStore) ReapCount(ctx context.Context, instance string, endMs int64, lease, window time.Duration) (int, error) {
	if lease > 0 {
		return s.recStore.ReapCount(ctx, instance, endMs, lease, window)
	}
	set := keys.Builder{Prefix: "guard:"}.BrokerConns(instance)
	s.r.CLI("RENAME", set, set+":aside")
	s.r.CLI("SET", set, "x")
	n, err := s.recStore.ReapCount(ctx, instance, endMs, lease, window)
	s.r.CLI("DEL", set)
	s.r.CLI("RENAME", set+":aside", set)
	return n, err
}

func (s *stopStore) CountTakeovers(ctx context.Context, ts []store.Takeover, window time.Duration, limit int) ([]int64, error) {
	s.takeovers.Add(int64(len(ts)))
	s.calls.Add(1)
	return s.recStore.CountTakeovers(ctx, ts, window, limit)
}

// A fleet reconnecting to a restarted broker whose stop ran out of time
// before reaping its connections: the old instance is dead at the new
// one's first renewal, which ends them, so a device's reconnect is a new
// connection, not a takeover of its own live one on a live broker (a
// takeover count each, one round trip at a time). Before, the old lease
// ran on for broker_lease after its last renewal, and with it the live
// entries: 40 takeover counts for 40 devices.
func TestStopCutShortRestartIsNoTakeover(t *testing.T) {
	r := testenv.StartRedis(t)
	st := &stopStore{recStore: newRecStore(t, r), r: r}
	opts := testOptions()
	old, clk, _ := tracker(t, st, opts)
	old.instance = "old"
	old.renew()
	const devices = 40
	var batch []event
	for i := range devices {
		batch = append(batch, event{kind: evConnect, clientID: "dev-" + strconv.Itoa(i), conn: old.NewConn("u"+strconv.Itoa(i), "192.0.2.7", clk.now())})
	}
	require.NoError(t, old.handle(t.Context(), batch))
	clk.advance(time.Second)
	old.Close(t.Context())
	require.Equal(t, strconv.Itoa(devices), r.CLI("SCARD", "guard:brokerconns:old"), "the stop reaped nothing")

	clk.advance(2 * time.Second)
	tr, _, _ := tracker(t, st, opts)
	tr.now = clk.now
	tr.instance = "new"
	tr.renew() // Run's first step
	batch = batch[:0]
	for i := range devices {
		batch = append(batch, event{kind: evConnect, clientID: "dev-" + strconv.Itoa(i), conn: tr.NewConn("u"+strconv.Itoa(i), "192.0.2.7", clk.now())})
	}
	require.NoError(t, tr.handle(t.Context(), batch))
	assert.Zero(t, st.takeovers.Load(), "a reconnect after the stop is no takeover")
	assert.Equal(t, "0", r.CLI("EXISTS", "guard:brokerconns:old"), "the first renewal reaped the stopped broker")
	for i := range devices {
		live, err := st.LiveConns(t.Context(), "dev-"+strconv.Itoa(i))
		require.NoError(t, err)
		if assert.Len(t, live, 1) {
			assert.Equal(t, "new", live[0].Instance)
		}
	}
}

// A batch's duplicate connections are counted in one call, one round
// trip (store.CountTakeovers), not one each: a fleet whose
// connections are all taken over at once (a NAT that dropped every flow)
// cost the worker a round trip per device. At takeover_limit (3) each
// device's third takeover is a finding, as before.
func TestTakeoverStormCountedInOneCall(t *testing.T) {
	r := testenv.StartRedis(t)
	st := &stopStore{recStore: newRecStore(t, r), r: r}
	tr, clk, _ := tracker(t, st, testOptions())
	tr.renew()
	const devices = 20
	held := make([]Conn, devices)
	var batch []event
	for i := range held {
		held[i] = tr.NewConn("u"+strconv.Itoa(i), "192.0.2.7", clk.now())
		batch = append(batch, event{kind: evConnect, clientID: "dev-" + strconv.Itoa(i), conn: held[i]})
	}
	require.NoError(t, tr.handle(t.Context(), batch))
	for round := 1; round <= 3; round++ {
		clk.advance(time.Second)
		batch = batch[:0]
		for i := range held {
			id := "dev-" + strconv.Itoa(i)
			c, old := tr.NewConn("u"+strconv.Itoa(i), "192.0.2.7", clk.now()), held[i]
			batch = append(batch, event{kind: evConnect, clientID: id, conn: c, other: &old}, event{kind: evDisconnect, clientID: id, conn: old})
			held[i] = c
		}
		calls := st.calls.Load()
		require.NoError(t, tr.handle(t.Context(), batch))
		assert.Equal(t, calls+1, st.calls.Load(), "round %d: one call for the batch's takeovers", round)
		assert.EqualValues(t, devices*round, st.takeovers.Load())
	}
	for i := range held {
		assert.Equal(t, []string{"u" + strconv.Itoa(i)}, findingsOf("dev-"+strconv.Itoa(i), st.recStore), "the third takeover is a finding")
	}
}

// A renewal tells of a dead broker's connections only when its reap found
// some: a broker's own stop ends its lease first, and may have ended every
// connection by the time another broker's renewal, which read its lease
// as ended, reaps it. Before, that renewal logged "cleared the live
// connections" of a broker that had cleared them itself.
func TestRenewLogsClearedOnlyWhenFound(t *testing.T) {
	r := testenv.StartRedis(t)
	st := newRecStore(t, r)
	a, clk, _ := tracker(t, st, testOptions())
	a.instance = "ia"
	b, _, logs := tracker(t, st, testOptions())
	b.instance = "ib"
	b.now = clk.now

	// ia stopped and reaped all it held, but its lease's removal is not in
	// yet (as between the stop's ZADD and its last ZREM).
	r.CLI("ZADD", "guard:brokers", "1", "ia")
	b.renew()
	assert.NotContains(t, logs.all(), "cleared the live connections", "nothing was left to clear")

	// ia holds two connections past its stop: they are cleared, and told.
	for _, id := range []string{"d1", "d2"} {
		require.NoError(t, a.handle(t.Context(), []event{{kind: evConnect, clientID: id, conn: a.NewConn("alice", "192.0.2.1", clk.now())}}))
	}
	r.CLI("ZADD", "guard:brokers", "1", "ia")
	b.renew()
	assert.Contains(t, logs.all(), `cleared the live connections of broker instance "ia": its lease ran out (2 connections)`)
	assert.Equal(t, "0", r.CLI("EXISTS", "guard:conn:d1"))
}

// blockingReap is a real store whose reap of a dead broker takes as long
// as its context lets it (a dead broker's 100 000 connections), and says
// when it started.
type blockingReap struct {
	*recStore
	started chan struct{}
}

func (s *blockingReap) ReapCount(ctx context.Context, instance string, endMs int64, lease, window time.Duration) (int, error) {
	if lease > 0 {
		select {
		case s.started <- struct{}{}:
		default:
		}
		<-ctx.Done()
		return 0, ctx.Err()
	}
	return s.recStore.ReapCount(ctx, instance, endMs, lease, window)
}

// The worker stops within moments of its stop while a renewal reaps a dead
// broker: the plugin's cleanup waits 1.5 s for it, and then skips this
// broker's own reap (its lease and live entries then kept broker_lease).
// Before, the reap ran on for the renewal's 5 s bound: brokers stopped
// together (a node drain), one reaping another's leftovers, each kept its
// own.
func TestStopEndsADeadBrokersReap(t *testing.T) {
	r := testenv.StartRedis(t)
	st := &blockingReap{recStore: newRecStore(t, r), started: make(chan struct{}, 1)}
	tr, _, _ := tracker(t, st, testOptions())
	r.CLI("ZADD", "guard:brokers", "1", "dead")
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		tr.Run(stop)
		close(done)
	}()
	select {
	case <-st.started:
	case <-time.After(5 * time.Second):
		t.Fatal("the first renewal did not reap the dead broker")
	}
	at := time.Now()
	close(stop)
	select {
	case <-done:
	case <-time.After(renewBound + time.Second):
		t.Fatal("Run did not return")
	}
	assert.Less(t, time.Since(at), 500*time.Millisecond, "the worker waited for the dead broker's reap")
}

// A renewal's reap of a dead broker does not hold the worker: the
// connects queued meanwhile are written while it runs. A restarted
// broker's first renewal reaps what its stopped instance left (3.6 s for
// 118 000 connections), just as its whole fleet reconnects; before, the
// worker waited for it up to renewBound (5 s), the CONNECTs queueing
// behind it, and past the queue's 65 536 not tracked at all.
func TestDeadBrokersReapLeavesTheWorkerFree(t *testing.T) {
	was := reapInline
	reapInline = reapInlineDefault
	t.Cleanup(func() { reapInline = was })
	r := testenv.StartRedis(t)
	st := &blockingReap{recStore: newRecStore(t, r), started: make(chan struct{}, 1)}
	tr, clk, _ := tracker(t, st, testOptions())
	r.CLI("ZADD", "guard:brokers", "1", "dead")
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		tr.Run(stop)
		close(done)
	}()
	defer func() {
		close(stop)
		<-done
	}()
	select {
	case <-st.started:
	case <-time.After(5 * time.Second):
		t.Fatal("the first renewal did not reap the dead broker")
	}
	at := time.Now()
	tr.Connected("dev-1", tr.NewConn("alice", "192.0.2.1", clk.now()), nil)
	for r.CLI("EXISTS", "guard:conn:dev-1") != "1" {
		if time.Since(at) > 2*time.Second {
			t.Fatal("no connect was written while the dead broker's reap ran")
		}
		time.Sleep(10 * time.Millisecond)
	}
	assert.Less(t, time.Since(at), renewBound-time.Second, "the connect waited for the reap")
	assert.True(t, tr.reaping.Load(), "the reap still runs")
}

// A fleet moving to another broker after its broker's stop, before that
// broker's next renewal: the stop ended its lease, and its connections it
// did not reach are no takeovers there, though the renewal's view still
// holds it live. While it runs, they are (the control half). Before, each
// device counted one towards takeover_limit (atk91: 10 159 of 19 000, a
// stop cut short by Redis hung for 2.5 s).
func TestStoppedBrokersLeftoversNoTakeoverBeforeRenewal(t *testing.T) {
	r, st, a, b, clk := twoBrokers(t)
	const devices = 40
	var batch []event
	for i := range devices {
		batch = append(batch, event{kind: evConnect, clientID: "dev-" + strconv.Itoa(i), conn: a.NewConn("u"+strconv.Itoa(i), "192.0.2.7", clk.now())})
	}
	require.NoError(t, a.handle(t.Context(), batch))
	move := func(from, to int) {
		t.Helper()
		clk.advance(time.Second)
		batch = batch[:0]
		for i := from; i < to; i++ {
			batch = append(batch, event{kind: evConnect, clientID: "dev-" + strconv.Itoa(i), conn: b.NewConn("u"+strconv.Itoa(i), "192.0.2.8", clk.now())})
		}
		require.NoError(t, b.handle(t.Context(), batch))
	}
	move(0, devices/2)
	require.EqualValues(t, devices/2, st.takeovers.Load(), "a runs: its devices' connections there are taken over")

	clk.advance(time.Second)
	a.Close(t.Context()) // cut short: reaps none, ends its lease
	require.Equal(t, strconv.Itoa(devices), r.CLI("SCARD", "guard:brokerconns:a"), "the stop reaped nothing")
	move(devices/2, devices)
	assert.EqualValues(t, devices/2, st.takeovers.Load(), "a stopped: no takeover of its leftovers")
}

// A lease Redis does not hold counts as running: after a flush every
// broker's lease is gone until its next renewal, and what it records
// meanwhile is live. Before, a missing lease read as a stopped broker's
// and the device's takeover there was not counted (atk92). And the
// displaced connection is the one that is not the new one's, whichever
// of the two is newer: a stopped broker whose clock ran ahead of this
// one's had its leftovers counted as takeovers again (atk92).
func TestLeaseReadBeforeTakeoverCount(t *testing.T) {
	r, st, a, b, clk := twoBrokers(t)
	connect := func(tr *Tracker, id, user string, at time.Time) {
		t.Helper()
		require.NoError(t, tr.handle(t.Context(), []event{{kind: evConnect, clientID: id, conn: tr.NewConn(user, "192.0.2.7", at)}}))
	}

	// a's lease gone from Redis (flushed, a's connect written again
	// before its renewal): a's connection counts.
	connect(a, "dev-1", "u1", clk.now())
	r.CLI("ZREM", "guard:brokers", "a")
	clk.advance(time.Second)
	connect(b, "dev-1", "u1", clk.now())
	assert.EqualValues(t, 1, st.takeovers.Load(), "a lease Redis does not hold runs")

	// a, its clock 10 s ahead of b's, stopped: its leftover is no takeover.
	a.renew()
	connect(a, "dev-2", "u2", clk.now().Add(10*time.Second))
	clk.advance(time.Second)
	a.Close(t.Context()) // cut short: reaps none, ends its lease
	clk.advance(time.Second)
	connect(b, "dev-2", "u2", clk.now())
	assert.EqualValues(t, 1, st.takeovers.Load(), "a stopped broker's leftover, its connect newer than this one's")
}

// A local takeover is counted though the client ID also has a stopped
// broker's leftover: the duplicate names the connection taken over here.
// Before, it named the leftover, which heldLive rightly skipped, and the
// takeover here went uncounted with it (atk93).
func TestLocalTakeoverCountedBesideStoppedLeftover(t *testing.T) {
	_, st, a, b, clk := twoBrokers(t)
	require.NoError(t, a.handle(t.Context(), []event{{kind: evConnect, clientID: "dev-0", conn: a.NewConn("u0", "192.0.2.7", clk.now())}}))
	clk.advance(time.Second)
	a.Close(t.Context()) // cut short: reaps none, ends its lease
	clk.advance(time.Second)
	x := b.NewConn("u0", "192.0.2.8", clk.now())
	require.NoError(t, b.handle(t.Context(), []event{{kind: evConnect, clientID: "dev-0", conn: x}}))
	require.Zero(t, st.takeovers.Load(), "a's leftover: no takeover")
	clk.advance(time.Second)
	require.NoError(t, b.handle(t.Context(), []event{
		{kind: evConnect, clientID: "dev-0", conn: b.NewConn("u0", "192.0.2.8", clk.now()), other: &x},
		{kind: evDisconnect, clientID: "dev-0", conn: x},
	}))
	assert.EqualValues(t, 1, st.takeovers.Load(), "the takeover here counts")
}

// twoBrokers is two trackers, "a" and "b", on one real Redis, on one
// clock, each renewed once in that order: b's view holds a alive. Their
// store counts the takeovers asked of it, and its own-stop reap reaches
// none (stopStore).
func twoBrokers(t *testing.T) (*testenv.Redis, *stopStore, *Tracker, *Tracker, *clock) {
	t.Helper()
	r := testenv.StartRedis(t)
	st := &stopStore{recStore: newRecStore(t, r), r: r}
	opts := testOptions()
	a, clk, _ := tracker(t, st, opts)
	a.instance = "a"
	a.renew()
	b, _, _ := tracker(t, st, opts)
	b.now = clk.now
	b.instance = "b"
	b.renew()
	return r, st, a, b, clk
}
