package conflicts

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// countFailStore is a recStore whose takeover counts fail while fail is
// set, as Redis's connection reset or its timeout would fail them.
type countFailStore struct {
	*recStore
	fail  atomic.Bool
	first atomic.Bool // the first call of each count fails alone, the others run
}

func (s *countFailStore) CountTakeovers(ctx context.Context, ts []store.Takeover, window time.Duration, limit int) ([]int64, error) {
	if s.fail.Load() {
		return nil, errors.New("read tcp 127.0.0.1:1->127.0.0.1:2: read: connection reset by peer")
	}
	if s.first.Load() && len(ts) > 0 {
		ns, err := s.recStore.CountTakeovers(ctx, ts[1:], window, limit)
		return append([]int64{-1}, ns...), errors.Join(errors.New("store: count takeover: WRONGTYPE"), err)
	}
	return s.recStore.CountTakeovers(ctx, ts, window, limit)
}

// A takeover count that fails loses those counts alone: the batch's
// connections were written, and its other findings are reported. Before,
// handle gave up at the count's error: a client ID taken over by another
// principal in the same batch was never reported, and the worker logged
// the whole batch "not recorded" and wrote its connections again.
func TestTakeoverCountFailedStillReportsTheBatch(t *testing.T) {
	r := testenv.StartRedis(t)
	st := &countFailStore{recStore: newRecStore(t, r)}
	tr, clk, logs := tracker(t, st, testOptions())
	tr.renew()
	x := tr.NewConn("alice", "192.0.2.7", clk.now())
	y := tr.NewConn("u2", "192.0.2.8", clk.now())
	require.NoError(t, tr.handle(t.Context(), []event{
		{kind: evConnect, clientID: "dev-1", conn: x},
		{kind: evConnect, clientID: "dev-2", conn: y},
	}))
	clk.advance(time.Second)
	st.fail.Store(true)
	err := tr.handle(t.Context(), []event{
		{kind: evConnect, clientID: "dev-1", conn: tr.NewConn("mallory", "192.0.2.9", clk.now()), other: &x},
		{kind: evDisconnect, clientID: "dev-1", conn: x},
		{kind: evConnect, clientID: "dev-2", conn: tr.NewConn("u2", "192.0.2.8", clk.now()), other: &y},
		{kind: evDisconnect, clientID: "dev-2", conn: y},
	})
	assert.NoError(t, err, "the batch was recorded")
	st.mu.Lock()
	got := st.findings["dev-1"]
	st.mu.Unlock()
	assert.Equal(t, []string{"alice,mallory"}, got, "the other principal's takeover is reported")
	assert.Contains(t, logs.all(), "1 takeovers not counted")
	assert.Equal(t, "1", r.CLI("HLEN", "guard:conn:dev-1"), "mallory's connection live")
}

// A count that failed for one takeover of a batch keeps the others': a
// takeover they take to takeover_limit is reported. Before, one failed
// call (a client ID's key of another type, a lost reply) dropped every
// count of the batch (a review).
func TestTakeoverCountFailedForOneKeepsTheOthers(t *testing.T) {
	r := testenv.StartRedis(t)
	st := &countFailStore{recStore: newRecStore(t, r)}
	opts := testOptions()
	opts.TakeoverLimit = 1
	tr, clk, logs := tracker(t, st, opts)
	tr.renew()
	x := tr.NewConn("u2", "192.0.2.8", clk.now())
	y := tr.NewConn("u3", "192.0.2.9", clk.now())
	require.NoError(t, tr.handle(t.Context(), []event{
		{kind: evConnect, clientID: "dev-2", conn: x},
		{kind: evConnect, clientID: "dev-3", conn: y},
	}))
	clk.advance(time.Second)
	st.first.Store(true)
	require.NoError(t, tr.handle(t.Context(), []event{
		{kind: evConnect, clientID: "dev-2", conn: tr.NewConn("u2", "192.0.2.8", clk.now()), other: &x},
		{kind: evDisconnect, clientID: "dev-2", conn: x},
		{kind: evConnect, clientID: "dev-3", conn: tr.NewConn("u3", "192.0.2.9", clk.now()), other: &y},
		{kind: evDisconnect, clientID: "dev-3", conn: y},
	}))
	st.mu.Lock()
	f2, f3 := st.findings["dev-2"], st.findings["dev-3"]
	st.mu.Unlock()
	assert.Empty(t, f2, "its count failed")
	assert.Len(t, f3, 1, "dev-3's takeover, at takeover_limit, reported")
	assert.Contains(t, logs.all(), "1 takeovers not counted")
}
