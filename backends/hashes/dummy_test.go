package hashes

import (
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

type dummyCase struct {
	name     string
	enc      SaltEncoding
	password string
	encoded  string
	class    string // "" to skip the literal check
}

// dummyCases covers every supported format and form, each hash with the
// password that matches it.
func dummyCases(t *testing.T) []dummyCase {
	cases := []dummyCase{
		{"$6$", "", "password", mosquittoVectors[0].encoded, "$6$<12>$<64>"},
		{"$7$", "", "password", mosquittoVectors[7].encoded, "$7$101$<12>$<64>"},
		{"$7$ leading zero", "", "password", strings.Replace(mosquittoVectors[7].encoded, "$101$", "$0101$", 1), "$7$101$<12>$<64>"},
	}
	classes := map[string]string{
		"pbkdf2 sha512 go-auth defaults": "PBKDF2$sha512$100000$<16>$<32>",
		"pbkdf2 sha256 unicode":          "PBKDF2$sha256$901$<12>$<24>",
		"pbkdf2 utf8 salt":               "PBKDF2$sha512$1000$<16 utf8>$<64>",
		"pbkdf2 phc":                     "$pbkdf2-sha512$i=10000,l=32$<16>$<32>",
		"pbkdf2 phc no leading $":        "pbkdf2-sha512$i=10000,l=32$<16>$<32>",
		"bcrypt 2a":                      "$2a$05$<16><23>",
		"bcrypt 2y":                      "$2y$04$<16><23>",
		"argon2id go-auth defaults":      "$argon2id$v=19$m=4096,t=3,p=2$<16>$<32>",
	}
	for _, g := range goAuthVectors {
		cases = append(cases, dummyCase{g.name, g.enc, g.password, g.encoded, classes[g.name]})
	}

	rawSalt := []byte("SALTsalt:12 #4ab") // go-auth utf-8 salts are raw text
	b64Salt := randomBytes(16)
	for _, tc := range []struct {
		alg  string
		utf8 bool
	}{{"sha256", false}, {"sha256", true}, {"sha512", false}} {
		salt := b64Salt
		v := SaltBase64
		if tc.utf8 {
			salt, v = rawSalt, SaltUTF8
		}
		cases = append(cases, dummyCase{"PBKDF2$" + tc.alg + " utf8=" + strconv.FormatBool(tc.utf8), v, "gen-pw",
			goAuthPBKDF2(tc.alg, "gen-pw", salt, 2000, 32, tc.utf8), ""})
	}
	key := refPBKDF2(sha512New, []byte("phc-pw"), rawSalt, 300, 48)
	cases = append(cases, dummyCase{"$pbkdf2-sha512$ utf8", SaltUTF8, "phc-pw",
		"$pbkdf2-sha512$i=300,l=48$" + string(rawSalt) + "$" + base64.RawStdEncoding.EncodeToString(key),
		"$pbkdf2-sha512$i=300,l=48$<16 utf8>$<48>"})

	for _, prefix := range []string{"$2a$", "$2b$", "$2y$"} {
		h, err := bcrypt.GenerateFromPassword([]byte("bc-pw"), 6)
		require.NoError(t, err)
		cases = append(cases, dummyCase{"bcrypt " + prefix, "", "bc-pw", prefix + string(h[4:]), prefix + "06$<16><23>"})
	}

	salt := randomBytes(24)
	ak := argon2.IDKey([]byte("ar-pw"), salt, 2, 128, 3, 20)
	cases = append(cases, dummyCase{"argon2id generated", "", "ar-pw",
		fmt.Sprintf("$argon2id$v=19$m=128,t=2,p=3$%s$%s", base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(ak)),
		"$argon2id$v=19$m=128,t=2,p=3$<24>$<20>"})
	return cases
}

// saltAndDigest splits a hash's salt and digest fields out.
func saltAndDigest(encoded string) (string, string) {
	if Format(encoded) == "bcrypt" {
		return encoded[7:29], encoded[29:]
	}
	f := strings.Split(encoded, "$")
	return f[len(f)-2], f[len(f)-1]
}

// TestDummyLike: for every format, the dummy is of the same class (same
// format, parameters, lengths, form), validates, has a salt and digest of its
// own, never matches the password of the original nor any other, and is
// cached per class.
func TestDummyLike(t *testing.T) {
	for _, tc := range dummyCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			v := Verifier{SaltEncoding: tc.enc}
			ok, err := v.Verify(tc.encoded, []byte(tc.password))
			require.NoError(t, err)
			require.True(t, ok, "the test's own hash")

			class, err := v.Class(tc.encoded)
			require.NoError(t, err)
			if tc.class != "" {
				assert.Equal(t, tc.class, class)
			}
			s, d := saltAndDigest(tc.encoded)
			assert.NotContains(t, class, s, "a class holds no salt")
			assert.NotContains(t, class, d, "a class holds no digest")

			dummy, err := v.DummyLike(tc.encoded)
			require.NoError(t, err)
			require.NoError(t, v.Validate(dummy))
			assert.Equal(t, Format(tc.encoded), Format(dummy))
			dummyClass, err := v.Class(dummy)
			require.NoError(t, err)
			assert.Equal(t, class, dummyClass, dummy)

			ds, dd := saltAndDigest(dummy)
			assert.NotEqual(t, s, ds, "a fresh salt")
			assert.NotEqual(t, d, dd, "a fresh digest")
			assert.Equal(t, len(s), len(ds))

			for _, pw := range []string{tc.password, "", "password", "x"} {
				ok, err := v.Verify(dummy, []byte(pw))
				require.NoError(t, err)
				assert.False(t, ok, "dummy matched %q", pw)
			}

			again, err := v.DummyLike(tc.encoded)
			require.NoError(t, err)
			assert.Equal(t, dummy, again, "cached per class")
			fromDummy, err := v.DummyLike(dummy)
			require.NoError(t, err)
			assert.Equal(t, dummy, fromDummy, "same class, same dummy")
		})
	}
}

