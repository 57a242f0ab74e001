package files

import (
	"fmt"
	"os"

	"github.com/mosquitto-guard/mosquitto-guard/backends/hashes"
	"github.com/mosquitto-guard/mosquitto-guard/internal/fileread"
)

// Store is an immutable set of users loaded from one file; it is safe for
// concurrent use.
type Store struct {
	users map[string]string
	v     hashes.Verifier
	// dummy is checked for unknown users so that they cost as much time as
	// known ones: a hash that no password is known to match, of the class
	// (format, cost parameters, salt and key lengths) that most users of the
	// file have.
	dummy   string
	mixed   int
	skipped int // reports of the file's parse, Load returning the first MaxLineErrors
}

// Skipped returns how many lines of the file were skipped and usernames
// found on several lines: all of them, where Load returned the first
// MaxLineErrors.
func (s *Store) Skipped() int { return s.skipped }

// CheapHashes returns how many users have a hash that costs less than the
// most expensive one in the file, by more than a tenth (hashes.ToldApart): an attacker timing refusals can tell
// them from unknown users. Rehash them (mosquitto_passwd) to leak nothing.
func (s *Store) CheapHashes() int { return s.mixed }

// Load reads the password file at path, checking every hash with v. A file
// that cannot be read is an error; skipped lines and duplicate usernames are
// returned (the first MaxLineErrors, in file order; Store.Skipped counts
// them all), not fatal.
//
// The dummy hash for unknown users is v.DummyLike a hash of the class that
// most users have; when classes tie for most users, the one whose first user
// comes first in the file wins (with a tie, either choice leaves the other
// users' timing distinguishable: keep a file to one class to leak nothing).
// A file without users gets hashes.DefaultDummy, mosquitto_passwd's default
// class.
func Load(path string, v hashes.Verifier) (*Store, []LineError, error) {
	data, err := Read(path)
	if err != nil {
		return nil, nil, fmt.Errorf("files: read password_file %s: %w", path, err)
	}
	p, skipped := parse(data, path, v)
	return &Store{users: p.users, v: v, dummy: dummyLike(v, p.like), mixed: p.mixed, skipped: p.skipped}, skipped, nil
}

// MaxFileBytes bounds a password file: about two million users of
// mosquitto_passwd's $7$ lines (some 130 bytes each). The file is read
// whole, at start and at each SIGHUP on the broker thread: a larger one is
// a mistake (a disk image, a log) that would stall the broker and take its
// size in memory.
const MaxFileBytes = 256 << 20

// ErrNotRegular, ErrTooLarge and ErrWouldWait say why Open or Read
// refused a file (fileread's).
var (
	ErrNotRegular = fileread.ErrNotRegular
	ErrTooLarge   = fileread.ErrTooLarge
	ErrWouldWait  = fileread.ErrWouldWait
)

// Open opens the password file at path for reading: a regular file of at
// most MaxFileBytes. It never blocks: a named pipe without a writer (which
// os.Open would wait on for ever, at the broker's start or on its thread at
// a SIGHUP) or a device is ErrNotRegular, at once.
func Open(path string) (*os.File, error) { return fileread.Open(path, MaxFileBytes) }

// Read reads the password file at path (Open), at most MaxFileBytes of it
// even if it grows meanwhile, and never waits for data (fileread.ReadAll).
func Read(path string) ([]byte, error) { return fileread.Read(path, MaxFileBytes) }

// dummyLike is v.DummyLike(like), or the default dummy for no users.
func dummyLike(v hashes.Verifier, like string) string {
	if like != "" {
		if d, err := v.DummyLike(like); err == nil {
			return d
		}
		// Unreachable: like passed v's checks in parse.
	}
	return hashes.DefaultDummy()
}

// Hash returns the stored hash of username.
func (s *Store) Hash(username string) (string, bool) {
	h, ok := s.users[username]
	return h, ok
}

// HashOrDummy returns the stored hash of username and false, or, for an
// unknown user, the dummy hash (see Load) and true: a caller verifies the
// password against either by one call, which costs the same for both
// (Verify does the same).
func (s *Store) HashOrDummy(username string) (hash string, unknown bool) {
	if h, ok := s.users[username]; ok {
		return h, false
	}
	return s.dummy, true
}

// Len returns the number of users loaded.
func (s *Store) Len() int {
	return len(s.users)
}

// LongerThan returns how many users have a username of more than n bytes.
func (s *Store) LongerThan(n int) int {
	c := 0
	for u := range s.users {
		if len(u) > n {
			c++
		}
	}
	return c
}

// Verify looks username up and verifies password against its hash. An
// unknown user is false with no error, after verifying password against the
// dummy hash (see Load), which costs what the most common class of the file
// costs, so that timing tells little about which users exist. An error comes
// only from a hash that fails verification, which Load's checks make
// unlikely.
func (s *Store) Verify(username string, password []byte) (bool, error) {
	h, ok := s.users[username]
	if !ok {
		_, _ = s.v.Verify(s.dummy, password) // the result is thrown away
		return false, nil
	}
	ok, err := s.v.Verify(h, password)
	if err != nil {
		return false, fmt.Errorf("files: verify: %w", err)
	}
	return ok, nil
}
