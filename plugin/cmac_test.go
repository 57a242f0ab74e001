package plugin

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/hex"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	require.NoError(t, err)
	return b
}

// RFC 4493 section 4: the subkeys and the four examples (an empty message,
// one whole block, a padded last block, four whole blocks).
func TestCMACRFC4493(t *testing.T) {
	m := newCMAC(unhex(t, "2b7e151628aed2a6abf7158809cf4f3c"))
	assert.Equal(t, unhex(t, "fbeed618357133667c85e08f7236a8de"), m.k1[:], "K1")
	assert.Equal(t, unhex(t, "f7ddac306ae266ccf90bc11ee46d513b"), m.k2[:], "K2")
	msg := unhex(t, "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"+
		"30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710")
	for _, c := range []struct {
		n    int
		want string
	}{
		{0, "bb1d6929e95937287fa37d129b756746"},
		{16, "070a16b46b4d4144f79bdd9dd04a287c"},
		{40, "dfa66747de9ae63030ca32611497c827"},
		{64, "51f0bebf7e3b9d92fc49741779363cfe"},
	} {
		got := m.sum(msg[:c.n])
		assert.Equal(t, unhex(t, c.want), got[:], "%d bytes", c.n)
		assert.Equal(t, unhex(t, c.want), refCMAC(t, unhex(t, "2b7e151628aed2a6abf7158809cf4f3c"), msg[:c.n]), "the reference, %d bytes", c.n)
	}
}

// refCMAC is CMAC written out on crypto/cipher's CBC mode: the last block of
// the CBC encryption (zero IV) of the message whose last block is xored with
// K1 (whole) or padded and xored with K2.
func refCMAC(t *testing.T, key, msg []byte) []byte {
	b, err := aes.NewCipher(key)
	require.NoError(t, err)
	l := make([]byte, 16)
	b.Encrypt(l, l)
	dbl := func(in []byte) []byte {
		out := make([]byte, 16)
		for i := 0; i < 15; i++ {
			out[i] = in[i]<<1 | in[i+1]>>7
		}
		out[15] = in[15] << 1
		if in[0]&0x80 != 0 {
			out[15] ^= 0x87
		}
		return out
	}
	k1 := dbl(l)
	k2 := dbl(k1)
	m := append([]byte(nil), msg...)
	k := k1
	if len(m) == 0 || len(m)%16 != 0 {
		m = append(m, 0x80)
		for len(m)%16 != 0 {
			m = append(m, 0)
		}
		k = k2
	}
	for i := range k {
		m[len(m)-16+i] ^= k[i]
	}
	out := make([]byte, len(m))
	cipher.NewCBCEncrypter(b, make([]byte, 16)).CryptBlocks(out, m)
	return out[len(out)-16:]
}

// AES-256 (the cache's 32-byte secret), every length from 0 to 100 bytes,
// against the reference.
func TestCMACMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(r.Uint32())
	}
	m := newCMAC(key)
	for n := 0; n <= 100; n++ {
		msg := make([]byte, n)
		for i := range msg {
			msg[i] = byte(r.Uint32())
		}
		got := m.sum(msg)
		require.Equal(t, refCMAC(t, key, msg), got[:], "%d bytes", n)
		require.Equal(t, got, m.sum(msg), "a second sum, %d bytes: no state carried over", n)
	}
}
