package hashes

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"hash"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

var (
	sha512New = sha512.New
	sha256New = sha256.New
)

// refPBKDF2 is RFC 8018's PBKDF2 written out on crypto/hmac, independent of
// the crypto/pbkdf2 that the package uses.
func refPBKDF2(h func() hash.Hash, password, salt []byte, iter, keyLen int) []byte {
	var out []byte
	for block := uint32(1); len(out) < keyLen; block++ {
		mac := hmac.New(h, password)
		mac.Write(salt)
		mac.Write(binary.BigEndian.AppendUint32(nil, block))
		u := mac.Sum(nil)
		t := append([]byte(nil), u...)
		for i := 1; i < iter; i++ {
			mac = hmac.New(h, password)
			mac.Write(u)
			u = mac.Sum(nil)
			for j := range t {
				t[j] ^= u[j]
			}
		}
		out = append(out, t...)
	}
	return out[:keyLen]
}

// goAuthPBKDF2 assembles a hash the way go-auth's hashWithSalt does.
func goAuthPBKDF2(alg string, password string, salt []byte, iter, keyLen int, utf8Salt bool) string {
	h := sha512New
	if alg == "sha256" {
		h = sha256New
	}
	saltField := base64.StdEncoding.EncodeToString(salt)
	if utf8Salt {
		saltField = string(salt)
	}
	return "PBKDF2$" + alg + "$" + strconv.Itoa(iter) + "$" + saltField + "$" +
		base64.StdEncoding.EncodeToString(refPBKDF2(h, []byte(password), salt, iter, keyLen))
}

// Literal vectors, computed with Python's hashlib (PBKDF2), libxcrypt's
// crypt(3) (bcrypt) and the reference libargon2 (argon2id).
var goAuthVectors = []struct {
	name     string
	enc      SaltEncoding
	password string
	encoded  string
	format   string
}{
	{"pbkdf2 sha512 go-auth defaults", "", "test-password", "PBKDF2$sha512$100000$AQIDBAUGBwgJCgsMDQ4PEA==$BSPntsK0jNle9NBfyz/BEcnxOpI2hqNDCOy3NE4cNwI=", "pbkdf2-sha512"},
	{"pbkdf2 sha256 unicode", SaltBase64, "pässwörd", "PBKDF2$sha256$901$MDEyMzQ1Njc4OWFi$AYRvTyTKFxHRwqPz/J9fSYXH5BbaImQ4", "pbkdf2-sha256"},
	{"pbkdf2 utf8 salt", SaltUTF8, "utf8-salted", "PBKDF2$sha512$1000$abcdEFGH:12#4 78$CTD9416JS5Djbma9LE+qcSB3re5+AkjURkGWPvBtMoEJfBCu6YbTQCfs1ClX/9wOD0Hf4YcIxVw7hIxRGd0AzA==", "pbkdf2-sha512"},
	{"pbkdf2 utf-8 spelling", "utf-8", "utf8-salted", "PBKDF2$sha512$1000$abcdEFGH:12#4 78$CTD9416JS5Djbma9LE+qcSB3re5+AkjURkGWPvBtMoEJfBCu6YbTQCfs1ClX/9wOD0Hf4YcIxVw7hIxRGd0AzA==", "pbkdf2-sha512"},
	{"pbkdf2 phc", "", "phc-password", "$pbkdf2-sha512$i=10000,l=32$ECAwQFBgcICQoLDA0ODw/w$eAighznsYHS2JvoPTd+4mIhMsRuViyyU7E6Mducy35M", "pbkdf2-sha512"},
	{"pbkdf2 phc no leading $", "", "phc-password", "pbkdf2-sha512$l=32,i=10000$ECAwQFBgcICQoLDA0ODw/w$eAighznsYHS2JvoPTd+4mIhMsRuViyyU7E6Mducy35M", "pbkdf2-sha512"},
	{"bcrypt 2a", "", "U*U", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW", "bcrypt"},
	{"bcrypt 2b", "", "U*U", "$2b$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW", "bcrypt"},
	{"bcrypt 2y", "", "password", "$2y$04$abcdefghijklmnopqrstuughE8Ev8uGFaUgY2cNEySvxngrb/Jzdm", "bcrypt"},
	{"bcrypt unicode", "", "pässwörd-密码", "$2b$06$ZZZZZZZZZZZZZZZZZZZZZupe4f479ceKRRj.Is1Zn3fd76lrF2Axy", "bcrypt"},
	{"argon2id go-auth defaults", "", "test-password", "$argon2id$v=19$m=4096,t=3,p=2$MDEyMzQ1Njc4OWFiY2RlZg$CdMsMiHedKDMkQL8xzovk37VUgbnQ6zz/KNiuHn5rv4", "argon2id"},
	{"argon2id small", SaltUTF8, "pässwörd-密码", "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$Y9lQAmzlS2f8h0UmG3Wy7A", "argon2id"},
}

func TestGoAuthVectors(t *testing.T) {
	for _, tc := range goAuthVectors {
		t.Run(tc.name, func(t *testing.T) {
			v := Verifier{SaltEncoding: tc.enc}
			assert.Equal(t, tc.format, Format(tc.encoded))
			require.NoError(t, v.Validate(tc.encoded))

			ok, err := v.Verify(tc.encoded, []byte(tc.password))
			require.NoError(t, err)
			assert.True(t, ok, "right password")

			ok, err = v.Verify(tc.encoded, []byte(tc.password+"x"))
			require.NoError(t, err)
			assert.False(t, ok, "wrong password")
		})
	}
}

func TestGoAuthPBKDF2Generated(t *testing.T) {
	cases := []struct {
		alg        string
		iter, key  int
		saltLen    int
		utf8       bool
		password   string
		wantFormat string
	}{
		{"sha512", 1000, 32, 16, false, "test-password", "pbkdf2-sha512"},
		{"sha512", 10, 64, 30, false, "", "pbkdf2-sha512"},
		{"sha256", 901, 24, 12, false, "pässwörd 密码", "pbkdf2-sha256"},
		{"sha256", 5, 100, 8, false, "key longer than one block", "pbkdf2-sha256"},
		{"sha512", 50, 32, 16, true, "utf8 salt", "pbkdf2-sha512"},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s/%d/%d/utf8=%v", tc.alg, tc.iter, tc.key, tc.utf8), func(t *testing.T) {
			salt := make([]byte, tc.saltLen)
			_, _ = rand.Read(salt)
			v := Verifier{}
			if tc.utf8 {
				// go-auth's utf-8 salts are raw bytes; keep them free of '$'.
				for i := range salt {
					salt[i] = 'A' + salt[i]%26
				}
				v.SaltEncoding = SaltUTF8
			}
			encoded := goAuthPBKDF2(tc.alg, tc.password, salt, tc.iter, tc.key, tc.utf8)
			assert.Equal(t, tc.wantFormat, Format(encoded))
			ok, err := v.Verify(encoded, []byte(tc.password))
			require.NoError(t, err)
			assert.True(t, ok)
			ok, err = v.Verify(encoded, []byte(tc.password+"!"))
			require.NoError(t, err)
			assert.False(t, ok)

			// The other salt encoding reads a different salt: no match.
			other := Verifier{SaltEncoding: SaltUTF8}
			if tc.utf8 {
				other.SaltEncoding = SaltBase64
			}
			ok, _ = other.Verify(encoded, []byte(tc.password))
			assert.False(t, ok)
		})
	}
}

