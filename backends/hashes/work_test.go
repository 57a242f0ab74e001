package hashes

import (
	"encoding/base64"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Work ranks hashes as their verification time does.
func TestWorkRanksLikeTime(t *testing.T) {
	if testing.Short() {
		t.Skip("times real hash runs")
	}
	var v Verifier
	hs := map[string]string{}
	for _, base := range []string{
		"$7$101$" + b64(12) + "$" + b64(64),
		"PBKDF2$sha512$20000$" + b64(16) + "$" + b64(32),
		"PBKDF2$sha256$20000$" + b64(16) + "$" + b64(32),
	} {
		d, err := v.DummyLike(base)
		require.NoError(t, err)
		hs[base[:8]] = d
	}
	bc, err := v.DummyLike("$2a$08$" + "abcdefghijklmnopqrstuu" + "abcdefghijklmnopqrstuvwxyz01234")
	require.NoError(t, err)
	hs["bcrypt8"] = bc
	type m struct {
		work float64
		took time.Duration
	}
	got := map[string]m{}
	for name, h := range hs {
		w, err := v.Work(h)
		require.NoError(t, err)
		start := time.Now()
		for i := 0; i < 3; i++ {
			_, _ = v.Verify(h, []byte("x"))
		}
		got[name] = m{w, time.Since(start) / 3}
	}
	for a, ma := range got {
		for b, mb := range got {
			// Only pairs whose times differ by more than 2x: Work must order them alike.
			if ma.took > 2*mb.took {
				require.Greater(t, ma.work, mb.work, "%s (%s) vs %s (%s)", a, ma.took, b, mb.took)
			}
		}
	}
}

func b64(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i * 7)
	}
	return base64.StdEncoding.EncodeToString(b)
}
