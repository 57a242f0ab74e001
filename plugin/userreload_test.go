package plugin

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
)

// filesGuardOut is a guard of the files backend on the password file at path,
// with out, a fake store and a fake counter; closed at the test's end.
func filesGuardOut(t *testing.T, path string, out Output) *Guard {
	t.Helper()
	cfg, err := config.Parse(map[string]string{"password_file": path})
	require.NoError(t, err)
	g, err := NewWith(cfg, out, Deps{Store: newFakeStore(), Counter: &fakeCounter{}})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	return g
}

// writeUsers writes a password file of lines and n filler users (one cheap
// hash for all, never used): 200 000 of them take about a second to read.
func writeUsers(t *testing.T, path string, n int, lines ...string) {
	t.Helper()
	f, err := os.Create(path + ".new")
	require.NoError(t, err)
	w := bufio.NewWriter(f)
	for _, l := range lines {
		fmt.Fprintln(w, l)
	}
	filler := "$7$101$AAAAAAAAAAAAAAAA$" + strings.Repeat("A", 86) + "=="
	for i := 0; i < n; i++ {
		fmt.Fprintf(w, "filler%07d:%s\n", i, filler)
	}
	require.NoError(t, w.Flush())
	require.NoError(t, f.Close())
	require.NoError(t, os.Rename(path+".new", path))
}

// TestReloadOfALargePasswordFileHoldsNoBrokerThread: a SIGHUP read the
// password file on the broker thread, every client stalled meanwhile: 1 s
// for 200 000 users, 17 s for two million (the 256 MiB bound). Now Reload
// waits at most reloadWait for it; the file is applied at the next CONNECT
// or TICK once read, and the clients whose user it removed or rehashed are
// disconnected (Mosquitto's re-check after the reload, which ran against
// the users loaded before, would have). A client whose user did not change
// stays, and so does one admitted at its first sight (no password of its
// own was checked).
func TestReloadOfALargePasswordFileHoldsNoBrokerThread(t *testing.T) {
	const bobPasswd = "bob:$7$101$JHG1ljPsz3QJNFOu$lCoMje0h7QEhScblT+CNTTGsf0WEpBT5y83IaKC6M/4RZMxmrHL3odUEBnCPfbCFoUI3q30ZDM/q/hY5CYhKzg=="
	path := filepath.Join(t.TempDir(), "passwd")
	writeUsers(t, path, 0, strings.TrimSpace(alicePasswd), bobPasswd)
	var kr kickRecorder
	ls := &logSink{}
	g := filesGuardOut(t, path, Output{Log: ls.log, Kick: kr.kick})

	require.Equal(t, Allow, g.Authenticate(cl(1, "192.0.2.1", "dev-alice", "alice", "alice-pw")).Result)
	require.Equal(t, Allow, g.Authenticate(cl(2, "192.0.2.2", "dev-bob", "bob", "alice-pw")).Result)
	g.admit(new(cl(3, "192.0.2.3", "dev-cert", "alice", "")), netip.MustParseAddr("192.0.2.3"), false, true) // first sight

	// alice removed, bob kept, 200 000 users more.
	writeUsers(t, path, 200_000, bobPasswd)
	start := time.Now()
	g.Reload()
	took := time.Since(start)
	t.Logf("Reload returned in %v", took)
	assert.Less(t, took, reloadWait+200*time.Millisecond, "the broker thread waits at most reloadWait")
	assert.Contains(t, ls.all(), "not read within")
	assert.Empty(t, kr.all(), "nobody kicked before the file is applied")

	deadline := time.Now().Add(30 * time.Second)
	for g.creds.users.Load().Len() != 200_001 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		g.Tick()
	}
	require.Equal(t, 200_001, g.creds.users.Load().Len(), "applied at a TICK once read")
	t.Logf("applied %v after the SIGHUP", time.Since(start))
	require.Eventually(t, func() bool { return len(kr.all()) > 0 }, 5*time.Second, 10*time.Millisecond)
	time.Sleep(50 * time.Millisecond)
	assert.Equal(t, []string{"dev-alice"}, kr.all(), "alice's connection, not bob's, not the first-sighted one")
	assert.Contains(t, ls.all(), "rule=user-changed")
	assert.Equal(t, RuleUnknownUser, g.Authenticate(cl(4, "192.0.2.4", "dev-alice2", "alice", "alice-pw")).Rule)
}

// A file read within reloadWait is applied before Reload returns, so the
// broker's re-check that follows sees it, as before; nobody is kicked by the
// plugin (the re-check disconnects them).
func TestReloadOfASmallPasswordFileAppliesBeforeTheReCheck(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	writeUsers(t, path, 0, strings.TrimSpace(alicePasswd))
	var kr kickRecorder
	g := filesGuardOut(t, path, Output{Log: func(Level, string) {}, Kick: kr.kick})
	require.Equal(t, Allow, g.Authenticate(cl(1, "192.0.2.1", "dev-alice", "alice", "alice-pw")).Result)
	writeUsers(t, path, 10)
	g.Reload()
	assert.Equal(t, 10, g.creds.users.Load().Len(), "applied before Reload returned")
	assert.Equal(t, RuleUnknownUser, g.Reauthenticate(cl(1, "192.0.2.1", "dev-alice", "alice", "alice-pw")).Rule)
	g.Tick()
	time.Sleep(100 * time.Millisecond)
	assert.Empty(t, kr.all())
}

// A panic while the late file's kicks scan the connections (here: no
// stores, so the comparison dereferences nil) held g.mu for ever, the lock
// every CONNECT takes on the broker thread, and left the kick window open
// (its fresh set growing with every CONNECT of a changed user). Now the
// scan lets go of g.mu, the window closes, the panic is logged and the
// reload loop would go on.
func TestKickChangedUsersPanicLeavesNoLockHeld(t *testing.T) {
	ls := &logSink{}
	g := filesGuardOut(t, passwdFile(t), Output{Log: ls.log, Kick: func(uintptr, string) {}})
	require.Equal(t, Allow, g.Authenticate(cl(1, "192.0.2.1", "dev-alice", "alice", "alice-pw")).Result)
	a := appliedUsers{}
	g.mu.Lock()
	g.reloads.kicking = &a
	g.mu.Unlock()

	done := make(chan struct{})
	go func() {
		defer close(done)
		g.kickChangedUsersSafely(a)
		g.Authenticate(cl(2, "192.0.2.2", "dev-alice-2", "alice", "alice-pw"))
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("a CONNECT after the panic is still waiting for g.mu")
	}
	assert.Contains(t, ls.all(), "internal error in the kicks of users the password file changed: ")
	g.mu.Lock()
	defer g.mu.Unlock()
	assert.Nil(t, g.reloads.kicking, "the kick window closed")
}
