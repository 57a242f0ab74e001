package hashes

import (
	"testing"

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
//
// The times are this machine's (without the race detector, which slows
// bcrypt more than argon2: a CI run under -race timed the bcrypt-10 at
// 1.03 s against the argon2id's 0.63 s); the test compares Work alone.
func TestReadmeAttack2WorkIgnoresArgon2Lanes(t *testing.T) {
	var v Verifier
	argon := "$argon2id$v=19$m=8,t=100,p=255$c2FsdHNhbHRzYWx0c2FsdA$" + "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	b, err := bcrypt.GenerateFromPassword([]byte("secret"), 10)
	require.NoError(t, err)
	wa, err := v.Work(argon)
	require.NoError(t, err)
	wb, err := v.Work(string(b))
	require.NoError(t, err)
	assert.Greater(t, wa, wb, "Work ranks argon2id m=8,t=100,p=255 (2 040 KiB a pass) below a bcrypt-10: the dummy would be the cheaper")
}
