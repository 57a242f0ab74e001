package plugin

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// b027e3b's CMAC (xorBlock, the partial last block byte by byte) against
// the reference for every key size, every length to 300 bytes, and inputs
// at every offset of a slice whose capacity ends with it: the message is
// only read, and the chaining value is cleared after each sum (no test
// held that: a second sum clears it first anyway).
func TestAtk23CMACEdgesAndCleared(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, kl := range []int{16, 24, 32} {
		key := make([]byte, kl)
		for i := range key {
			key[i] = byte(r.Uint32())
		}
		m := newCMAC(key)
		big := make([]byte, 320)
		for i := range big {
			big[i] = byte(r.Uint32())
		}
		keep := bytes.Clone(big)
		for off := range 9 {
			for n := 0; n <= 300; n++ {
				msg := big[off : off+n : off+n]
				got := m.sum(msg)
				require.Equal(t, refCMAC(t, key, msg), got[:], "key %d bytes, message at %d, %d bytes", kl, off, n)
				require.Equal(t, make([]byte, 16), m.x, "the chaining value cleared")
			}
		}
		require.Equal(t, keep, big, "the messages only read")
	}
}

// recentKeyIn (b027e3b's recentKeyOf, 648cb9a's kind apart), one call or the stream, on bytes of every value
// (the existing test repeats one letter): every pair of lengths to 140
// (both sides of recentKeyBuf), and longer ones at random.
func TestAtk23RecentKeyAnyBytes(t *testing.T) {
	stream := streamRecentKey
	r := rand.New(rand.NewPCG(5, 6))
	rb := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return string(b)
	}
	check := func(u, s string) {
		w := stream(u, s)
		require.Equal(t, w, recentKey(u, s), "username %d bytes, source %d", len(u), len(s))
		var buf [recentKeyBuf]byte
		require.Equal(t, w, recentKeyIn(buf[:0], u, "", []byte(s)), "username %d bytes, source %d as bytes", len(u), len(s))
		if len(s) > 0 { // the source's start apart, as succeededFrom passes it
			k := len(s) / 3
			require.Equal(t, w, recentKeyIn(buf[:0], u, s[:k], s[k:]), "username %d bytes, source %d split at %d", len(u), len(s), k)
		}
	}
	for ul := 0; ul <= 140; ul++ {
		for sl := 0; sl <= 140; sl++ {
			check(rb(ul), rb(sl))
		}
	}
	for range 500 {
		check(rb(r.IntN(600)), rb(r.IntN(600)))
	}
}
