package plugin

import (
	"fmt"
	"testing"
	"time"
)

// TestHostileClaimBadHashLinesPastTheirBound: README: an unusable stored
// hash is "logged as an error, at most once per 10 minutes per user". A
// migration leaves 5 000 users with hashes of a format the plugin cannot
// use, and a client (or the fleet itself) cycles through them twice within
// a minute. Measured on 2f1a7be: 10 000 lines, not 5 000; the remembered
// usernames (badHashMax, 4 096) are forgotten all at once when full, so
// past them every attempt writes a line again, without end.
func TestHostileClaimBadHashLinesPastTheirBound(t *testing.T) {
	var b badHashLines
	now := time.Unix(1_800_000_000, 0)
	lines := 0
	for pass := 0; pass < 2; pass++ {
		for i := 0; i < 5000; i++ {
			if b.due(fmt.Sprint("device-", i), now.Add(time.Duration(pass)*30*time.Second)) {
				lines++
			}
		}
	}
	if lines > 5000 {
		t.Fatalf("%d lines for 5000 users in a minute, want at most one per user", lines)
	}
	if len(b.last) > badHashMax {
		t.Fatalf("%d usernames remembered, bound %d", len(b.last), badHashMax)
	}
	// Ten minutes on, the lines are due again (up to the bound).
	later := 0
	for i := 0; i < 5000; i++ {
		if b.due(fmt.Sprint("device-", i), now.Add(11*time.Minute)) {
			later++
		}
	}
	if later != badHashMax {
		t.Fatalf("%d lines 11 minutes later, want %d", later, badHashMax)
	}
}
