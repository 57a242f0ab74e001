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

func (s *stopStore) Reap(ctx context.Context, instance string, endMs int64, lease, window time.Duration) error {
	if lease > 0 {
		return s.recStore.Reap(ctx, instance, endMs, lease, window)
	}
	set := keys.Builder{Prefix: "guard:"}.BrokerConns(instance)
	s.r.CLI("RENAME", set, set+":aside")
	s.r.CLI("SET", set, "x")
	err := s.recStore.Reap(ctx, instance, endMs, lease, window)
	s.r.CLI("DEL", set)
	s.r.CLI("RENAME", set+":aside", set)
	return err
}

func (s *stopStore) CountTakeoversTracked(ctx context.Context, tracked []string, window time.Duration) ([]int64, error) {
	s.takeovers.Add(int64(len(tracked)))
	s.calls.Add(1)
	return s.recStore.CountTakeoversTracked(ctx, tracked, window)
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
// trip (store.CountTakeoversTracked), not one each: a fleet whose
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
