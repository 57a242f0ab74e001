package plugin

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
)

// cmac is AES-CMAC (RFC 4493, NIST SP 800-38B): a PRF with a 128-bit
// output under the AES key, here the verification cache's secret (32 bytes:
// AES-256). It replaced HMAC-SHA256 in the cache (issue 12): for a username
// and password up to 47 bytes together HMAC-SHA256 costs two SHA-256
// blocks, about 5 k instructions of the broker thread per cache hit where
// SHA-256 has no instructions of its own (it has them on the CPUs with
// SHA-NI, and callgrind hides them), AES-CMAC two to three AES blocks,
// which AES-NI does in a few dozen instructions. The entry keeps all 128
// bits, where it kept the first 128 of HMAC's 256: a password other than
// the one verified matches with a chance of 2⁻¹²⁸ a try either way, and the
// cache still holds nothing a password can be checked against offline
// without the secret.
//
// Not safe for concurrent use: the cache uses it under its lock. Its
// buffers are its own, so that a sum allocates nothing (bytes handed to the
// cipher.Block interface escape to the heap).
type cmac struct {
	b      cipher.Block
	k1, k2 [aes.BlockSize]byte
	x      []byte // the chaining value, aes.BlockSize bytes
}

// newCMAC keys AES-CMAC with key (16, 24 or 32 bytes).
func newCMAC(key []byte) *cmac {
	b, err := aes.NewCipher(key)
	if err != nil {
		panic("cmac: " + err.Error())
	}
	m := &cmac{b: b, x: make([]byte, aes.BlockSize)}
	// The subkeys (RFC 4493 2.3): L = AES(0), K1 = 2·L, K2 = 2·K1 in GF(2¹²⁸).
	b.Encrypt(m.x, m.x)
	m.k1 = double([aes.BlockSize]byte(m.x))
	m.k2 = double(m.k1)
	clear(m.x)
	return m
}

// double is multiplication by x in GF(2¹²⁸) as CMAC defines it: a shift
// left by one bit, and the constant R = 0x87 added when the top bit fell
// out (in constant time).
func double(in [aes.BlockSize]byte) [aes.BlockSize]byte {
	var out [aes.BlockSize]byte
	carry := in[0] >> 7
	for i := 0; i < aes.BlockSize-1; i++ {
		out[i] = in[i]<<1 | in[i+1]>>7
	}
	out[aes.BlockSize-1] = in[aes.BlockSize-1]<<1 ^ byte(subtle.ConstantTimeSelect(int(carry), 0x87, 0))
	return out
}

// sum returns the AES-CMAC of msg (RFC 4493 2.4).
func (m *cmac) sum(msg []byte) [aes.BlockSize]byte {
	x := m.x[:aes.BlockSize]
	zeroBlock(x)
	// Every block but the last: CBC with a zero IV.
	for len(msg) > aes.BlockSize {
		xorBlock(x, msg)
		m.b.Encrypt(x, x)
		msg = msg[aes.BlockSize:]
	}
	// The last block: whole (and not empty), with K1; else padded with
	// 10...0, with K2.
	if len(msg) == aes.BlockSize {
		xorBlock(x, msg)
		xorBlock(x, m.k1[:])
	} else {
		for i, b := range msg {
			x[i] ^= b
		}
		x[len(msg)] ^= 0x80
		xorBlock(x, m.k2[:])
	}
	m.b.Encrypt(x, x)
	out := [aes.BlockSize]byte(x)
	zeroBlock(x)
	return out
}

// xorBlock sets dst's first 16 bytes to dst XOR src (both at least 16
// bytes), in two 64-bit words: subtle.XORBytes, for any length, cost a
// cache hit about 170 instructions of the broker thread in its three to
// four calls (issue 12). Constant time, as any XOR.
func xorBlock(dst, src []byte) {
	_, _ = dst[15], src[15]
	binary.LittleEndian.PutUint64(dst, binary.LittleEndian.Uint64(dst)^binary.LittleEndian.Uint64(src))
	binary.LittleEndian.PutUint64(dst[8:], binary.LittleEndian.Uint64(dst[8:])^binary.LittleEndian.Uint64(src[8:]))
}

// zeroBlock clears b's first 16 bytes.
func zeroBlock(b []byte) {
	binary.LittleEndian.PutUint64(b, 0)
	binary.LittleEndian.PutUint64(b[8:], 0)
}
