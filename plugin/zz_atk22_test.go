package plugin

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
)

// A deferred connection (B) taken over by a connection admitted at once
// (C: a username the backend checks, B anonymous) while confirmDue confirms
// B: C's connect (other=B) is queued by admitAt before B's DISCONNECT, which
// the broker fires right after C's BASIC_AUTH (later for websockets).
// confirmDue running in between queued B's connect after C's: the worker
// wrote B live over C in this broker's live field, then B's end cleared
// it, and C, connected, was left with nothing live in Redis (every other
// broker then misses it: no conflict found, no deny).
func TestAtk22ConfirmAfterTakeoverLeavesTakerLive(t *testing.T) {
	cfg, err := config.Parse(map[string]string{"backend": "defer", "clientid_conflict": "flag"})
	require.NoError(t, err)
	lw := &liveWrites{live: map[string]string{}}
	g, err := NewWith(cfg, Output{Log: func(Level, string) {}}, Deps{Store: newFakeStore(), Counter: &fakeCounter{}, Conflicts: lw})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	var mu sync.Mutex
	now := time.Now().Add(time.Hour) // ahead of confirmLoop's clock: only the test confirms
	g.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }

	admitRC(g, rc(1, "dev-x", "alice"), true) // B, deferred
	mu.Lock()
	now = now.Add(2 * confirmDelay)
	mu.Unlock()
	c := admitRC(g, rc(2, "dev-x", "alice"), false) // C takes dev-x over, admitted at once
	g.mu.Lock()
	cID := g.tracker.StoreConn(g.connOf(c)).ID
	g.mu.Unlock()
	g.confirmDue()    // the confirmation goroutine, between C's BASIC_AUTH and B's DISCONNECT
	g.Disconnected(1) // B's DISCONNECT: the takeover

	require.Eventually(t, func() bool { lw.mu.Lock(); defer lw.mu.Unlock(); return lw.writes >= 1 },
		5*time.Second, 10*time.Millisecond, "the tracker wrote")
	time.Sleep(300 * time.Millisecond) // a linger more: any write still to come
	lw.mu.Lock()
	defer lw.mu.Unlock()
	assert.Equal(t, map[string]string{"dev-x": cID}, lw.live, "C, still connected, is what Redis holds live for dev-x")
}
