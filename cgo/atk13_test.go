package main

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Attack on d228753: whatever the workers' TrimDue does (flapping at every
// tick, stuck true, stuck false) and however bursts and quiet ticks
// alternate, a release that is due (a burst behind it, enough to give
// back, past its backoff) comes at its first quiet tick when nothing is
// held, and never later than releaseWaitMax after the first quiet tick it
// was due at; and never while the workers hold a burst's buffers before
// that. Checked against a model over random sequences (fake heap, clock).
func TestAtk13ReleaseWaitBoundUnderFlapping(t *testing.T) {
	for seed := uint64(0); seed < 300; seed++ {
		rng := rand.New(rand.NewPCG(seed, 13))
		f := &fakeHeap{at: time.Unix(1e9, 0), took: 2 * time.Millisecond}
		f.s = heapSample{allocs: 100 << 20, free: 1 << 20, inUse: 30 << 20, live: 10 << 20}
		r := f.release()
		busy := false
		mode := rng.IntN(4) // 0 flaps every tick, 1 stuck true, 2 stuck false, 3 random runs
		r.busy = func() bool { return busy }
		var dueSince time.Time // the first quiet tick the release was due at, in this run of quiet ticks
		for i := 0; i < 400; i++ {
			switch mode {
			case 0:
				busy = !busy
			case 1:
				busy = true
			case 2:
				busy = false
			case 3:
				if rng.IntN(5) == 0 {
					busy = !busy
				}
			}
			var alloc uint64
			if rng.IntN(3) == 0 {
				alloc = uint64(releaseQuiet) + uint64(rng.IntN(4<<20))
			} else {
				alloc = uint64(rng.IntN(releaseQuiet))
			}
			churn, next := r.churn+alloc, r.next
			at := f.at.Add(releaseTick)
			due := alloc < releaseQuiet && churn >= releaseChurn && !at.Before(next)
			if !due {
				if alloc >= releaseQuiet {
					dueSince = time.Time{}
				}
			} else if dueSince.IsZero() {
				dueSince = at
			}
			got := f.tick(r, alloc)
			want := due && (!busy || at.Sub(dueSince) >= releaseWaitMax)
			require.Equal(t, want, got, "seed %d mode %d tick %d: busy %v, due for %v", seed, mode, i, busy, at.Sub(dueSince))
			if got {
				dueSince = time.Time{}
			}
		}
	}
}
