package files

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/backends/hashes"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// mosquittoPasswd runs the real tool in batch mode.
func mosquittoPasswd(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("mosquitto_passwd", args...).CombinedOutput()
	require.NoError(t, err, "mosquitto_passwd %v: %s", args, out)
}

func TestLoadMosquittoPasswdFile(t *testing.T) {
	testenv.Need(t, "mosquitto_passwd")
	path := filepath.Join(t.TempDir(), "passwd")
	users := []struct{ name, alg, password string }{
		{"alice", "sha512-pbkdf2", "alice-secret"},
		{"bob", "sha512", "bob: has a colon"},
		{"carol", "sha512-pbkdf2", "pässwörd-密码"},
		{"dave", "sha512", ""},
		{"user with spaces", "sha512-pbkdf2", " padded "},
	}
	mosquittoPasswd(t, "-H", users[0].alg, "-c", "-b", path, users[0].name, users[0].password)
	for _, u := range users[1:] {
		mosquittoPasswd(t, "-H", u.alg, "-b", path, u.name, u.password)
	}

	s, skipped, err := Load(path, hashes.Verifier{})
	require.NoError(t, err)
	require.Empty(t, skipped)
	require.Equal(t, len(users), s.Len())

	for _, u := range users {
		h, ok := s.Hash(u.name)
		require.True(t, ok, u.name)
		assert.Equal(t, u.alg, hashes.Format(h))

		ok, err := s.Verify(u.name, []byte(u.password))
		require.NoError(t, err)
		assert.True(t, ok, "%s with the right password", u.name)

		ok, err = s.Verify(u.name, []byte(u.password+"x"))
		require.NoError(t, err)
		assert.False(t, ok, "%s with a wrong password", u.name)
	}

	ok, err := s.Verify("mallory", []byte("alice-secret"))
	require.NoError(t, err)
	assert.False(t, ok, "unknown user")
	ok, err = s.Verify("Alice", []byte("alice-secret"))
	require.NoError(t, err)
	assert.False(t, ok, "usernames are case-sensitive")

	// The dummy is of the most common class: $7$, 101 iterations.
	assert.True(t, strings.HasPrefix(s.dummy, "$7$101$"), s.dummy)
	require.NoError(t, hashes.Verifier{}.Validate(s.dummy))
}

func TestLoadMosquittoPasswdUpdate(t *testing.T) {
	testenv.Need(t, "mosquitto_passwd")
	path := filepath.Join(t.TempDir(), "passwd")
	mosquittoPasswd(t, "-c", "-b", path, "alice", "old")
	mosquittoPasswd(t, "-b", path, "alice", "new")
	mosquittoPasswd(t, "-b", path, "bob", "bob")
	mosquittoPasswd(t, "-D", path, "bob")

	s, skipped, err := Load(path, hashes.Verifier{})
	require.NoError(t, err)
	require.Empty(t, skipped)
	require.Equal(t, 1, s.Len())
	ok, _ := s.Verify("alice", []byte("new"))
	assert.True(t, ok)
	ok, _ = s.Verify("alice", []byte("old"))
	assert.False(t, ok)
	_, found := s.Hash("bob")
	assert.False(t, found)
}

func TestLoadUnreadable(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "nope")
	s, skipped, err := Load(missing, hashes.Verifier{})
	require.Error(t, err)
	assert.Nil(t, s)
	assert.Nil(t, skipped)
	assert.ErrorIs(t, err, fs.ErrNotExist)
	assert.True(t, strings.HasPrefix(err.Error(), "files: "), err.Error())
	assert.Contains(t, err.Error(), missing)

	_, _, err = Load(dir, hashes.Verifier{})
	require.Error(t, err, "a directory")
}

func TestLoadEmptyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "empty")
	require.NoError(t, os.WriteFile(path, nil, 0o600))
	s, skipped, err := Load(path, hashes.Verifier{})
	require.NoError(t, err)
	assert.Empty(t, skipped)
	assert.Equal(t, 0, s.Len())
	assert.True(t, strings.HasPrefix(s.dummy, "$7$101$"), "default cost")
	ok, err := s.Verify("anyone", []byte("x"))
	require.NoError(t, err)
	assert.False(t, ok)
}

func TestStoreVerifyBrokenHash(t *testing.T) {
	// Load never stores such a hash; a hand-built Store shows the error path.
	s := &Store{users: map[string]string{"u": "$7$0$c2FsdA==$aGFzaA=="}, dummy: hashes.DefaultDummy()}
	ok, err := s.Verify("u", []byte("pw"))
	assert.False(t, ok)
	require.ErrorIs(t, err, hashes.ErrMalformed)
	assert.True(t, strings.HasPrefix(err.Error(), "files: "), err.Error())
}

