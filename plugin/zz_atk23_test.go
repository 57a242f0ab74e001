package plugin

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
)

// confirmDue's bound on what one hold of g.mu hashes (confirmHashMax)
// counted long client IDs only, but each confirmation also names the
// connection's principal (connOf: conflicts.Principal), and a username over
// keys.TrackingMax is SHA-256-hashed there, under g.mu, whole. 256 deferred
// connections with short client IDs and 64 KB usernames (backend defer, or
// anonymous clients the broker lets in with any username) took one hold:
// 16 MB hashed with the broker thread waiting on g.mu. Before the fix, the
// 16 below took one hold.
func TestAtk23ConfirmHoldCountsLongUsernames(t *testing.T) {
	cfg, err := config.Parse(map[string]string{"backend": "defer", "clientid_conflict": "flag"})
	require.NoError(t, err)
	g, err := NewWith(cfg, Output{Log: func(Level, string) {}}, Deps{Store: newFakeStore(), Counter: &fakeCounter{}, Conflicts: &liveWrites{live: map[string]string{}}})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	var mu sync.Mutex
	now := time.Now().Add(time.Hour) // ahead of confirmLoop's clock: only the test confirms
	g.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	const n, userLen = 16, 65535
	for i := range n {
		admitRC(g, rc(uintptr(i+1), fmt.Sprintf("dev-%04d", i), fmt.Sprintf("%04d", i)+strings.Repeat("u", userLen-4)), true)
	}
	mu.Lock()
	now = now.Add(2 * confirmDelay)
	mu.Unlock()
	holds := 0
	count := func() { holds++ }
	g.confirmHook.Store(&count)
	g.confirmDue()
	g.confirmHook.Store(nil)
	perHold := confirmHashMax/userLen + 1
	assert.GreaterOrEqual(t, holds, (n+perHold-1)/perHold, "holds of g.mu for %d deferred connections with %d-byte usernames", n, userLen)
	g.mu.Lock()
	defer g.mu.Unlock()
	assert.Empty(t, g.pending, "all confirmed")
}

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
	stream := func(username, source string) recentID {
		var h maphash.Hash
		h.SetSeed(recentSeed)
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(len(username)))
		h.Write(n[:])
		h.WriteString(username)
		h.WriteString(source)
		return recentIDOf(h.Sum64())
	}
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
