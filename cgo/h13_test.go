package main

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Hostile test of 155da76's slow release: a steady allocation between
// releaseQuiet and releaseSlow a tick (a trickle, or a burst slowed by its
// hashes' cost) now releases while it goes on. How often, and at what
// cost: the backoff must still keep the releases under a hundredth of a
// core whatever the rate and a release's cost.
func TestH13SlowReleaseSteadyLoadCost(t *testing.T) {
	const span = 30 * time.Minute
	for _, took := range []time.Duration{2 * time.Millisecond, 50 * time.Millisecond, 400 * time.Millisecond} {
		for _, rate := range []uint64{releaseQuiet, 600 << 10, releaseSlow - 1} {
			f := &fakeHeap{at: time.Unix(1e9, 0), took: took}
			f.s = heapSample{allocs: 100 << 20, free: 1 << 20, inUse: 30 << 20, live: 10 << 20}
			r := f.release()
			start := f.at
			var first time.Duration
			for f.at.Sub(start) < span {
				if f.tick(r, rate) && first == 0 {
					first = f.at.Sub(start)
				}
			}
			cost := time.Duration(f.frees) * took
			share := float64(cost) / float64(f.at.Sub(start))
			t.Logf("%s a tick (%.1f MB/s), a release costing %v: %d releases in %v (first after %v), %.3f%% of a core",
				fmt.Sprintf("%d KB", rate>>10), float64(rate)*4/(1<<20), took, f.frees, span, first.Round(time.Second), 100*share)
			assert.LessOrEqual(t, share, 0.0101, "over a hundredth of a core")
		}
	}
}

// Hostile test of 155da76's 64 KiB spare password buffer: a buffer grown
// by append from one long password to a longer one grows past 64 KiB
// (append's growth: 40 960 to 81 920 bytes for 65 535) and is dropped, so
// a stranger alternating 40 000- and 65 535-byte passwords allocated both
// at every pair of CONNECTs, as before the spare kept 64 KiB.
func TestH13PasswordBufAlternatingLengths(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts")
	}
	a, b := cChars(strings.Repeat("a", 40000)), cChars(strings.Repeat("b", 65535))
	for _, p := range []*_Ctype_char{a, b, a, b} { // the spare grown
		copyPassword(p).release()
	}
	allocs := testing.AllocsPerRun(50, func() {
		copyPassword(a).release()
		copyPassword(b).release()
	})
	assert.Zero(t, allocs, "a new buffer at each pair of long passwords")
	pb := copyPassword(b)
	assert.LessOrEqual(t, cap(pb.b), passwordMaxKept)
	pb.release()
}

// A long CONNECT's strings are made in one copy: get appended the client
// ID, username and address to its buffer, made the strings from it, and
// dropped the buffer, so a stranger's 60 000-byte client ID and username
// allocated 240 KB a CONNECT, twice what the README counts (up to 128 KB
// a CONNECT) against the heap release's slow rule (under 1 MB a tick: a
// stranger at 5 CONNECTs a second was a burst).
func TestH13LongConnectStringsOneCopy(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts")
	}
	cs := &connectStrings{seed: connStrings.seed}
	id, user, addr := []byte(strings.Repeat("i", 60000)), []byte(strings.Repeat("u", 60000)), []byte("192.0.2.1")
	c, a, u, ids := cs.get(id, addr, user, true)
	require.Equal(t, string(id), c)
	require.Equal(t, string(user), u)
	require.Equal(t, string(addr), a)
	require.Equal(t, string(id)+string(user), ids)
	short, _, shortUser, _ := cs.get([]byte("dev-1"), addr, []byte("alice"), true)
	require.Equal(t, "dev-1", short)
	require.Equal(t, "alice", shortUser)
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	const runs = 50
	for i := 0; i < runs; i++ {
		cs.get(id, addr, user, true)
	}
	runtime.ReadMemStats(&m1)
	per := (m1.TotalAlloc - m0.TotalAlloc) / runs
	t.Logf("a CONNECT with a 60 000-byte client ID and username: %d bytes", per)
	assert.Less(t, per, uint64(130_000), "the strings copied twice")
}
