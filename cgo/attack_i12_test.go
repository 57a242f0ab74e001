package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// A kick that a callback may not run (left by the drainLogs of an ACL
// check or a DISCONNECT) brings the next TICK into Go, which runs it: it
// does not wait for unrelated work. (Log lines and publishes need the
// broker's symbols, absent from the test binary.)
func TestAttackI12LeftWorkBringsNextTick(t *testing.T) {
	const noInstance = 0
	tickFromBroker(noInstance)
	tickFromBroker(noInstance) // idle now

	for _, tc := range []struct {
		name  string
		queue func()
	}{
		{"kick left by drainLogs", func() { enqueueKick(12345, 1, "gone"); drainLogs() }},
	} {
		// Clear the flag as a TICK would, then queue.
		tickFromBroker(noInstance)
		tc.queue()
		reload.Reloaded() // behind C's back: only a TICK that enters Go closes it
		tickFromBroker(noInstance)
		assert.False(t, walkOpen(), "%s: the next TICK stayed out of Go", tc.name)
		logs.mu.Lock()
		n := len(logs.lines)
		logs.mu.Unlock()
		if tc.name == "kick left by drainLogs" {
			assert.Zero(t, n, "%s: drained by the TICK", tc.name)
		}
	}
}
