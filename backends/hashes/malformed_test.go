package hashes

import (
	"encoding/base64"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Well-formed hashes that the malformed variants below are built from.
const (
	s6Salt = "fE3HhJ/EaUFJwxOb"
	s6Hash = "xlgvK5uMo6YcPMqIrlo4+d+AfGaaynTfxCXJ3WdJv1CpPbwEQ/DHt6CwzEz2AE8I0W6hpvx4u5rcPhnk23BH0Q=="
	s7Salt = "W0DmyIJ2hz1HNTW0"
	s7Hash = "zWoY14fpYyjdeS1Nu7IsYIIWvsX4Pp9jUt+TstAbXXQqE6bN1Iiao/Vp1k1oAVL6/xTh8lH4xkTEzOqfhsnUQw=="
	pbSalt = "AQIDBAUGBwgJCgsMDQ4PEA=="
	pbHash = "BSPntsK0jNle9NBfyz/BEcnxOpI2hqNDCOy3NE4cNwI="
	phSalt = "ECAwQFBgcICQoLDA0ODw/w"
	phHash = "eAighznsYHS2JvoPTd+4mIhMsRuViyyU7E6Mducy35M"
	bcTail = "CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"
	arSalt = "MDEyMzQ1Njc4OWFiY2RlZg"
	arHash = "CdMsMiHedKDMkQL8xzovk37VUgbnQ6zz/KNiuHn5rv4"
)

var (
	b64Of1025  = base64.StdEncoding.EncodeToString(make([]byte, 1025))
	b64Of32    = base64.StdEncoding.EncodeToString(make([]byte, 32))
	b64Of65    = base64.StdEncoding.EncodeToString(make([]byte, 65))
	rawOf1025  = base64.RawStdEncoding.EncodeToString(make([]byte, 1025))
	longUTF8   = strings.Repeat("s", 1025)
	bcryptRest = bcTail
)

var malformedHashes = []string{
	// Mosquitto $6$
	"$6$", "$6$" + s6Salt, "$6$" + s6Salt + "$", "$6$$" + s6Hash, "$6$fE3H!J/EaUFJwxOb$" + s6Hash,
	"$6$" + s6Salt + "$" + strings.Replace(s6Hash, "x", "*", 1), "$6$" + s6Salt + "$" + b64Of32,
	"$6$" + s6Salt + "$" + s6Hash + "$extra", "$6$" + s6Salt + "$" + strings.TrimRight(s6Hash, "="),
	"$6$" + s6Salt + "$" + s6Hash[:40] + "\n" + s6Hash[40:], "$6$" + b64Of1025 + "$" + s6Hash,
	// Mosquitto $7$
	"$7$", "$7$101", "$7$101$" + s7Salt, "$7$101$" + s7Salt + "$", "$7$101$$" + s7Hash, "$7$$" + s7Salt + "$" + s7Hash,
	"$7$0$" + s7Salt + "$" + s7Hash, "$7$-1$" + s7Salt + "$" + s7Hash, "$7$+101$" + s7Salt + "$" + s7Hash,
	"$7$abc$" + s7Salt + "$" + s7Hash, "$7$1e3$" + s7Salt + "$" + s7Hash, "$7$ 101$" + s7Salt + "$" + s7Hash,
	"$7$10000001$" + s7Salt + "$" + s7Hash, "$7$99999999999$" + s7Salt + "$" + s7Hash,
	"$7$101$W0Dmy!J2hz1HNTW0$" + s7Hash, "$7$101$" + s7Salt + "$" + s7Hash[1:], "$7$101$" + s7Salt + "$" + b64Of65,
	"$7$101$" + s7Salt + "$" + s7Hash + "$", "$7$101$" + s7Salt + "$" + s7Hash + "$more",
	// go-auth PBKDF2$
	"PBKDF2$sha512", "PBKDF2$sha512$", "PBKDF2$sha512$100000", "PBKDF2$sha512$100000$" + pbSalt,
	"PBKDF2$sha512$100000$" + pbSalt + "$", "PBKDF2$sha512$100000$$" + pbHash, "PBKDF2$sha512$$" + pbSalt + "$" + pbHash,
	"PBKDF2$sha512$0$" + pbSalt + "$" + pbHash, "PBKDF2$sha256$10000001$" + pbSalt + "$" + pbHash,
	"PBKDF2$sha512$1_000$" + pbSalt + "$" + pbHash, "PBKDF2$sha512$1000$not base64!$" + pbHash,
	"PBKDF2$sha512$1000$" + pbSalt + "$not base64!", "PBKDF2$sha512$1000$" + pbSalt + "$" + strings.TrimRight(pbHash, "="),
	"PBKDF2$sha512$1000$" + pbSalt + "$" + pbHash + "$", "PBKDF2$sha512$1000$" + pbSalt + "$" + b64Of1025,
	"PBKDF2$sha512$10000000$" + pbSalt + "$" + b64Of65, // two blocks of ten million iterations
	// go-auth PHC pbkdf2-sha512
	"$pbkdf2-sha512$i=10000$" + phSalt + "$" + phHash, "$pbkdf2-sha512$l=32$" + phSalt + "$" + phHash,
	"$pbkdf2-sha512$i=10000,l=32,x=1$" + phSalt + "$" + phHash, "$pbkdf2-sha512$i=1,i=2,l=32$" + phSalt + "$" + phHash,
	"$pbkdf2-sha512$i10000,l=32$" + phSalt + "$" + phHash, "$pbkdf2-sha512$i=10000,l=31$" + phSalt + "$" + phHash,
	"$pbkdf2-sha512$i=10000,l=x$" + phSalt + "$" + phHash, "$pbkdf2-sha512$i=0,l=32$" + phSalt + "$" + phHash,
	"$pbkdf2-sha512$i=10000,l=32$" + phSalt + "$" + phHash + "=", "$pbkdf2-sha512$i=10000,l=32$" + phSalt + "$!" + phHash[1:],
	"$pbkdf2-sha512$i=10000,l=32$" + phSalt + "$" + phHash + "$x", "$pbkdf2-sha512$i=10000,l=32$$" + phHash,
	"$pbkdf2-sha512$i=10000,l=1025$" + phSalt + "$" + rawOf1025, "$pbkdf2-sha512$$" + phSalt + "$" + phHash,
	// bcrypt
	"$2a$05$" + bcryptRest[1:], "$2a$05$" + bcryptRest + "x", "$2a$03$" + bcryptRest, "$2a$17$" + bcryptRest,
	"$2a$31$" + bcryptRest, "$2a$ab$" + bcryptRest, "$2a$-5$" + bcryptRest, "$2a$05x" + bcryptRest,
	"$2a$05$" + strings.Replace(bcryptRest, "C", "!", 1), "$2b$", "$2y$05$",
	// argon2id
	"$argon2id$", "$argon2id$v=19$m=4096,t=3,p=2$" + arSalt, "$argon2id$19$m=4096,t=3,p=2$" + arSalt + "$" + arHash,
	"$argon2id$v=19$m=4096,t=3$" + arSalt + "$" + arHash, "$argon2id$v=19$t=3,m=4096,p=2$" + arSalt + "$" + arHash,
	"$argon2id$v=19$m=4096,t=3,p=2,x=1$" + arSalt + "$" + arHash, "$argon2id$v=19$m=-1,t=3,p=2$" + arSalt + "$" + arHash,
	"$argon2id$v=19$m=0,t=3,p=2$" + arSalt + "$" + arHash, "$argon2id$v=19$m=1048577,t=3,p=2$" + arSalt + "$" + arHash,
	"$argon2id$v=19$m=4096,t=0,p=2$" + arSalt + "$" + arHash, "$argon2id$v=19$m=4096,t=101,p=2$" + arSalt + "$" + arHash,
	"$argon2id$v=19$m=4096,t=3,p=0$" + arSalt + "$" + arHash, "$argon2id$v=19$m=4096,t=3,p=256$" + arSalt + "$" + arHash,
	"$argon2id$v=19$m=+4096,t=3,p=2$" + arSalt + "$" + arHash, "$argon2id$v=19$m=4096,t=3,p=2$" + arSalt + "==$" + arHash,
	"$argon2id$v=19$m=4096,t=3,p=2$$" + arHash, "$argon2id$v=19$m=4096,t=3,p=2$" + arSalt + "$",
	"$argon2id$v=19$m=4096,t=3,p=2$" + arSalt + "$" + arHash + "$", "$argon2id$v=19$m=4096,t=3,p=2$" + arSalt + "$" + rawOf1025,
	// any format
	"",
}

var unsupportedHashes = []string{
	"password", "user:secret", "$5$rounds=5000$abc$def", "$1$abc$def", "$$6$" + s6Salt + "$" + s6Hash,
	"$8$101$" + s7Salt + "$" + s7Hash, "$2x$05$" + bcTail, "$2$05$" + bcTail, "$3a$05$" + bcTail,
	"$argon2i$v=19$m=4096,t=3,p=2$" + arSalt + "$" + arHash, "$argon2d$v=19$m=4096,t=3,p=2$" + arSalt + "$" + arHash,
	"$argon2id$v=16$m=4096,t=3,p=2$" + arSalt + "$" + arHash, "PBKDF2$sha1$1000$" + pbSalt + "$" + pbHash,
	"PBKDF2$$1000$" + pbSalt + "$" + pbHash, "PBKDF2", "pbkdf2$sha512$1000$" + pbSalt + "$" + pbHash,
	"$pbkdf2-sha256$i=1,l=32$" + phSalt + "$" + phHash, "6$" + s6Salt + "$" + s6Hash,
}

func TestMalformed(t *testing.T) {
	for _, enc := range []SaltEncoding{SaltBase64, SaltUTF8} {
		v := Verifier{SaltEncoding: enc}
		for _, h := range malformedHashes {
			if enc == SaltUTF8 && strings.HasPrefix(h, "PBKDF2$sha512$1000$not base64!") {
				continue // a valid raw salt
			}
			err := v.Validate(h)
			require.ErrorIs(t, err, ErrMalformed, "Validate(%q) with %s salts", h, enc)
			ok, err := v.Verify(h, []byte("password"))
			assert.False(t, ok)
			require.ErrorIs(t, err, ErrMalformed, "Verify(%q)", h)
			assertQuiet(t, err, h)
		}
	}
	v := Verifier{SaltEncoding: SaltUTF8}
	err := v.Validate("PBKDF2$sha512$1000$" + longUTF8 + "$" + pbHash)
	require.ErrorIs(t, err, ErrMalformed)
}

func TestUnsupported(t *testing.T) {
	for _, h := range unsupportedHashes {
		ok, err := Verifier{}.Verify(h, []byte("password"))
		assert.False(t, ok)
		require.ErrorIs(t, err, ErrUnsupported, "Verify(%q)", h)
		assert.NotErrorIs(t, err, ErrMalformed)
		assertQuiet(t, err, h)
	}
	bad := Verifier{SaltEncoding: "hex"}
	_, err := bad.Verify("PBKDF2$sha512$100000$"+pbSalt+"$"+pbHash, []byte("test-password"))
	require.ErrorIs(t, err, ErrUnsupported)
	// Formats without a go-auth salt setting do not care.
	require.NoError(t, bad.Validate("$7$101$"+s7Salt+"$"+s7Hash))
}

// TestLimitsInclusive checks the largest accepted parameters, without
// running the computations they would cost.
func TestLimitsInclusive(t *testing.T) {
	var v Verifier
	for _, h := range []string{
		"$7$10000000$" + s7Salt + "$" + s7Hash,
		"PBKDF2$sha512$10000000$" + pbSalt + "$" + b64Of32,
		"$pbkdf2-sha512$i=5000000,l=65$" + phSalt + "$" + base64.RawStdEncoding.EncodeToString(make([]byte, 65)),
		"$2b$16$" + bcTail,
		"$argon2id$v=19$m=1048576,t=2,p=255$" + arSalt + "$" + arHash,
		"$argon2id$v=19$m=20971,t=100,p=255$" + arSalt + "$" + arHash,
		"$argon2id$v=19$m=1,t=1,p=1$" + arSalt + "$" + arHash,
		"$7$1$" + base64.StdEncoding.EncodeToString(make([]byte, 1024)) + "$" + s7Hash,
	} {
		assert.NoError(t, v.Validate(h), h)
	}
	assert.ErrorIs(t, v.Validate("$argon2id$v=19$m=1048576,t=3,p=1$"+arSalt+"$"+arHash), ErrMalformed, "memory times passes over the bound")
	assert.ErrorIs(t, v.Validate("$pbkdf2-sha512$i=5000001,l=65$"+phSalt+"$"+base64.RawStdEncoding.EncodeToString(make([]byte, 65))), ErrMalformed)
}

func TestFormatUnknown(t *testing.T) {
	for _, h := range unsupportedHashes {
		if strings.HasPrefix(h, "$argon2id$") {
			continue // named by its prefix, refused for its version
		}
		assert.Equal(t, "", Format(h), h)
	}
}

// assertQuiet checks that err carries the package prefix and quotes no salt
// or hash field of the stored hash.
func assertQuiet(t *testing.T, err error, stored string) {
	t.Helper()
	msg := err.Error()
	assert.True(t, strings.HasPrefix(msg, "hashes: "), msg)
	for _, field := range strings.Split(stored, "$") {
		if len(field) >= 16 { // salts and hashes; format names may be quoted
			assert.NotContains(t, msg, field)
		}
	}
}

// A digest shorter than 16 bytes is malformed where the format takes its
// length from the stored hash (argon2id, go-auth's PBKDF2 and PHC forms):
// atk82's argon2id line with a 1-byte digest was loaded, and about one
// password in 256 opened it ("p1491" among them). 16 bytes still load.
func TestShortDigestMalformed(t *testing.T) {
	raw := func(n int) string { return base64.RawStdEncoding.EncodeToString(make([]byte, n)) }
	std := func(n int) string { return base64.StdEncoding.EncodeToString(make([]byte, n)) }
	v := Verifier{}
	// atk82's line: its 1-byte digest "AA"; p1491 matched it before.
	atk82 := "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$AA"
	require.ErrorIs(t, v.Validate(atk82), ErrMalformed)
	ok, err := v.Verify(atk82, []byte("p1491"))
	require.False(t, ok, "a 1-byte digest opened to p1491")
	require.ErrorIs(t, err, ErrMalformed)
	assertQuiet(t, err, atk82)
	for _, n := range []int{1, 8, 15, 16} {
		for _, h := range []string{
			"$argon2id$v=19$m=64,t=1,p=1$" + arSalt + "$" + raw(n),
			"PBKDF2$sha512$1000$" + pbSalt + "$" + std(n),
			"PBKDF2$sha256$1000$" + pbSalt + "$" + std(n),
			"$pbkdf2-sha512$i=1000,l=" + strconv.Itoa(n) + "$" + phSalt + "$" + raw(n),
		} {
			err := v.Validate(h)
			if n < 16 {
				require.ErrorIs(t, err, ErrMalformed, "a %d-byte digest: %q", n, h)
				assert.Contains(t, err.Error(), "shorter than 16 bytes")
			} else {
				require.NoError(t, err, "a 16-byte digest: %q", h)
			}
		}
	}
}
