package conflicts

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// A connection that lasts longer than conflict_window, alone on its client
// ID, loses its end on a real Redis: its principal's seen hash expires a
// window after the connection was recorded (nothing renews it while the
// connection lasts), so the disconnect's compare-and-set (Left) finds no
// record and writes none. Another principal taking the client ID a moment
// after the device left is then not flagged. conflict_window is 2 s here
// (the option's least is 1 min; the hash's TTL is the window either way):
// with conflict_window 1h, any device held over an hour. The same on
// 7c46b08; not the memo table's doing.
func TestAttackMemoLongConnectionEndLost(t *testing.T) {
	r := testenv.StartRedis(t)
	s := store.New(store.Options{Addrs: []string{r.Addr}, Timeout: 5 * time.Second}, keys.Builder{Prefix: "guard:"})
	t.Cleanup(func() { s.Close() })
	opts := testOptions()
	opts.Window = 2 * time.Second
	var reported atomic.Int64
	tr := New(opts, Deps{Store: s, Reported: func(string) { reported.Add(1) }})
	tr.renew()
	ctx := context.Background()
	a := tr.NewConn("alice", "192.0.2.1", time.Now())
	require.NoError(t, tr.handle(ctx, []event{{kind: evConnect, clientID: "long-1", conn: a}}))
	time.Sleep(2500 * time.Millisecond) // alice stays longer than the window
	require.NoError(t, tr.handle(ctx, []event{{kind: evDisconnect, clientID: "long-1", conn: a}}))
	assert.Contains(t, r.CLI("HGET", "guard:seen:long-1", "alice"), `"disconnected_ms"`, "alice's end not recorded")
	b := tr.NewConn("bob", "198.51.100.7", time.Now())
	require.NoError(t, tr.handle(ctx, []event{{kind: evConnect, clientID: "long-1", conn: b}}))
	assert.EqualValues(t, 1, reported.Load(), "bob took the client ID right after alice left: not flagged")
}
