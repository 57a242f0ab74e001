package plugin

import (
	"encoding/binary"
	"hash/maphash"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// streamRecentKey is recentKey as the stream computes it, piece by piece:
// the reference the one-call path must match.
func streamRecentKey(username, source string) recentID {
	var h maphash.Hash
	h.SetSeed(recentSeed)
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(username)))
	h.Write(n[:])
	h.WriteString(username)
	h.WriteString(source)
	return recentIDOf(h.Sum64())
}

// recentKeyIn hashes a pair in one call when it fits its buffer and
// through a maphash.Hash otherwise: both must give the key the stream
// gives (what succeeded stores, what lookups and tests ask with), at every
// length around the buffer's end, with the source's start (kind) apart or
// in the source, as string and as bytes.
func TestRecentKeyOneCallMatchesStream(t *testing.T) {
	stream := streamRecentKey
	var buf [recentKeyBuf]byte
	for _, ulen := range []int{0, 1, 10, 64, recentKeyBuf - 17, recentKeyBuf - 8, recentKeyBuf, 400} {
		for slen := 0; slen <= recentKeyBuf+8; slen++ {
			u, s := strings.Repeat("u", ulen), strings.Repeat("s", slen)
			want := stream(u, "clientid:"+s)
			require.Equal(t, want, recentKey(u, "clientid:"+s), "username %d bytes, source %d", ulen, slen)
			require.Equal(t, want, recentKeyIn(buf[:0], u, "clientid:", s), "username %d bytes, source %d apart", ulen, slen)
			require.Equal(t, want, recentKeyIn(buf[:0], u, "clientid:", []byte(s)), "username %d bytes, source %d as bytes", ulen, slen)
		}
	}
	// The length comes first: no username and source run into another pair's.
	require.NotEqual(t, recentKey("ab", "c"), recentKey("a", "bc"))
}

// Issue 12: a cache hit allocates nothing, whatever its client ID's and
// username's length: the known sources' keys are hashed from a buffer on
// the stack, or streamed. Before, the client ID's source was built in a
// 64-byte array, and a client ID over 55 bytes (a SHA-256 in hex: 64) made
// every success allocate it on the heap. (A client ID or username over
// keys.TrackingMax is kept as its hash, which keys.Tracking makes anew:
// one allocation, as before.)
func TestKnownSourcesLongIDsAllocateNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocations are counted without -race")
	}
	stop := make(chan struct{})
	defer close(stop)
	k := newKnownSources(knownDeps{max: 100, window: time.Hour, failWindow: time.Minute,
		spawn: func(string, func()) {}, stop: stop})
	now := time.Now()
	for _, ip := range []netip.Addr{netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")} {
		for _, ulen := range []int{5, 64, keys.TrackingMax} {
			for _, idLen := range []int{20, 56, 64, 100, keys.TrackingMax} {
				u, id := strings.Repeat("u", ulen), strings.Repeat("d", idLen)
				k.succeeded(u, ip, id, now)
				assert.Zero(t, testing.AllocsPerRun(50, func() { k.succeeded(u, ip, id, now) }),
					"a refresh: username %d bytes, client ID %d, %v", ulen, idLen, ip)
			}
		}
	}
}
