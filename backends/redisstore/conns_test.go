package redisstore

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestWriteConns(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	old := Conn{ID: "i1-1", Instance: "i1", Broker: "b", Principal: "alice", IP: "192.0.2.1", ConnectedMs: 1000}
	require.NoError(t, s.WriteConns(ctx, []ConnWrite{{ClientID: "dev:1", Instance: "i1", SetLive: true, Live: &old, Seen: &old}}, time.Hour))
	live, seen, err := state(s, "dev:1")
	require.NoError(t, err)
	require.Len(t, live, 1)
	require.Len(t, seen, 1)
	assert.Equal(t, "1", r.CLI("SCARD", "guard:brokerconns:i1"))

	// Another broker's newer connection of alice: our disconnect must not overwrite its record.
	other := Conn{ID: "i2-1", Instance: "i2", Principal: "alice", ConnectedMs: 1500}
	require.NoError(t, s.WriteConns(ctx, []ConnWrite{{ClientID: "dev:1", Instance: "i2", SetLive: true, Live: &other, Seen: &other}}, time.Hour))
	left := old
	left.DisconnectedMs = 2000
	require.NoError(t, s.WriteConns(ctx, []ConnWrite{{ClientID: "dev:1", Instance: "i1", SetLive: true, Left: &left}}, time.Hour))
	live, seen, err = state(s, "dev:1")
	require.NoError(t, err)
	require.Len(t, live, 1)
	assert.Equal(t, "i2-1", live[0].ID)
	assert.Equal(t, "i2-1", seen[0].ID, "a stale disconnect leaves the newer record")
	assert.Equal(t, "0", r.CLI("SCARD", "guard:brokerconns:i1"))

	// Our own disconnect is recorded when the record is ours.
	left2 := other
	left2.DisconnectedMs = 3000
	require.NoError(t, s.WriteConns(ctx, []ConnWrite{{ClientID: "dev:1", Instance: "i2", SetLive: true, Left: &left2}}, time.Hour))
	live, seen, err = state(s, "dev:1")
	require.NoError(t, err)
	assert.Empty(t, live)
	assert.EqualValues(t, 3000, seen[0].DisconnectedMs)
	assert.NotEqual(t, "-1", r.CLI("TTL", "guard:seen:dev:1"), "seen expires after the conflict window")
}

func TestLeaseAndReap(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	long := strings.Repeat("q", 20000)
	for _, id := range []string{"a", "b*", long} {
		dead, alive := Conn{ID: "dead-1", Instance: "dead", Principal: "p", ConnectedMs: 1}, Conn{ID: "alive-1", Instance: "alive", Principal: "p", ConnectedMs: 1}
		require.NoError(t, s.WriteConns(ctx, []ConnWrite{
			{ClientID: id, Instance: "dead", SetLive: true, Live: &dead}, {ClientID: id, Instance: "alive", SetLive: true, Live: &alive},
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

// After SCRIPT FLUSH (a restarted or new node) the batch still applies.
func TestWriteConnsSurvivesScriptFlush(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	c := Conn{ID: "i-1", Instance: "i", Principal: "p", ConnectedMs: 1}
	require.NoError(t, s.WriteConns(ctx, []ConnWrite{{ClientID: "x", Instance: "i", SetLive: true, Live: &c, Seen: &c}}, time.Hour))
	r.CLI("SCRIPT", "FLUSH")
	c.DisconnectedMs = 2
	require.NoError(t, s.WriteConns(ctx, []ConnWrite{{ClientID: "x", Instance: "i", SetLive: true, Left: &c}}, time.Hour))
	live, seen, err := state(s, "x")
	require.NoError(t, err)
	assert.Empty(t, live)
	assert.EqualValues(t, 2, seen[0].DisconnectedMs)
}
