package plugin

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
)

// confirmDue's bound on what one hold of g.mu hashes (confirmHashMax)
// counted long client IDs only, but each confirmation also names the
// connection's principal (connOf: conflicts.Principal), and a username over
// keys.TrackingMax is SHA-256-hashed there, under g.mu, whole. 256 deferred
// connections with short client IDs and 64 KB usernames (backend defer, or
// anonymous clients the broker lets in with any username) took one hold:
// 16 MB hashed with the broker thread waiting on g.mu. Before the fix, the
// 16 below took one hold.
func TestAtk23ConfirmHoldCountsLongUsernames(t *testing.T) {
	cfg, err := config.Parse(map[string]string{"backend": "defer", "clientid_conflict": "flag"})
	require.NoError(t, err)
	g, err := NewWith(cfg, Output{Log: func(Level, string) {}}, Deps{Store: newFakeStore(), Counter: &fakeCounter{}, Conflicts: &liveWrites{live: map[string]string{}}})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	var mu sync.Mutex
	now := time.Now().Add(time.Hour) // ahead of confirmLoop's clock: only the test confirms
	g.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	const n, userLen = 16, 65535
	for i := range n {
		admitRC(g, rc(uintptr(i+1), fmt.Sprintf("dev-%04d", i), fmt.Sprintf("%04d", i)+strings.Repeat("u", userLen-4)), true)
	}
	mu.Lock()
	now = now.Add(2 * confirmDelay)
	mu.Unlock()
	holds := 0
	count := func() { holds++ }
	g.confirmHook.Store(&count)
	g.confirmDue()
	g.confirmHook.Store(nil)
	perHold := confirmHashMax/userLen + 1
	assert.GreaterOrEqual(t, holds, (n+perHold-1)/perHold, "holds of g.mu for %d deferred connections with %d-byte usernames", n, userLen)
	g.mu.Lock()
	defer g.mu.Unlock()
	assert.Empty(t, g.pending, "all confirmed")
}
