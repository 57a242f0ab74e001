package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestAtk15PulseEarlyInTheSlowWait: README, Known limits: "A stranger's
// refused CONNECTs can put the heap's release off, by 10 s at most below
// 4 MB a second of allocation". A stranger's trickle (300 KB a tick)
// starts the slow wait; half a second in, a pulse of 40 MB (330 refused
// CONNECTs with 60 000-byte client IDs and usernames) in four ticks; then
// the trickle again. The wait judged its whole first 10 s, pulse included,
// found it over 1 MB a tick on average and began again from nothing at
// the next tick: the release came 19.5 s after the pulse's end, while the
// stranger allocated 2.1 MB a second on average over those 20 s. Judged
// on the last 10 s (a window sliding tick by tick), it comes once the
// pulse has left the window: 10 s after the pulse.
func TestAtk15PulseEarlyInTheSlowWait(t *testing.T) {
	f := &fakeHeap{at: time.Unix(1e9, 0), took: 2 * time.Millisecond}
	f.s = heapSample{allocs: 100 << 20, free: 1 << 20, inUse: 30 << 20, live: 10 << 20}
	r := f.release()
	f.at = f.at.Add(releaseBackoffMax)
	for i := 0; i < 4; i++ {
		require.False(t, f.tick(r, 4<<20), "a release during the devices' burst")
	}
	const trickle = 300 << 10
	start := f.at
	var total uint64
	var pulseEnd time.Time
	for i := 0; ; i++ {
		d := uint64(trickle)
		if i >= 2 && i < 6 {
			d = 40 << 20 / 4
		}
		total += d
		if f.tick(r, d) {
			break
		}
		if i == 5 {
			pulseEnd = f.at
		}
		require.Less(t, f.at.Sub(start), time.Minute, "no release in a minute of a trickle with one pulse")
	}
	t.Logf("release %v after the pulse's end; the stranger's average %.2f MB/s over 20 s", f.at.Sub(pulseEnd), float64(total)/(1<<20)/20)
	assert.LessOrEqual(t, f.at.Sub(pulseEnd), releaseSlowFor+releaseTick, "README: the release put off by 10 s at most below 4 MB a second")
}