// TestDummyLikeSaltEncodingIsPartOfClass: the same go-auth PBKDF2 string
// read with base64 and with utf8 salts is two classes (different salt
// lengths and forms), and each dummy parses under its own Verifier.
func TestDummyLikeSaltEncodingIsPartOfClass(t *testing.T) {
	h := goAuthVectors[0].encoded // PBKDF2$sha512$100000$<base64 of 16 bytes>$...
	b64, utf8 := Verifier{}, Verifier{SaltEncoding: SaltUTF8}
	c1, err := b64.Class(h)
	require.NoError(t, err)
	c2, err := utf8.Class(h)
	require.NoError(t, err)
	assert.Equal(t, "PBKDF2$sha512$100000$<16>$<32>", c1)
	assert.Equal(t, "PBKDF2$sha512$100000$<24 utf8>$<32>", c2)
	d2, err := utf8.DummyLike(h)
	require.NoError(t, err)
	got, err := utf8.Class(d2)
	require.NoError(t, err)
	assert.Equal(t, c2, got)
}

func TestDummyLikeErrors(t *testing.T) {
	for _, h := range []string{"", "$7$0$" + s7Salt + "$" + s7Hash, "$2a$17$" + bcTail} {
		_, err := Verifier{}.DummyLike(h)
		require.ErrorIs(t, err, ErrMalformed)
		assertQuiet(t, err, h)
		_, err = Verifier{}.Class(h)
		require.ErrorIs(t, err, ErrMalformed)
	}
	for _, h := range unsupportedHashes {
		_, err := Verifier{}.DummyLike(h)
		require.ErrorIs(t, err, ErrUnsupported, h)
	}
}

func TestDefaultDummy(t *testing.T) {
	d := DefaultDummy()
	c, err := Verifier{}.Class(d)
	require.NoError(t, err)
	assert.Equal(t, "$7$101$<12>$<64>", c)
	_, s := saltAndDigest(defaultTemplate)
	_, ds := saltAndDigest(d)
	assert.NotEqual(t, s, ds, "random, not the all-zero template")
	ok, err := Verifier{}.Verify(d, nil)
	require.NoError(t, err)
	assert.False(t, ok)
}

// TestDummyCacheBounded: many classes, from many goroutines, never grow the
// cache past its bound, and every answer is still right.
func TestDummyCacheBounded(t *testing.T) {
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 1; i <= 3*maxDummyClasses; i++ {
				h := "$7$" + strconv.Itoa(i) + "$" + s7Salt + "$" + s7Hash
				d, err := Verifier{}.DummyLike(h)
				if err != nil {
					t.Error(err)
					return
				}
				if c, _ := (Verifier{}).Class(d); c != "$7$"+strconv.Itoa(i)+"$<12>$<64>" {
					t.Errorf("class %q for %d iterations", c, i)
					return
				}
			}
		}()
	}
	wg.Wait()
	dummies.Lock()
	n := len(dummies.byClass)
	dummies.Unlock()
	assert.LessOrEqual(t, n, maxDummyClasses)
	assert.Positive(t, n)
}

// BenchmarkDummyLike: a cached dummy costs a parse, not a hash run.
func BenchmarkDummyLike(b *testing.B) {
	h, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.DefaultCost)
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < b.N; i++ {
		if _, err := (Verifier{}).DummyLike(string(h)); err != nil {
			b.Fatal(err)
		}
	}
}
