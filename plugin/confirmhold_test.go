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

// confirmDue confirms deferred connections under g.mu, and what it hashes
// there is bounded per hold (confirmHashMax): 16 deferred connections of
// 64 KB each must take several holds, whichever long string it hashes.
// Each case took one hold before its fix:
//   - long client IDs: Connected hashes each (atk22, dfd0dca; 256 of them
//     kept the broker thread off g.mu for 11 ms a hold);
//   - long client IDs taken over before their confirmation, skipped after
//     byID's probe, which hashes and compares each whole (1d23f33);
//   - short client IDs with long usernames: connOf names the principal,
//     SHA-256 of the whole username (atk23, bffa102; 256 took 11 ms).
func TestConfirmHoldHashesBounded(t *testing.T) {
	const n, long = 16, 65535
	big := func(i int, c string) string { return fmt.Sprintf("%04d", i) + strings.Repeat(c, long-4) }
	for _, tc := range []struct {
		name  string
		admit func(g *Guard) // the deferred connections, and whatever else comes before the confirmation
	}{
		{"long client IDs", func(g *Guard) {
			for i := range n {
				admitRC(g, rc(uintptr(i+1), big(i, "x"), "u"), true)
			}
		}},
		{"long client IDs taken over", func(g *Guard) {
			for i := range n {
				admitRC(g, rc(uintptr(i+1), big(i, "x"), "u"), true)
			}
			for i := range n {
				admitRC(g, rc(uintptr(1000+i), big(i, "x"), "u"), false) // its takeover, admitted at once
			}
		}},
		{"long usernames", func(g *Guard) {
			for i := range n {
				admitRC(g, rc(uintptr(i+1), fmt.Sprintf("dev-%04d", i), big(i, "u")), true)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := config.Parse(map[string]string{"backend": "defer", "clientid_conflict": "flag"})
			require.NoError(t, err)
			g, err := NewWith(cfg, Output{Log: func(Level, string) {}}, Deps{Store: newFakeStore(), Counter: &fakeCounter{}, Conflicts: &liveWrites{live: map[string]string{}}})
			require.NoError(t, err)
			t.Cleanup(g.Close)
			var mu sync.Mutex
			now := time.Now().Add(time.Hour) // ahead of confirmLoop's clock: only the test confirms
			g.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
			tc.admit(g)
			mu.Lock()
			now = now.Add(2 * confirmDelay)
			mu.Unlock()
			holds := 0
			count := func() { holds++ }
			g.confirmHook.Store(&count)
			g.confirmDue()
			g.confirmHook.Store(nil)
			perHold := confirmHashMax/long + 1
			assert.GreaterOrEqual(t, holds, (n+perHold-1)/perHold, "holds of g.mu for %d deferred connections", n)
			g.mu.Lock()
			defer g.mu.Unlock()
			assert.Empty(t, g.pending, "all out of pending")
		})
	}
}
