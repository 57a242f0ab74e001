package files

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"

	"github.com/mosquitto-guard/mosquitto-guard/backends/hashes"
)

// bcryptHash hashes password with bcrypt at cost, under prefix ("$2a$",
// "$2b$" or "$2y$").
func bcryptHash(t testing.TB, prefix, password string, cost int) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), cost)
	require.NoError(t, err)
	return prefix + string(h[4:])
}

// argon2idHash hashes password as mosquitto-go-auth writes argon2id.
func argon2idHash(password string, m, tm uint32, p uint8, saltLen, keyLen int) string {
	salt := make([]byte, saltLen)
	_, _ = rand.Read(salt)
	key := argon2.IDKey([]byte(password), salt, tm, m, p, uint32(keyLen))
	return fmt.Sprintf("$argon2id$v=19$m=%d,t=%d,p=%d$%s$%s", m, tm, p,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key))
}

// usersFile writes one "name:hash" line per hash, users u0, u1, ...
func usersFile(t *testing.T, hs ...string) string {
	t.Helper()
	var b strings.Builder
	for i, h := range hs {
		fmt.Fprintf(&b, "u%d:%s\n", i, h)
	}
	return writeFile(t, b.String())
}

// TestLoadDummyBcrypt: a file of bcrypt users gets a bcrypt dummy of the
// same prefix and cost, not mosquitto_passwd's cheap default $7$. It uses no
// API beyond what the files backend had before DummyLike, so that it can be
// run against the code before the change (where it fails).
func TestLoadDummyBcrypt(t *testing.T) {
	for _, prefix := range []string{"$2a$", "$2b$", "$2y$"} {
		t.Run(prefix, func(t *testing.T) {
			path := usersFile(t,
				bcryptHash(t, prefix, "a", 6),
				bcryptHash(t, prefix, "b", 6),
				bcryptHash(t, prefix, "c", 6),
				hash7Password, // a minority class must not win
			)
			s, skipped, err := Load(path, hashes.Verifier{})
			require.NoError(t, err)
			require.Empty(t, skipped)
			require.Equal(t, 4, s.Len())

			assert.Equal(t, "bcrypt", hashes.Format(s.dummy), s.dummy)
			require.Len(t, s.dummy, 60)
			assert.Equal(t, prefix+"06$", s.dummy[:7], "same variant and cost")
			require.NoError(t, hashes.Verifier{}.Validate(s.dummy))
			for i := 0; i < 3; i++ {
				h, _ := s.Hash(fmt.Sprintf("u%d", i))
				assert.NotEqual(t, h[7:29], s.dummy[7:29], "a salt of its own")
			}

			for _, pw := range []string{"a", "b", "c", ""} {
				ok, err := s.Verify("nobody", []byte(pw))
				require.NoError(t, err)
				assert.False(t, ok)
			}
		})
	}
}

// TestLoadDummyArgon2id: a file of argon2id users gets an argon2id dummy with
// the same m, t, p, salt length and key length. Like TestLoadDummyBcrypt it
// fails on the code before DummyLike.
func TestLoadDummyArgon2id(t *testing.T) {
	h1 := argon2idHash("a", 256, 2, 2, 16, 32)
	h2 := argon2idHash("b", 256, 2, 2, 16, 32)
	path := usersFile(t, h1, hash6Password, h2)
	s, _, err := Load(path, hashes.Verifier{})
	require.NoError(t, err)
	require.Equal(t, 3, s.Len())

	require.Equal(t, "argon2id", hashes.Format(s.dummy), s.dummy)
	require.NoError(t, hashes.Verifier{}.Validate(s.dummy))
	want := strings.Split(h1, "$")
	got := strings.Split(s.dummy, "$")
	require.Len(t, got, 6)
	assert.Equal(t, want[:4], got[:4], "same version and m,t,p")
	dec := base64.RawStdEncoding
	salt, err := dec.DecodeString(got[4])
	require.NoError(t, err)
	key, err := dec.DecodeString(got[5])
	require.NoError(t, err)
	assert.Len(t, salt, 16)
	assert.Len(t, key, 32)
	assert.NotEqual(t, want[4], got[4], "a salt of its own")

	ok, err := s.Verify("nobody", []byte("a"))
	require.NoError(t, err)
	assert.False(t, ok)
}

// BenchmarkUnknownVsKnown compares a wrong password for a known user with
// any password for an unknown one, on a file of bcrypt users at the default
// cost. The ns/op of "known" and "unknown" should be about equal; so that
// load on the machine drifting between those two runs does not skew the
// comparison, "interleaved" alternates the two and reports the ratio of
// their mean times as unknown/known (1 is ideal):
//
//	go test -bench UnknownVsKnown -run '^$' ./backends/files
func BenchmarkUnknownVsKnown(b *testing.B) {
	var lines strings.Builder
	for i := 0; i < 3; i++ {
		fmt.Fprintf(&lines, "u%d:%s\n", i, bcryptHash(b, "$2b$", fmt.Sprint("pw", i), bcrypt.DefaultCost))
	}
	path := filepath.Join(b.TempDir(), "passwd")
	if err := os.WriteFile(path, []byte(lines.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	s, _, err := Load(path, hashes.Verifier{})
	if err != nil || s.Len() != 3 {
		b.Fatal(err, s.Len())
	}
	for _, user := range []string{"u0", "nobody"} {
		name := "known"
		if user == "nobody" {
			name = "unknown"
		}
		b.Run(name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if ok, err := s.Verify(user, []byte("wrong")); ok || err != nil {
					b.Fatal(ok, err)
				}
			}
		})
	}
	b.Run("interleaved", func(b *testing.B) {
		var spent [2]time.Duration // known, unknown
		for i := 0; i < b.N; i++ {
			for j, user := range []string{"u0", "nobody"} {
				start := time.Now()
				if ok, err := s.Verify(user, []byte("wrong")); ok || err != nil {
					b.Fatal(ok, err)
				}
				spent[j] += time.Since(start)
			}
		}
		b.ReportMetric(float64(spent[1])/float64(spent[0]), "unknown/known")
	})
}
