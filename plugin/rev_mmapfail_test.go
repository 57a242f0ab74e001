//go:build !race

// Not under the race detector: ThreadSanitizer's own allocator maps
// memory and aborts the process when the address space is capped
// (underASLimit). The failures these tests reproduce are in code the race
// detector does not change.

package plugin

import (
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// underASLimit runs fn with the address space capped at what the process
// maps now plus slack: a new mapping larger than slack fails with ENOMEM,
// as it does on a broker at its RLIMIT_AS or out of memory. It returns
// what fn panicked with, if anything (the cgo layer's recoverTo does the
// same for the broker thread's calls).
func underASLimit(t *testing.T, slack uint64, fn func()) (panicked any) {
	t.Helper()
	lift := testenv.CapAddressSpace(t, slack)
	defer lift()
	defer func() { panicked = recover() }()
	fn()
	return nil
}

// A mapping that fails in knownSources.succeeded (recent's growth, on the
// broker thread, at a CONNECT's success) panics with k.mu held: the cgo
// layer recovers the panic, but the lock stays held, and the next CONNECT
// that succeeds (note) or is throttled (known) blocks the broker thread for
// good. A broker at its memory limit must refuse or go on, never hang.
func TestRevKnownNoteMmapFailureReleasesLock(t *testing.T) {
	testenv.InChild(t, func(t *testing.T) {
		stop := make(chan struct{})
		defer close(stop)
		k := newKnownSources(knownDeps{max: 100, window: time.Hour, failWindow: time.Minute,
			spawn: func(string, func()) {}, stop: stop})
		// Fill recent to the entry before its next growth, which maps
		// twice its slots (12 bytes each): past 190 000 entries (under
		// knownRecentMax, which clears it), a mapping of 6 MB, well past
		// the cap's 1 MB of slack (at 50 000 entries it was 1.5 MB, and a
		// full local run of the plugin package once found it mapped: "the
		// mapping did not fail").
		k.mu.Lock()
		for i := uint32(0); ; i++ {
			k.recent.Put(recentID{i<<2 | 2, i*2654435761 + 1}, knownStampOf(time.Now().UnixMilli()))
			slots := k.recent.Mapped() / 12
			if k.recent.Len() >= 190_000 && (k.recent.Len()+1)*4 > slots*3 {
				break
			}
		}
		n := k.recent.Len()
		k.mu.Unlock()
		for len(k.queue.Take()) > 0 {
		}
		p := underASLimit(t, 1<<20, func() {
			k.succeeded("victim", netip.MustParseAddr("192.0.2.1"), "dev", time.Now())
		})
		require.NotNil(t, p, "the mapping did not fail: the test proves nothing")
		t.Logf("succeeded panicked (recovered as the cgo layer does): %v", p)
		require.True(t, k.mu.TryLock(), "k.mu is still held after succeeded's panic: the broker thread's next success or known blocks forever")
		defer k.mu.Unlock()
		require.Equal(t, n, k.recent.Len(), "recent changed by a failed growth")
	})
}

// The verification cache's table growth frees the old table before mapping
// the new one: when that mapping fails, every entry is unreachable until a
// later add grows it. That must cost misses only: no wrong password and no
// changed hash hits, nothing panics after, and the next add that can map
// finds every entry again. Before the fix that next add spun for good on
// the broker thread with c.mu held: grow sized the new table from the old
// one's length (0 after the failure: 1024 slots for 131 073 entries), and
// find never met an empty slot (the child's -test.timeout ends it).
func TestRevVerifyCacheMmapFailure(t *testing.T) {
	testenv.InChild(t, func(t *testing.T) {
		c := newVerifyCache(1 << 20)
		pw := func(i int) []byte { return []byte("pw-" + strconv.Itoa(i)) }
		user := func(i int) string { return "u" + strconv.Itoa(i) }
		n := 0
		for ; ; n++ {
			c.add(user(n), pw(n), "$h1")
			if len(c.table.S) >= 1<<18 && 2*(len(c.entries.S)+1) > len(c.table.S) {
				n++
				break
			}
		}
		p := underASLimit(t, 1<<20, func() { c.add(user(n), pw(n), "$h1") })
		require.NotNil(t, p, "the mapping did not fail: the test proves nothing")
		t.Logf("add panicked: %v (%d entries)", p, c.len())
		for i := 0; i < n; i += 997 {
			require.False(t, c.hit(user(i), pw(i+1), "$h1"), "a wrong password hit")
			require.False(t, c.hit(user(i), pw(i), "$h2"), "a changed hash hit")
		}
		c.add(user(n), pw(n), "$h1") // maps now
		c.mu.Lock()
		used := 0
		for _, v := range c.table.S {
			if v != 0 {
				used++
			}
		}
		require.Equal(t, len(c.entries.S), used)
		c.mu.Unlock()
		for i := 0; i <= n; i++ {
			require.True(t, c.hit(user(i), pw(i), "$h1"), "entry %d lost", i)
			require.False(t, c.hit(user(i), pw(i+1), "$h1"))
			require.False(t, c.hit(user(i), pw(i), "$h2"))
		}
		c.free()
	})
}
