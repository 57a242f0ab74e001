package plugin

import (
	"encoding/binary"
	"hash/maphash"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// recentKeyOf hashes a pair in one call when it fits recentKeyBuf and
// through a maphash.Hash otherwise: both must give the key the stream
// gives (what succeeded stores, what lookups and tests ask with), at every
// length around the buffer's end, for a source as string and as bytes.
func TestRecentKeyOneCallMatchesStream(t *testing.T) {
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
	for _, ulen := range []int{0, 1, 10, 60, recentKeyBuf - 8, recentKeyBuf, 300} {
		for slen := 0; slen <= recentKeyBuf+8; slen++ {
			u, s := strings.Repeat("u", ulen), strings.Repeat("s", slen)
			want := stream(u, s)
			require.Equal(t, want, recentKey(u, s), "username %d bytes, source %d", ulen, slen)
			require.Equal(t, want, noteKey(u, []byte(s)), "username %d bytes, source %d as bytes", ulen, slen)
		}
	}
	// The length comes first: no username and source run into another pair's.
	require.NotEqual(t, recentKey("ab", "c"), recentKey("a", "bc"))
}
