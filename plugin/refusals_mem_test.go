package plugin

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// The throttled usernames whose refusal was logged are remembered by a
// copy of their tracking form: a username is whatever a stranger claims,
// one allocation with its client ID, and kept as it was an entry kept both
// (2 000 usernames, each a part of a 60 000-byte string: 117 MB).
func TestThrottleLogKeepsNoConnectStrings(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes what the heap holds")
	}
	var tl throttleLog
	const n = 2000
	now := time.Now()
	before := liveHeap()
	for i := 0; i < n; i++ {
		ids := strings.Repeat("c", 60000) + fmt.Sprintf("nobody-%d", i)
		assert.True(t, tl.first(ids[60000:], now, time.Minute))
	}
	held := liveHeap() - before
	t.Logf("%d usernames: %.0f bytes of heap each", n, float64(held)/n)
	assert.Less(t, held, int64(n*512))
	// Still one line an episode, for short and long usernames alike.
	assert.False(t, tl.first("nobody-7", now.Add(time.Second), time.Minute))
	assert.True(t, tl.first("nobody-7", now.Add(2*time.Minute), time.Minute), "a new episode")
	long := strings.Repeat("u", 70000)
	assert.True(t, tl.first(long, now, time.Minute))
	assert.False(t, tl.first(strings.Clone(long), now, time.Minute))
	assert.True(t, tl.first(long[:69999], now, time.Minute), "another long username")
}
