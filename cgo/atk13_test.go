package main

import (
	"fmt"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
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

// Attack on d228753's wiring, under -race: the release's goroutine reads
// every instance's TrimDue (a real release stepping every few ms) while
// instances are added, take a burst, and are closed and removed in the
// middle of their workers' trims. Nothing races, nothing panics, and once
// every instance is gone nothing is due.
func TestAtk13TrimDueWhileInstancesComeAndGo(t *testing.T) {
	testenv.Need(t, "redis-server", "mosquitto_passwd")
	redis := testenv.StartRedis(t)
	dir := t.TempDir()
	hash := passwdHash(t, dir)
	r := newHeapRelease(readHeap, debug.FreeOSMemory, time.Now)
	r.busy = trimDue
	stop := make(chan struct{})
	done := make(chan struct{})
	var polls, due, panics atomic.Int64
	step := func() {
		defer func() {
			if recover() != nil {
				panics.Add(1)
			}
		}()
		r.step()
	}
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			step()
			polls.Add(1)
			if trimDue() {
				due.Add(1)
			}
		}
	}()
	var stopped sync.Once
	halt := func() { stopped.Do(func() { close(stop); <-done }) }
	defer halt()
	for round := 0; round < 3; round++ {
		var ab *authBench
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			const n = 600
			ab = newAuthBench(t, redis, dir, hash, n, "flag")
			for i := 0; i < n; i++ {
				c := ab.client(i, fmt.Sprintf("come-%d-%d", round, i))
				ab.connect(t, c)
				defer ab.disconnect(c)
			}
			// Closed as its workers hold the burst's buffers (or not yet).
			time.Sleep(time.Duration(round) * 150 * time.Millisecond)
		})
		require.False(t, trimDue(), "round %d: due with the instance gone", round)
		require.False(t, ab.in.guard.TrimDue(), "round %d: a closed guard still due to trim", round)
	}
	require.Eventually(t, func() bool { return polls.Load() > 10 }, 5*time.Second, time.Millisecond)
	halt() // r.count is the stepping goroutine's until it has returned (a race under -race, CI on 256dd40)
	t.Logf("%d polls, %d due; %d releases", polls.Load(), due.Load(), r.count)
	assert.Zero(t, panics.Load(), "a panic in the release's step")
}
