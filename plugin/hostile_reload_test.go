package plugin

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
)

// aliceRehashed is alice with the same password (alice-pw), hashed again
// with another salt.
const aliceRehashed = "alice:$7$101$aG9zdGlsZXNhbHQx$nk2/DCqP+dJuWJioCRCzp9TU/eATNzoO0CVzPwFnfNZUJF/gb1ZhoL/W7gr5xBX/QnL2os8PEA02zhP6R+UqXg=="

// TestHostileReloadKicksNoClientCheckedAgainstTheNewFile: a password file
// read late that rehashes alice kicks the connections whose password was
// checked against her old hash. A device of alice's that connects while
// that kick scan runs is checked against the file in force (her new hash)
// and must stay; the README says a kicked client "may connect again and is
// checked against it". The scan releases g.mu between chunks and ranges a
// map that CONNECTs add to meanwhile, so it picks up connections admitted
// after the apply and kicks them too.
func TestHostileReloadKicksNoClientCheckedAgainstTheNewFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	writeUsers(t, path, 0, strings.TrimSpace(alicePasswd))
	var kr kickRecorder
	g := filesGuardOut(t, path, Output{Log: func(Level, string) {}, Kick: kr.kick})

	const old = 3000 // alice's connections checked against her old hash
	for i := 0; i < old; i++ {
		ip := fmt.Sprintf("10.0.%d.%d", i/250, i%250+1)
		g.admit(new(cl(uintptr(1000+i), ip, fmt.Sprintf("old-%d", i), "alice", "alice-pw")), netip.MustParseAddr(ip), false, false)
	}
	var mu sync.Mutex
	var fresh []string
	h := uintptr(100_000)
	g.recs.pause = func() { // a CONNECT of alice while the kick scan runs
		mu.Lock()
		defer mu.Unlock()
		id := fmt.Sprintf("fresh-%d", h)
		if d := g.Authenticate(cl(h, "192.0.2.9", id, "alice", "alice-pw")); d.Result == Allow {
			fresh = append(fresh, id)
		}
		h++
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
	require.Eventually(t, func() bool { return len(kr.all()) >= old }, 10*time.Second, 10*time.Millisecond)
	time.Sleep(100 * time.Millisecond)

	mu.Lock()
	defer mu.Unlock()
	require.NotEmpty(t, fresh, "alice connected again with her password while the scan ran")
	var wrong []string
	for _, id := range kr.all() {
		if strings.HasPrefix(id, "fresh-") {
			wrong = append(wrong, id)
		}
	}
	assert.Empty(t, wrong, "connections checked against the new file (admitted after the apply, %d of them) were kicked as user-changed", len(fresh))
}

// TestHostileReloadCloseDoesNotWaitForAPasswordFileRead: the broker's
// shutdown (plugin cleanup, Close) while a SIGHUP's read of a large
// password file is under way waited for the read, up to closeBound (1.5 s),
// then warned of "background work on redis" for a files backend with no
// Redis work pending. Nothing waits on that read: Close should return at
// once.
func TestHostileReloadCloseDoesNotWaitForAPasswordFileRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	writeUsers(t, path, 0, strings.TrimSpace(alicePasswd))
	cfg, err := config.Parse(map[string]string{"password_file": path})
	require.NoError(t, err)
	ls := &logSink{}
	g, err := NewWith(cfg, Output{Log: ls.log}, Deps{Store: newFakeStore(), Counter: &fakeCounter{}})
	require.NoError(t, err)

	writeUsers(t, path, 400_000, strings.TrimSpace(alicePasswd)) // about 2 s to read
	g.Reload()
	require.Contains(t, ls.all(), "not read within")
	start := time.Now()
	g.Close()
	took := time.Since(start)
	t.Logf("Close during a password file read returned in %v", took)
	assert.Less(t, took, 300*time.Millisecond, "the broker's exit waited for the password file read")
	assert.NotContains(t, ls.all(), "background work on redis")
}

// TestHostileReloadSIGHUPDuringAReadDoesNotWaitForNothing: a SIGHUP while a
// read is under way cannot have its file read before the broker re-checks
// its clients: its read starts only once the one under way is applied, on
// the broker thread that SIGHUP holds. It held the broker thread the full
// 100 ms all the same, every client stalled, for each SIGHUP of a storm.
// The file is still read again, and the last one is in force in the end.
func TestHostileReloadSIGHUPDuringAReadDoesNotWaitForNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	writeUsers(t, path, 0, strings.TrimSpace(alicePasswd))
	g := filesGuardOut(t, path, Output{Log: func(Level, string) {}})

	writeUsers(t, path, 200_000, strings.TrimSpace(alicePasswd)) // about 1 s to read
	g.Reload()
	writeUsers(t, path, 10, strings.TrimSpace(alicePasswd))
	start := time.Now()
	g.Reload() // the first read is still under way
	took := time.Since(start)
	t.Logf("a SIGHUP during a read held the broker thread %v", took)
	assert.Less(t, took, 90*time.Millisecond) // the defect waited reloadWait, 100 ms: a timer never fires early

	deadline := time.Now().Add(20 * time.Second)
	for g.creds.users.Load().Len() != 11 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		g.Tick()
	}
	assert.Equal(t, 11, g.creds.users.Load().Len(), "the last file is in force")
}

// TestHostileReloadRemovedThenUnreadable: alice removed from a large file
// (read late), then the file deleted and SIGHUP sent again before the first
// read is in force. The first read is applied and kicks alice; the second
// fails and keeps the users of the first; bob stays.
func TestHostileReloadRemovedThenUnreadable(t *testing.T) {
	const bobHash = "bob:$7$101$aG9zdGlsZXNhbHQx$nk2/DCqP+dJuWJioCRCzp9TU/eATNzoO0CVzPwFnfNZUJF/gb1ZhoL/W7gr5xBX/QnL2os8PEA02zhP6R+UqXg=="
	path := filepath.Join(t.TempDir(), "passwd")
	writeUsers(t, path, 0, strings.TrimSpace(alicePasswd), bobHash)
	var kr kickRecorder
	ls := &logSink{}
	g := filesGuardOut(t, path, Output{Log: ls.log, Kick: kr.kick})
	require.Equal(t, Allow, g.Authenticate(cl(1, "192.0.2.1", "dev-alice", "alice", "alice-pw")).Result)
	require.Equal(t, Allow, g.Authenticate(cl(2, "192.0.2.2", "dev-bob", "bob", "alice-pw")).Result)

	writeUsers(t, path, 200_000, bobHash)
	g.Reload()
	require.NoError(t, os.Remove(path))
	g.Reload()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(ls.all(), "keeping the 200001 users") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		g.Tick()
	}
	require.Contains(t, ls.all(), "keeping the 200001 users")
	time.Sleep(100 * time.Millisecond)
	assert.Equal(t, []string{"dev-alice"}, kr.all())
	assert.Equal(t, 200_001, g.creds.users.Load().Len())
	assert.Equal(t, RuleUnknownUser, g.Authenticate(cl(3, "192.0.2.3", "dev-alice-2", "alice", "alice-pw")).Rule)
}
