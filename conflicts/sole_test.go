package conflicts

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// Under clientid_conflict flag a disconnect deletes its live entry with a
// plain HDEL only when its connection is the last this instance recorded;
// after a takeover on this broker whose newer connection was folded away
// (never written), the older connection's entry is still in Redis and its
// late disconnect must still remove it (compare-and-delete). Against a real
// Redis: the entry must be gone, not left live until a reap.
func TestFlagDisconnectAfterFoldedTakeover(t *testing.T) {
	r := testenv.StartRedis(t)
	s := store.New(store.Options{Addrs: []string{r.Addr}, Timeout: 5 * time.Second}, keys.Builder{Prefix: "guard:"})
	t.Cleanup(func() { s.Close() })
	c, clk, _ := tracker(t, s, testOptions())
	ctx := context.Background()

	a := c.NewConn("alice", "192.0.2.1", clk.now())
	require.NoError(t, c.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: a}}))
	live, err := s.LiveConns(ctx, "dev")
	require.NoError(t, err)
	require.Len(t, live, 1)

	// A takeover by the same principal within one batch: read quiet and
	// recorded fresh, so the pair is folded away; a is still recorded.
	b := c.NewConn("alice", "192.0.2.1", clk.now())
	pair := []event{{kind: evConnect, clientID: "dev", conn: b}, {kind: evDisconnect, clientID: "dev", conn: b}}
	require.NoError(t, c.handle(ctx, pair))
	live, err = s.LiveConns(ctx, "dev")
	require.NoError(t, err)
	require.Len(t, live, 1)
	require.Equal(t, c.StoreConn(a).ID, live[0].ID, "b was folded away: written, its end would have left the field empty")

	require.NoError(t, c.handle(ctx, []event{{kind: evDisconnect, clientID: "dev", conn: a}}))
	live, err = s.LiveConns(ctx, "dev")
	require.NoError(t, err)
	assert.Empty(t, live, "a's late disconnect removes its entry")
}
