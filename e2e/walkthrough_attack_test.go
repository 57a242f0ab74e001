package e2e

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestReadmeWalkthroughIsTrue compares each command's output with the
// README's through sameOutput. These outputs differ from what the README
// shows in what a reader relies on, and sameOutput must say so.
func TestAttackSameOutputTellsWhatMatters(t *testing.T) {
	refusal := []string{"Connection error: Connection Refused: not authorised.", "Error: The connection was refused."}

	// DEL of alice's ban: 0 means there was no ban to lift.
	assert.False(t, sameOutput([]string{"(integer) 1"}, "(integer) 0\n"), "DEL deleted nothing, the README says it lifted the ban")
	// TTL: -2 means the key does not exist, -1 that it never expires.
	assert.False(t, sameOutput([]string{"(integer) 57"}, "(integer) -2\n"), "TTL of a missing key, the README shows a ban's")
	assert.False(t, sameOutput([]string{"(integer) 57"}, "(integer) -1\n"), "a ban without expiry, the README shows one of a minute")

	// "... (four times)": the loop refused once, then printed something else.
	shown := append(append([]string{}, refusal...), "... (four times)")
	assert.False(t, sameOutput(shown, refusal[0]+"\n"+refusal[1]+"\n"), "one refusal, the README shows four")
	assert.False(t, sameOutput(shown, refusal[0]+"\n"+refusal[1]+"\nConnection error: Connection Refused: bad user name or password.\nError: The connection was refused.\n"),
		"another error after the first, the README shows the same four times")
}
