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
