package plugin

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// liveWrites is a conflicts store that keeps what Redis's live hashes
// would hold of the writes: a client ID's live field set by a connect
// written live (not Ended), cleared by an unlist.
type liveWrites struct {
	failingClaims
	mu     sync.Mutex
	live   map[string]string // client ID: the connection ID live
	writes int
}

func (l *liveWrites) WriteConns(_ context.Context, ws []store.ConnWrite, _ time.Duration) ([]store.State, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, w := range ws {
		l.writes++
		switch {
		case w.Live != nil && !w.Ended:
			l.live[w.ClientID] = w.Live.ID
		case w.Unlist:
			delete(l.live, w.ClientID)
		}
	}
	return make([]store.State, len(ws)), nil
}

// A deferred connection that ends while confirmDue confirms it, after its
// hold of g.mu: its end reaches the tracker after its connect, and Redis
// is left with nothing live of it. confirmDue queued the connect after
// releasing g.mu, so the end went first and the connection was written
// live after it had ended: the live field stayed ("dev-a" below).
func TestConfirmQueuedBeforeItsEnd(t *testing.T) {
	cfg, err := config.Parse(map[string]string{"backend": "defer", "clientid_conflict": "flag"})
	require.NoError(t, err)
	lw := &liveWrites{live: map[string]string{}}
	g, err := NewWith(cfg, Output{Log: func(Level, string) {}}, Deps{Store: newFakeStore(), Counter: &fakeCounter{}, Conflicts: lw})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	var mu sync.Mutex
	now := time.Now().Add(time.Hour) // ahead of confirmLoop's clock: only the test confirms
	g.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }

	admitRC(g, rc(1, "dev-a", "alice"), true)
	admitRC(g, rc(2, "dev-b", "bob"), true)
	end := func() { g.Disconnected(1) } // the broker thread, between the hold and the queueing
	g.confirmHook.Store(&end)
	mu.Lock()
	now = now.Add(2 * confirmDelay)
	mu.Unlock()
	g.confirmDue()
	g.confirmHook.Store(nil)
	g.Disconnected(2) // an end after the confirmation, for comparison

	require.Eventually(t, func() bool { lw.mu.Lock(); defer lw.mu.Unlock(); return lw.writes >= 2 },
		5*time.Second, 10*time.Millisecond, "the tracker wrote both")
	time.Sleep(300 * time.Millisecond) // a linger more: any write still to come
	lw.mu.Lock()
	defer lw.mu.Unlock()
	assert.Empty(t, lw.live, "a connection that ended is recorded live")
}
