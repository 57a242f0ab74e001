package redisstore

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestConnectDisconnectKeepsTheNewerConnection(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	old := Conn{ID: "i1-1", Instance: "i1", Broker: "b", Principal: "alice", IP: "192.0.2.1", ConnectedMs: 1000}
	nw := Conn{ID: "i1-2", Instance: "i1", Broker: "b", Principal: "alice", IP: "192.0.2.2", ConnectedMs: 2000}
	old2 := old
	old2.DisconnectedMs = 2001
	// A takeover on the same broker: the old connection's DISCONNECT comes after the new CONNECT.
	require.NoError(t, s.ApplyConnOps(ctx, []ConnOp{
		{ClientID: "dev:1", Conn: old}, {ClientID: "dev:1", Conn: nw}, {ClientID: "dev:1", Conn: old2, Disconnect: true},
	}, time.Hour))
	live, seen, err := state(s, "dev:1")
	require.NoError(t, err)
	require.Len(t, live, 1)
	assert.Equal(t, "i1-2", live[0].ID, "the old DISCONNECT must not remove the new connection")
	require.Len(t, seen, 1)
	assert.Zero(t, seen[0].DisconnectedMs, "alice is still connected")
	assert.Equal(t, "1", r.CLI("SCARD", "guard:brokerconns:i1"))

	nw.DisconnectedMs = 3000
	require.NoError(t, s.ApplyConnOps(ctx, []ConnOp{{ClientID: "dev:1", Conn: nw, Disconnect: true}}, time.Hour))
	live, seen, err = state(s, "dev:1")
	require.NoError(t, err)
	assert.Empty(t, live)
	assert.EqualValues(t, 3000, seen[0].DisconnectedMs)
	assert.Equal(t, "0", r.CLI("SCARD", "guard:brokerconns:i1"))
	ttl := r.CLI("TTL", "guard:seen:dev:1")
	assert.NotEqual(t, "-1", ttl, "seen expires after the conflict window")
}

func TestLeaseAndReap(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	long := strings.Repeat("q", 20000)
	for _, id := range []string{"a", "b*", long} {
		require.NoError(t, s.ApplyConnOps(ctx, []ConnOp{
			{ClientID: id, Conn: Conn{ID: "dead-1", Instance: "dead", Principal: "p", ConnectedMs: 1}},
			{ClientID: id, Conn: Conn{ID: "alive-1", Instance: "alive", Principal: "p", ConnectedMs: 1}},
		}, time.Hour))
	}
	live, _, err := s.RenewLease(ctx, "dead", 50*time.Millisecond)
	require.NoError(t, err)
	assert.True(t, live["dead"])
	time.Sleep(80 * time.Millisecond)
	live, dead, err := s.RenewLease(ctx, "alive", time.Minute)
	require.NoError(t, err)
	assert.False(t, live["dead"])
	assert.True(t, live["alive"])
	assert.Equal(t, []string{"dead"}, dead)
	require.NoError(t, s.Reap(ctx, "dead"))
	require.NoError(t, s.Reap(ctx, "dead"), "reaping twice is harmless")
	for _, id := range []string{"a", "b*", long} {
		l, _, err := state(s, id)
		require.NoError(t, err)
		require.Len(t, l, 1)
		assert.Equal(t, "alive", l[0].Instance)
	}
	assert.Equal(t, "0", r.CLI("EXISTS", "guard:brokerconns:dead"))
	assert.Equal(t, "", r.CLI("ZSCORE", "guard:brokers", "dead"))
}

func TestCountTakeover(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	for want := int64(1); want <= 3; want++ {
		n, err := s.CountTakeover(ctx, "dev", 200*time.Millisecond)
		require.NoError(t, err)
		assert.Equal(t, want, n)
	}
	assert.NotEqual(t, "-1", r.CLI("PTTL", "guard:takeovers:dev"))
	time.Sleep(250 * time.Millisecond)
	n, err := s.CountTakeover(ctx, "dev", 200*time.Millisecond)
	require.NoError(t, err)
	assert.EqualValues(t, 1, n, "a new window")
}

func state(s *Store, id string) (live, seen []Conn, err error) {
	m, err := s.ClientIDStates(context.Background(), []string{id})
	return m[id].Live, m[id].Seen, err
}