func TestBcryptGenerated(t *testing.T) {
	for _, password := range []string{"", "p", "pässwörd 密码", "exactly-seventy-two-bytes-long-password-01234567890123456789012345678901"} {
		h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
		require.NoError(t, err)
		for _, prefix := range []string{"$2a$", "$2b$", "$2y$"} {
			encoded := prefix + string(h[4:])
			ok, err := Verifier{}.Verify(encoded, []byte(password))
			require.NoError(t, err)
			assert.True(t, ok, "%s %q", prefix, password)
			ok, err = Verifier{}.Verify(encoded, []byte(password+"x"))
			require.NoError(t, err)
			assert.Equal(t, len(password) >= 72, ok, "only 72 bytes count in bcrypt")
		}
	}
}

func TestArgon2idGenerated(t *testing.T) {
	for _, tc := range []struct {
		m, t   uint32
		p      uint8
		keyLen uint32
	}{{4096, 3, 2, 32}, {64, 1, 1, 16}, {256, 2, 4, 64}} {
		salt := make([]byte, 16)
		_, _ = rand.Read(salt)
		key := argon2.IDKey([]byte("argon pw"), salt, tc.t, tc.m, tc.p, tc.keyLen)
		encoded := fmt.Sprintf("$argon2id$v=19$m=%d,t=%d,p=%d$%s$%s", tc.m, tc.t, tc.p,
			base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key))
		for _, enc := range []SaltEncoding{"", SaltBase64, SaltUTF8} {
			ok, err := Verifier{SaltEncoding: enc}.Verify(encoded, []byte("argon pw"))
			require.NoError(t, err)
			assert.True(t, ok, "argon2id ignores the salt encoding")
		}
		ok, err := Verifier{}.Verify(encoded, []byte("argon pw "))
		require.NoError(t, err)
		assert.False(t, ok)
	}
}
