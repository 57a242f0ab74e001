package plugin

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/backends/redisstore"
)

// memConflicts is an in-memory ConflictStore for unit tests of the worker's
// batching (the e2e tests use a real Redis).
type memConflicts struct {
	mu       sync.Mutex
	states   map[string]*redisstore.State
	findings []*redisstore.Finding
	takeover map[string]int64
}

func newMemConflicts() *memConflicts {
	return &memConflicts{states: map[string]*redisstore.State{}, takeover: map[string]int64{}}
}

func (m *memConflicts) ClientIDStates(_ context.Context, ids []string) (map[string]redisstore.State, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]redisstore.State{}
	for _, id := range ids {
		if st, ok := m.states[id]; ok {
			out[id] = redisstore.State{Live: append([]redisstore.Conn(nil), st.Live...), Seen: append([]redisstore.Conn(nil), st.Seen...)}
		}
	}
	return out, nil
}

func (m *memConflicts) WriteConns(_ context.Context, ws []redisstore.ConnWrite, _ time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, w := range ws {
		st := m.states[w.ClientID]
		if st == nil {
			st = &redisstore.State{}
			m.states[w.ClientID] = st
		}
		if w.SetLive {
			st.Live = removeBy(st.Live, func(x redisstore.Conn) bool { return x.Instance == w.Instance })
			if w.Live != nil {
				st.Live = append(st.Live, *w.Live)
			}
		}
		if w.Seen != nil {
			st.Seen = replaceBy(st.Seen, *w.Seen, func(x redisstore.Conn) bool { return x.Principal == w.Seen.Principal })
		}
		if w.Left != nil {
			if i := indexBy(st.Seen, func(x redisstore.Conn) bool { return x.ID == w.Left.ID }); i >= 0 {
				st.Seen[i] = *w.Left
			}
		}
	}
	return nil
}

func (m *memConflicts) CountTakeover(_ context.Context, id string, _ time.Duration) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.takeover[id]++
	return m.takeover[id], nil
}

func (m *memConflicts) RenewLease(context.Context, string, time.Duration) (map[string]bool, []string, error) {
	return map[string]bool{}, nil, nil
}
func (m *memConflicts) Reap(context.Context, string) error { return nil }
func (m *memConflicts) AddFinding(_ context.Context, f *redisstore.Finding, _, _ time.Duration, _ int64) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.findings = append(m.findings, f)
	return true, nil
}

// Events for one client ID within one batch see each other, in order.
func TestBatchSeesEarlierEvents(t *testing.T) {
	cfg, err := Parse(map[string]string{"backend": "defer"})
	require.NoError(t, err)
	mem := newMemConflicts()
	g, err := NewWith(cfg, Output{Log: (&logSink{}).log}, Deps{Store: newFakeStore(), Counter: &fakeCounter{}, Conflicts: mem})
	require.NoError(t, err)
	defer g.Close()
	c := g.conflicts
	alice := c.newConn("alice", "192.0.2.1", time.Now())
	bob := c.newConn("bob", "192.0.2.2", time.Now())
	require.NoError(t, c.handle(context.Background(), []conflictEvent{
		{kind: evConnect, clientID: "dev", conn: alice},
		{kind: evDisconnect, clientID: "dev", conn: alice},
		{kind: evConnect, clientID: "dev", conn: bob},
		{kind: evConnect, clientID: "other", conn: c.newConn("carol", "192.0.2.3", time.Now())},
	}))
	require.Len(t, mem.findings, 1)
	assert.Equal(t, []string{"alice", "bob"}, mem.findings[0].Principals)
	assert.NotZero(t, mem.findings[0].DisplacedDisconnectedMs, "alice's disconnect, from earlier in the batch")
	st := mem.states["dev"]
	require.Len(t, st.Live, 1)
	assert.Equal(t, bob.ID, st.Live[0].ID)
}
