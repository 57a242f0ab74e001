package store

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// A broker's stop that runs out of time part-way through its reap (the
// plugin's cleanup: 1.5 s, about 65 000 held connections) has ended its
// lease already: the next renewal of any broker (the restarted one's
// first) names it dead, so the live entries it did not reach no longer
// count, and that renewal reaps them with the stop's time as their end.
// Before, its lease ran on for up to broker_lease after its last renewal,
// and its live entries with it.
func TestReapOwnStopEndsTheLeaseFirst(t *testing.T) {
	s, r := newStore(t, "guard:")
	kb := keys.Builder{Prefix: "guard:"}
	ctx := context.Background()
	const lease = 30 * time.Second
	_, err := s.RenewLease(ctx, "old", lease)
	require.NoError(t, err)
	var held []string
	for i := range 600 { // two SSCAN batches of 500 at most
		id := "dev-" + strconv.Itoa(i)
		c := Conn{ID: "old-" + strconv.Itoa(i+1), Instance: "old", Principal: "u" + strconv.Itoa(i), ConnectedMs: time.Now().UnixMilli() - 1000}
		require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: id, Instance: "old", Live: &c, Seen: &c}}, time.Hour))
		held = append(held, id)
	}

	// The stop's time runs out after its first batch is read.
	stopCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	reapHook = cancel
	t.Cleanup(func() { reapHook = nil })
	end := time.Now().UnixMilli()
	require.Error(t, s.Reap(stopCtx, "old", end, 0, time.Hour), "cut short")
	reapHook = nil
	assert.Equal(t, strconv.FormatInt(end, 10), r.CLI("ZSCORE", kb.Brokers(), "old"), "the lease ends at the stop")
	left := 0
	for _, id := range held {
		if ok, err := s.rdb.HExists(ctx, kb.Conn(id), "old").Result(); err == nil && ok {
			left++
		}
	}
	require.Positive(t, left, "the stop left live entries")

	// The restarted broker's first renewal: the old instance is dead at once,
	// and its reap ends what the stop did not reach, at the stop's time.
	time.Sleep(5 * time.Millisecond)
	l, err := s.RenewLease(ctx, "new", lease)
	require.NoError(t, err)
	assert.NotContains(t, l.Live, "old")
	assert.Contains(t, l.Dead, "old")
	require.NoError(t, s.Reap(ctx, "old", time.Now().UnixMilli(), lease, time.Hour))
	for _, id := range held {
		live, seen, err := state(s, id)
		require.NoError(t, err)
		assert.Empty(t, live, id)
		if assert.Len(t, seen, 1, id) {
			assert.Equal(t, end, seen[0].DisconnectedMs, "%s ended at the stop", id)
		}
	}
	assert.Equal(t, "", r.CLI("ZSCORE", kb.Brokers(), "old"))

	// A lease already gone (reaped by another broker) is not made again.
	require.NoError(t, s.Reap(ctx, "old", time.Now().UnixMilli(), 0, time.Hour))
	assert.Equal(t, "", r.CLI("ZSCORE", kb.Brokers(), "old"))
}

// A stop whose lease cannot be ended (on a Redis Cluster, the shard of
// guard:brokers down) still ends the connections it holds, and reports
// the lease's error. Before, the reap returned at the lease's error and
// left every connection live until the lease ran out.
func TestReapOwnStopGoesOnWithoutTheLease(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	c := Conn{ID: "old-1", Instance: "old", Principal: "alice", ConnectedMs: 1_000}
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "dev", Instance: "old", Live: &c, Seen: &c}}, time.Hour))
	r.CLI("SET", "guard:brokers", "not a sorted set") // ZADD meets WRONGTYPE
	n, err := s.ReapCount(ctx, "old", 5_000, 0, time.Hour)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "WRONGTYPE")
	assert.Equal(t, 1, n)
	live, seen, err := state(s, "dev")
	require.NoError(t, err)
	assert.Empty(t, live, "ended though the lease was not")
	if assert.Len(t, seen, 1) {
		assert.EqualValues(t, 5_000, seen[0].DisconnectedMs)
	}
}
