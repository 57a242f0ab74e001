package plugin

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/mosquitto-guard/mosquitto-guard/backends/hashes"
)

// noteHash is called at once from the replica's sync goroutine (the load's
// seeding, a user key changed) and from the broker thread (a known user's
// check): a load, compare and store that is not one atomic step lets a
// cheaper hash overwrite a more expensive one stored meanwhile, and the
// unknown users' dummy then costs less than the most expensive known user.
func TestNoteHashConcurrentKeepsTheMostExpensive(t *testing.T) {
	cheap, err := bcrypt.GenerateFromPassword([]byte("x"), 4)
	require.NoError(t, err)
	dear, err := bcrypt.GenerateFromPassword([]byte("x"), 12)
	require.NoError(t, err)
	lost := 0
	for trial := 0; trial < 2000; trial++ {
		cr := &credentials{verifier: hashes.Verifier{}}
		var wg sync.WaitGroup
		start := make(chan struct{})
		for _, h := range []string{string(cheap), string(dear)} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				cr.noteHash(h)
			}()
		}
		close(start)
		wg.Wait()
		if *cr.lastHash.Load() != string(dear) {
			lost++
		}
	}
	require.Zero(t, lost, "of 2000 trials, %d ended with the cheap hash as the unknown users' model", lost)
}