func TestStoreConcurrentVerify(t *testing.T) {
	path := writeFile(t, "alice:"+hash7Password+"\nbob:"+hash6Password+"\n")
	s, _, err := Load(path, hashes.Verifier{})
	require.NoError(t, err)
	done := make(chan bool)
	for i := 0; i < 8; i++ {
		go func() {
			ok1, _ := s.Verify("alice", []byte("password"))
			ok2, _ := s.Verify("bob", []byte("password"))
			ok3, _ := s.Verify("eve", []byte("password"))
			done <- ok1 && ok2 && !ok3
		}()
	}
	for i := 0; i < 8; i++ {
		assert.True(t, <-done)
	}
}

// A named pipe, a device, a directory or a file over MaxFileBytes is
// refused at once: os.Open on a pipe without a writer would wait for ever,
// at the broker's start or on its thread at a SIGHUP, and a huge file would
// be read whole into memory there.
func TestOpenRefusesWhatIsNotABoundedRegularFile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	huge := filepath.Join(dir, "huge")
	require.NoError(t, os.WriteFile(huge, nil, 0o600))
	require.NoError(t, os.Truncate(huge, MaxFileBytes+1)) // sparse: no disk used
	atLimit := filepath.Join(dir, "at-limit")
	require.NoError(t, os.WriteFile(atLimit, nil, 0o600))
	require.NoError(t, os.Truncate(atLimit, MaxFileBytes))

	for path, want := range map[string]error{fifo: ErrNotRegular, "/dev/zero": ErrNotRegular, dir: ErrNotRegular, huge: ErrTooLarge} {
		done := make(chan error, 1)
		go func() {
			_, _, err := Load(path, hashes.Verifier{})
			done <- err
		}()
		select {
		case err := <-done:
			assert.ErrorIs(t, err, want, path)
		case <-time.After(5 * time.Second):
			t.Fatalf("Load(%s) still blocked after 5 s", path)
		}
	}
	f, err := Open(atLimit)
	require.NoError(t, err, "a file of exactly MaxFileBytes is taken")
	f.Close()
}

// A regular file whose read waits (the kernel's /proc/kmsg, tracefs's
// trace_pipe) passes Open's checks, and Go parks a read of a pollable file
// opened O_NONBLOCK until it has data: "never blocks" held for the open
// only, and such a path (a typo, or a symlink swapped in) hung the start or,
// at a SIGHUP, the broker thread. Read must return at once with an error.
func TestReadNeverWaitsOnAPseudoFile(t *testing.T) {
	f, err := os.Open("/proc/kmsg")
	if err != nil {
		t.Skipf("/proc/kmsg: %v (needs root)", err)
	}
	f.Close()
	link := filepath.Join(t.TempDir(), "passwd")
	require.NoError(t, os.Symlink("/proc/kmsg", link))
	done := make(chan error, 1)
	go func() {
		_, err := Read(link)
		done <- err
	}()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("Read of a symlink to /proc/kmsg still blocked after 3 s")
	}
}

// HashOrDummy gives a known user's hash, and for an unknown user the dummy
// that Verify checks: the caller verifies both by one call (the plugin's
// credentials.check, from one stack).
func TestStoreHashOrDummy(t *testing.T) {
	path := writeFile(t, "alice:"+hash7Password+"\n")
	s, _, err := Load(path, hashes.Verifier{})
	require.NoError(t, err)
	h, unknown := s.HashOrDummy("alice")
	assert.False(t, unknown)
	assert.Equal(t, hash7Password, h)
	h, unknown = s.HashOrDummy("nobody")
	assert.True(t, unknown)
	assert.Equal(t, s.dummy, h)
	want, err := hashes.Verifier{}.Class(hash7Password)
	require.NoError(t, err)
	got, err := hashes.Verifier{}.Class(h)
	require.NoError(t, err)
	assert.Equal(t, want, got, "the dummy is of alice's class")
}

// A password file's line with a digest too short to bind a password
// (atk82: argon2id with a 1-byte digest, which "p1491" opened) is skipped
// with a line naming the file and line number, never the hash; the lines
// around it load. Load is what the start and every SIGHUP read.
func TestLoadSkipsShortDigest(t *testing.T) {
	testenv.Need(t, "mosquitto_passwd")
	path := filepath.Join(t.TempDir(), "passwd")
	mosquittoPasswd(t, "-c", "-b", path, "alice", "alice-pw")
	const short = "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$AA"
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString("u21:" + short + "\n")
	require.NoError(t, err)
	require.NoError(t, f.Close())
	mosquittoPasswd(t, "-b", path, "bob", "bob-pw")

	s, skipped, err := Load(path, hashes.Verifier{})
	require.NoError(t, err)
	require.Len(t, skipped, 1)
	assert.Equal(t, 2, skipped[0].Line)
	assert.Contains(t, skipped[0].Error(), "shorter than 16 bytes")
	assert.NotContains(t, skipped[0].Error(), "c2FsdA")
	assert.Equal(t, 2, s.Len(), "alice and bob")
	ok, err := s.Verify("u21", []byte("p1491"))
	require.NoError(t, err)
	assert.False(t, ok, "p1491 opened the 1-byte digest")
	ok, err = s.Verify("bob", []byte("bob-pw"))
	require.NoError(t, err)
	assert.True(t, ok)
}
