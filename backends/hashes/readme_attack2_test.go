package hashes

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"
)

// README, Automatic bans, Timing: "the files backend checks a dummy hash of
// the most expensive class (format and cost) in the file; the redis backend
// one of the most expensive class among the users its replica holds". The
// class is ranked by Work, which counts argon2id as memory x passes and
// ignores its lanes, though argon2 gives every lane at least 8 KiB
// (x/crypto/argon2 raises memory to 8 x p): m=8,t=100,p=255 really fills
// 2040 KiB a pass. Work ranks it at 3 200, far below a bcrypt-10 (276 480),
// while it takes some 260 ms against bcrypt-10's 72 ms: beside a bcrypt-10
// user, the dummy is the bcrypt-10 and that user is told apart from every
// absent one (no "mixes hash costs" warning either: Work calls it cheaper).
func TestReadmeAttack2WorkIgnoresArgon2Lanes(t *testing.T) {
	if testing.Short() {
		t.Skip("times real hashes")
	}
	var v Verifier
	argon := "$argon2id$v=19$m=8,t=100,p=255$c2FsdHNhbHRzYWx0c2FsdA$" + "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	b, err := bcrypt.GenerateFromPassword([]byte("secret"), 10)
	require.NoError(t, err)
	timed := func(h string) time.Duration {
		best := time.Duration(1 << 62)
		for i := 0; i < 3; i++ {
			start := time.Now()
			_, err := v.Verify(h, []byte("guess"))
			require.NoError(t, err)
			best = min(best, time.Since(start))
		}
		return best
	}
	ta, tb := timed(argon), timed(string(b))
	wa, err := v.Work(argon)
	require.NoError(t, err)
	wb, err := v.Work(string(b))
	require.NoError(t, err)
	t.Logf("argon2id m=8,t=100,p=255: %v, Work %.0f; bcrypt-10: %v, Work %.0f", ta, wa, tb, wb)
	require.Greater(t, ta, 2*tb, "the argon2id hash is not the more expensive here")
	assert.Greater(t, wa, wb, "Work ranks the argon2id hash (%v) below the bcrypt-10 (%v): the dummy would be the cheaper", ta, tb)
}
