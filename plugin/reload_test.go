package plugin

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/mosquitto-guard/mosquitto-guard/config"
)

// levelSink keeps log lines with their level.
type levelSink struct {
	mu    sync.Mutex
	lines []string
}

func (l *levelSink) log(lv Level, msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf("%d %s", lv, msg))
}

func (l *levelSink) with(lv Level, parts ...string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
next:
	for _, line := range l.lines {
		if !strings.HasPrefix(line, fmt.Sprintf("%d ", lv)) {
			continue
		}
		for _, p := range parts {
			if !strings.Contains(line, p) {
				continue next
			}
		}
		out = append(out, line)
	}
	return out
}

func (l *levelSink) reset() {
	l.mu.Lock()
	l.lines = nil
	l.mu.Unlock()
}

// filesGuard is a files-backend guard on the password file at path.
func filesGuard(t *testing.T, path string) (*Guard, *levelSink) {
	t.Helper()
	cfg, err := config.Parse(map[string]string{"backend": "files", "password_file": path})
	require.NoError(t, err)
	ls := &levelSink{}
	g, err := NewWith(cfg, Output{Log: ls.log}, Deps{Store: newFakeStore(), Counter: &fakeCounter{}})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	return g, ls
}

func bcryptLine(t *testing.T, user, pass string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pass), 4)
	require.NoError(t, err)
	return user + ":" + string(h) + "\n"
}

// A file that turns into lines that are not users, or into nothing, keeps
// the users loaded before (Mosquitto would disconnect every client when it
// re-authenticates them after the reload), with an error line; the next
// file with users is loaded.
func TestReloadWithNoUserKeepsUsers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	require.NoError(t, os.WriteFile(path, []byte(bcryptLine(t, "alice", "pw-a")+bcryptLine(t, "bob", "pw-b")), 0o600))
	g, ls := filesGuard(t, path)
	require.Equal(t, 2, g.creds.users.Load().Len())

	for name, content := range map[string]string{
		"garbage": "this is not a password file\nalice\n:x\nbob:not-a-hash\n\x00\xff\n",
		"empty":   "",
		"comment": "# all users removed\n\n",
	} {
		t.Run(name, func(t *testing.T) {
			ls.reset()
			require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
			g.Reload()
			assert.Equal(t, 2, g.creds.users.Load().Len())
			assert.Equal(t, Allow, g.Authenticate(cl(1, "192.0.2.1", "a", "alice", "pw-a")).Result)
			assert.Equal(t, Allow, g.Authenticate(cl(2, "192.0.2.2", "b", "bob", "pw-b")).Result)
			assert.Len(t, ls.with(LevelError, "password_file "+path+": no user in it", "keeping the 2 users loaded before"), 1, ls.lines)
			assert.Empty(t, ls.with(LevelInfo, "loaded 0 users"))
		})
	}

	ls.reset()
	require.NoError(t, os.WriteFile(path, []byte(bcryptLine(t, "carol", "pw-c")), 0o600))
	g.Reload()
	assert.Equal(t, 1, g.creds.users.Load().Len(), "a file with users replaces the users")
	assert.Equal(t, Deny, g.Authenticate(cl(3, "192.0.2.1", "a", "alice", "pw-a")).Result)
	assert.Equal(t, Allow, g.Authenticate(cl(4, "192.0.2.3", "c", "carol", "pw-c")).Result)
	assert.Len(t, ls.with(LevelInfo, "loaded 1 users"), 1)
	assert.Empty(t, ls.with(LevelError))
}

// At start a file without users is what the operator asked for.
func TestStartWithNoUser(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	require.NoError(t, os.WriteFile(path, []byte("# nobody yet\n"), 0o600))
	g, ls := filesGuard(t, path)
	assert.Equal(t, 0, g.creds.users.Load().Len())
	assert.Len(t, ls.with(LevelInfo, "loaded 0 users"), 1)
	// From no users to no users: nothing to keep.
	g.Reload()
	assert.Empty(t, ls.with(LevelError))
	require.NoError(t, os.WriteFile(path, []byte(bcryptLine(t, "alice", "pw-a")), 0o600))
	g.Reload()
	assert.Equal(t, Allow, g.Authenticate(cl(1, "192.0.2.1", "a", "alice", "pw-a")).Result)
}

