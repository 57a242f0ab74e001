package files

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/mosquitto-guard/mosquitto-guard/backends/hashes"
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
	dummy string
	mixed int
}

// CheapHashes returns how many users have a hash that costs less than half
// the most expensive one in the file: an attacker timing refusals can tell
// them from unknown users. Rehash them (mosquitto_passwd) to leak nothing.
func (s *Store) CheapHashes() int { return s.mixed }

// Load reads the password file at path, checking every hash with v. A file
// that cannot be read is an error; skipped lines and duplicate usernames are
// returned, not fatal.
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
	return &Store{users: p.users, v: v, dummy: dummyLike(v, p.like), mixed: p.mixed}, skipped, nil
}

// MaxFileBytes bounds a password file: about two million users of
// mosquitto_passwd's $7$ lines (some 130 bytes each). The file is read
// whole, at start and at each SIGHUP on the broker thread: a larger one is
// a mistake (a disk image, a log) that would stall the broker and take its
// size in memory.
const MaxFileBytes = 256 << 20

// ErrNotRegular and ErrTooLarge say why Open refused a file.
var (
	ErrNotRegular = errors.New("not a regular file")
	ErrTooLarge   = fmt.Errorf("larger than %d MiB", MaxFileBytes>>20)
)

// Open opens the password file at path for reading: a regular file of at
// most MaxFileBytes. It never blocks: a named pipe without a writer (which
// os.Open would wait on for ever, at the broker's start or on its thread at
// a SIGHUP) or a device is ErrNotRegular, at once.
func Open(path string) (*os.File, error) {
	// O_NONBLOCK: opening a FIFO returns at once; reading a regular file
	// ignores it.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	switch {
	case err != nil:
		f.Close()
		return nil, err
	case !st.Mode().IsRegular():
		f.Close()
		return nil, ErrNotRegular
	case st.Size() > MaxFileBytes:
		f.Close()
		return nil, ErrTooLarge
	}
	return f, nil
}

// ErrWouldWait says that reading the file would wait for data: a pseudo-file
// such as /proc/kmsg, regular by its mode but no file on a disk.
var ErrWouldWait = errors.New("a read would wait (not a file on a disk)")

// Read reads the password file at path (Open), at most MaxFileBytes of it
// even if it grows meanwhile. It never waits either: Go parks a read of a
// pollable file opened O_NONBLOCK until data comes, so the reads are raw
// ones, and a read that would wait is ErrWouldWait.
func Read(path string) ([]byte, error) {
	f, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	data := make([]byte, 0, st.Size()+512) // Open bounded the size
	for {
		if len(data) == cap(data) {
			data = append(data, 0)[:len(data)]
		}
		var n int
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			n, rerr = syscall.Read(int(fd), data[len(data):cap(data)])
			return true // done: never wait on Go's poller
		}); err != nil {
			return nil, err
		}
		switch {
		case rerr == syscall.EINTR:
			continue
		case rerr == syscall.EAGAIN:
			return nil, ErrWouldWait
		case rerr != nil:
			return nil, rerr
		case n == 0:
			return data, nil
		}
		data = data[:len(data)+n]
		if len(data) > MaxFileBytes {
			return nil, ErrTooLarge
		}
	}
}

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

// Len returns the number of users loaded.
func (s *Store) Len() int {
	return len(s.users)
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
