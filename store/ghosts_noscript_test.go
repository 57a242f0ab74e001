package store

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// A Cluster node whose script cache was emptied unseen (no new connection:
// a SCRIPT FLUSH): DropGhosts's first attempt removes the entries on the
// nodes that know casScript and meets NOSCRIPT on the other; its replay
// finds the first ones gone (0). They are counted and unlisted from the
// first attempt's reply (atk86: 22 of 60 counted, 38 members left listed
// with no entry).
func TestDropGhostsClusterOneNodeFlushed(t *testing.T) {
	cl := testenv.StartRedisCluster(t, 3)
	s := New(Options{Addrs: []string{cl.Nodes[0].Addr, cl.Nodes[1].Addr, cl.Nodes[2].Addr}, Timeout: 2 * time.Second, Tracking: true}, keys.Builder{Prefix: "guard:"})
	t.Cleanup(func() { s.Close() })
	ctx := context.Background()
	require.Eventually(t, func() bool { return s.Client().Set(ctx, "guard:probe", "1", 0).Err() == nil }, 10*time.Second, 100*time.Millisecond)
	const n = 60
	write := func(inst string) []string {
		var ids []string
		for i := 1; i <= n; i++ {
			c := Conn{ID: inst + "-" + strconv.Itoa(i), Instance: inst, Principal: "p", ConnectedMs: 1}
			require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "g-" + strconv.Itoa(i), Instance: inst, Live: &c}}, time.Hour))
			ids = append(ids, keys.Tracking("g-"+strconv.Itoa(i)))
		}
		return ids
	}
	ids := write("ia")
	k, err := s.DropGhosts(ctx, "ia", ids, n) // casScript in every node's cache
	require.NoError(t, err)
	require.Equal(t, n, k)
	ids = write("ib")
	cl.Nodes[0].CLI("SCRIPT", "FLUSH")
	k, err = s.DropGhosts(ctx, "ib", ids, n)
	require.NoError(t, err)
	left, err := s.Client().SCard(ctx, s.Keys().BrokerConns("ib")).Result()
	require.NoError(t, err)
	assert.Equal(t, n, k, "ghosts counted dropped")
	assert.Zero(t, left, "members left listed with no entry")
}
