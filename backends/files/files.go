// Package files loads a password file in mosquitto_passwd's format (one
// "username:hash" per line) and verifies passwords against it, with any hash
// format that package hashes supports. Malformed lines are skipped and
// reported, never accepted; the reports never quote a hash or whatever else
// follows a line's ':'.
package files

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"strings"

	"github.com/mosquitto-guard/mosquitto-guard/backends/hashes"
)

// defaultDummyIterations is mosquitto_passwd's PBKDF2 iteration count, for
// the dummy hash of a file that has no $7$ line.
const defaultDummyIterations = "101"

// Store is an immutable set of users loaded from one file; it is safe for
// concurrent use.
type Store struct {
	users map[string]string
	v     hashes.Verifier
	// dummy is checked for unknown users so that they cost about as much
	// time as known ones: a $7$ hash that no password matches.
	dummy string
}

// Load reads the password file at path, checking every hash with v. A file
// that cannot be read is an error; skipped lines are returned, not fatal.
func Load(path string, v hashes.Verifier) (*Store, []LineError, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("files: read password_file %s: %w", path, err)
	}
	p, skipped := parse(data, path, v)
	return &Store{users: p.users, v: v, dummy: dummyHash(p.lastPBKDF2)}, skipped, nil
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
// unknown user is false with no error, after checking a dummy hash as costly
// as the file's last $7$ hash (or mosquitto_passwd's default), so that
// timing tells little about which users exist. An error comes only from a
// hash that fails verification, which Load's checks make unlikely.
func (s *Store) Verify(username string, password []byte) (bool, error) {
	h, ok := s.users[username]
	if !ok {
		_, _ = s.v.Verify(s.dummy, password)
		return false, nil
	}
	ok, err := s.v.Verify(h, password)
	if err != nil {
		return false, fmt.Errorf("files: verify: %w", err)
	}
	return ok, nil
}

// dummyHash builds a $7$ hash with the iteration count of like (a $7$ hash
// that validated) or the default, and a random salt and hash.
func dummyHash(like string) string {
	iterations := defaultDummyIterations
	if like != "" {
		iterations = strings.Split(like, "$")[2]
	}
	b := make([]byte, 12+64)
	_, _ = rand.Read(b) // never fails since Go 1.24
	enc := base64.StdEncoding
	return "$7$" + iterations + "$" + enc.EncodeToString(b[:12]) + "$" + enc.EncodeToString(b[12:])
}
