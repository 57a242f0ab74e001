package hashes

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A password longer than the hash's block is hashed before PBKDF2, as HMAC
// hashes such a key: the same result, checked here against refPBKDF2 (which
// takes the password whole) at the block's edges and at MQTT's longest, in
// mosquitto_passwd's and go-auth's formats. And a 60 000-byte password no
// longer costs two copies of itself (120 KB: crypto/pbkdf2 took it as a
// string and hmac.New copied it): a stranger's refused CONNECTs with such
// passwords at 10 a second kept the heap's release after a burst away.
// (That such a password's hash passes for it too is PBKDF2-HMAC's own
// property, with or without this; a 64-byte hash is as hard to guess.)
func TestPBKDF2LongPasswords(t *testing.T) {
	salt := []byte("0123456789abcdef")
	for _, alg := range []string{"sha512", "sha256"} {
		block := 128
		h := sha512New
		if alg == "sha256" {
			block, h = 64, sha256New
		}
		for _, n := range []int{block - 1, block, block + 1, 65535} {
			pw := strings.Repeat("p", n-1) + "é"[:1] // ends in a lone byte: bytes, not text
			encs := []string{goAuthPBKDF2(alg, pw, salt, 10, 32, false)}
			if alg == "sha512" {
				encs = append(encs, "$7$10$"+base64.StdEncoding.EncodeToString(salt)+"$"+
					base64.StdEncoding.EncodeToString(refPBKDF2(h, []byte(pw), salt, 10, 64)))
			}
			for _, enc := range encs {
				name := fmt.Sprintf("%s %s %d bytes", Format(enc), alg, n)
				ok, err := Verifier{}.Verify(enc, []byte(pw))
				require.NoError(t, err, name)
				assert.True(t, ok, name)
				ok, err = Verifier{}.Verify(enc, []byte(pw[:n-1]+"x"))
				require.NoError(t, err, name)
				assert.False(t, ok, name+": another password of the same length")
			}
		}
	}
	enc := "$7$10$" + base64.StdEncoding.EncodeToString(salt) + "$" + base64.StdEncoding.EncodeToString(refPBKDF2(sha512New, []byte("x"), salt, 10, 64))
	long := []byte(strings.Repeat("z", 60000))
	n := testing.AllocsPerRun(20, func() { _, _ = Verifier{}.Verify(enc, long) })
	res := testing.Benchmark(func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			_, _ = Verifier{}.Verify(enc, long)
		}
	})
	bytes := uint64(res.AllocedBytesPerOp())
	t.Logf("a 60 000-byte password's check: %.0f allocations, %d bytes", n, bytes)
	assert.Less(t, bytes, uint64(4096), "the password copied")
}