// A username on two lines: the last line is used, as Mosquitto does, and
// one warning names the file, the lines and the username, never a hash.
func TestDuplicateUserLastLineWins(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	first, last := bcryptLine(t, "alice", "old-pw"), bcryptLine(t, "alice", "new-pw")
	require.NoError(t, os.WriteFile(path, []byte(first+bcryptLine(t, "bob", "pw-b")+last), 0o600))
	g, ls := filesGuard(t, path)
	assert.Equal(t, Allow, g.Authenticate(cl(1, "192.0.2.1", "a", "alice", "new-pw")).Result)
	assert.Equal(t, Deny, g.Authenticate(cl(2, "192.0.2.1", "a", "alice", "old-pw")).Result)
	dup := ls.with(LevelWarning, "password_file "+path+" line 3: duplicate username \"alice\": also on line 1; the last line is used")
	require.Len(t, dup, 1, ls.lines)
	for _, h := range []string{first, last} {
		assert.NotContains(t, dup[0], strings.TrimSpace(strings.SplitN(h, ":", 2)[1])[7:])
	}
}

// The log lines about one load are bounded: a file of garbage writes 20
// and a count, not one per line.
func TestLoadReportsBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	require.NoError(t, os.WriteFile(path, []byte(bcryptLine(t, "alice", "pw-a")+strings.Repeat("garbage\n", 10_000)), 0o600))
	_, ls := filesGuard(t, path)
	assert.Equal(t, 20, len(ls.with(LevelWarning, "skipped password_file")), "lines about skipped lines")
	assert.Len(t, ls.with(LevelWarning, "9980 more skipped lines or duplicate usernames not logged"), 1)
}

// Reload keeps the verification cache: Mosquitto re-authenticates every
// connected client right after it, on the broker thread, and an emptied
// cache makes each pay a full hash. Entries are bound to the stored hash:
// a changed password misses, a removed user is refused as unknown.
func TestReloadKeepsCache(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	alice, bob, carol := bcryptLine(t, "alice", "pw-a"), bcryptLine(t, "bob", "pw-b"), bcryptLine(t, "carol", "pw-c")
	require.NoError(t, os.WriteFile(path, []byte(alice+bob+carol), 0o600))
	g, _ := filesGuard(t, path)
	for i, u := range []string{"alice", "bob", "carol"} {
		require.Equal(t, Allow, g.Authenticate(cl(uintptr(i+1), "192.0.2.1", u, u, "pw-"+u[:1])).Result)
	}
	require.Equal(t, 3, g.creds.cache.len())
	hashOf := func(u string) string { h, _ := g.creds.users.Load().Hash(u); return h }
	aliceHash := hashOf("alice")

	// bob's password changes, carol is removed, alice is unchanged.
	require.NoError(t, os.WriteFile(path, []byte(alice+bcryptLine(t, "bob", "pw-b2")), 0o600))
	g.Reload()
	assert.True(t, g.creds.cache.hit("alice", []byte("pw-a"), aliceHash), "alice's re-authentication needs no hash")
	assert.False(t, g.creds.cache.hit("bob", []byte("pw-b"), hashOf("bob")), "bob's old password is bound to his old hash")
	// The broker's re-authentication of the three connections (handles 1-3).
	assert.Equal(t, Allow, g.Authenticate(cl(1, "192.0.2.1", "alice", "alice", "pw-a")).Result)
	assert.Equal(t, RuleBadPassword, g.Authenticate(cl(2, "192.0.2.1", "bob", "bob", "pw-b")).Rule)
	assert.Equal(t, RuleUnknownUser, g.Authenticate(cl(3, "192.0.2.1", "carol", "carol", "pw-c")).Rule)
	assert.Equal(t, Allow, g.Authenticate(cl(4, "192.0.2.1", "bob", "bob", "pw-b2")).Result)
}
