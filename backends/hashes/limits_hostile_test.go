package hashes

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The limits "keep one verification from tying up the broker's thread", and
// bcrypt's is "about as slow as 10 000 000 PBKDF2-SHA512 iterations". The
// argon2id ones were not: 1 GiB times 100 passes, 24 times bcrypt-16's Work
// (about 330 s on a 2020s core, against 5 s; 256 MiB one pass took 0.83 s).
// The redis backend checks every unknown user against a dummy of its most
// expensive user's class, so one such hash (an operator's typo: t=100, or m
// in bytes) made any unknown username hold the broker thread for minutes.
// The costliest argon2id hash accepted must cost at most about as much as the
// costliest bcrypt one.
func TestArgon2LimitsCostAboutWhatTheOthersCost(t *testing.T) {
	v := Verifier{}
	b64 := base64.RawStdEncoding.EncodeToString
	bcrypt16 := "$2a$16$" + strings.Repeat("a", 53)
	wb, err := v.Work(bcrypt16)
	require.NoError(t, err)
	var worst float64
	for _, mt := range [][2]int{{maxArgonMemory, 1}, {maxArgonMemory, 2}, {maxArgonMemory, maxArgonTime}, {64 << 10, maxArgonTime}, {1 << 10, maxArgonTime}} {
		h := fmt.Sprintf("$argon2id$v=19$m=%d,t=%d,p=1$%s$%s", mt[0], mt[1], b64(make([]byte, 16)), b64(make([]byte, 32)))
		if w, err := v.Work(h); err == nil {
			worst = max(worst, w)
		}
	}
	assert.LessOrEqual(t, worst, 1.5*wb, "the costliest argon2id hash accepted is %.1f times bcrypt-16's Work", worst/wb)
}
