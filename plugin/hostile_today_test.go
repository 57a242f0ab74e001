package plugin

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestHostileTodayKickWindowHandleReuse: while a late password file's kicks
// run, connections of alice checked against her old hash end, and
// Mosquitto gives their freed client pointers (the handles) to new
// CONNECTs of alice, checked against her new hash. The scan holds record
// pointers of the ended ones; the new ones must not be kicked for them
// (same handle, other record), nor be missed as fresh.
func TestHostileTodayKickWindowHandleReuse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	writeUsers(t, path, 0, strings.TrimSpace(alicePasswd))
	var kr kickRecorder
	g := filesGuardOut(t, path, Output{Log: func(Level, string) {}, Kick: kr.kick})

	const old = 3000
	for i := 0; i < old; i++ {
		ip := fmt.Sprintf("10.1.%d.%d", i/250, i%250+1)
		g.admit(new(cl(uintptr(1000+i), ip, fmt.Sprintf("old-%d", i), "alice", "alice-pw")), netip.MustParseAddr(ip), false, false)
	}
	var mu sync.Mutex
	var reused []string
	next := 0
	g.recs.pause = func() { // in the scan: two of alice's old devices leave, their handles come back
		mu.Lock()
		defer mu.Unlock()
		for k := 0; k < 2 && next < old; k++ {
			h := uintptr(1000 + next)
			g.Disconnected(h)
			id := fmt.Sprintf("reuse-%d", next)
			if d := g.Authenticate(cl(h, "192.0.2.77", id, "alice", "alice-pw")); d.Result == Allow {
				reused = append(reused, id)
			}
			next++
		}
	}
	g.reloads.slow = 300 * time.Millisecond // read late (past reloadWait) on any machine
	writeUsers(t, path, 60_000, aliceRehashed)
	g.Reload()
	deadline := time.Now().Add(20 * time.Second)
	for g.creds.users.Load().Len() != 60_001 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		g.Tick()
	}
	require.Equal(t, 60_001, g.creds.users.Load().Len())
	require.Eventually(t, func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.reloads.kicking == nil
	}, 10*time.Second, 10*time.Millisecond, "the kicks end")

	mu.Lock()
	defer mu.Unlock()
	require.NotEmpty(t, reused)
	kicked := map[string]bool{}
	var wrong []string
	for _, id := range kr.all() {
		kicked[id] = true
		if strings.HasPrefix(id, "reuse-") {
			wrong = append(wrong, id)
		}
	}
	assert.Empty(t, wrong, "connections checked against the new hash on a reused handle were kicked")
	// Every old device still connected was kicked.
	var missed int
	for i := next; i < old; i++ {
		if !kicked[fmt.Sprintf("old-%d", i)] {
			missed++
		}
	}
	assert.Zero(t, missed, "old devices left connected with a hash the file changed")
	g.mu.Lock()
	assert.Nil(t, g.reloads.fresh, "the fresh set is dropped with the kicks")
	assert.Zero(t, g.recs.scans)
	assert.Empty(t, g.recs.limbo)
	g.mu.Unlock()
}
