package keys

import (
	"crypto/sha256"
	"encoding/hex"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// Hostile test of c714a05, which hashes a long client ID on the broker
// thread at each CONNECT, DISCONNECT and refusal (and known sources at each
// success): Tracking copied its input ([]byte(s)) to hash it, 65 KB of
// garbage a call for a 60 000-byte client ID, 4 objects; a cached CONNECT
// and DISCONNECT with such an ID allocated 329 KB (197 KB before c714a05),
// where the README counts what a stranger allocates at 128 KB a CONNECT.
// Now one object, the form itself.
func TestH13TrackingCopiesNothing(t *testing.T) {
	for _, n := range []int{257, 60000} {
		s := strings.Repeat("x", n)
		sum := sha256.Sum256([]byte(s))
		assert.Equal(t, "sha256:"+hex.EncodeToString(sum[:]), Tracking(s))
		var out string
		allocs := testing.AllocsPerRun(50, func() { out = Tracking(s) })
		assert.LessOrEqual(t, allocs, 1.0, "%d bytes: the form only", n)
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		for i := 0; i < 100; i++ {
			out = Tracking(s)
		}
		runtime.ReadMemStats(&m1)
		bytes := (m1.TotalAlloc - m0.TotalAlloc) / 100
		assert.Len(t, out, 71)
		t.Logf("Tracking of %d bytes: %.0f objects, %d bytes", n, allocs, bytes)
		assert.LessOrEqual(t, bytes, uint64(96), "%d bytes: the input copied", n)
	}
	short := "sha256:abc"
	sum := sha256.Sum256([]byte(short))
	assert.Equal(t, "sha256:"+hex.EncodeToString(sum[:]), Tracking(short))
	assert.Equal(t, "dev-1", Tracking("dev-1"))
}
