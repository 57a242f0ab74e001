package ratelimit

import (
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// checksWithin counts the password checks Local lets through for one key
// when every check fails and attempts arrive every step for span.
func checksWithin(l *Local, key string, start time.Time, step, span time.Duration) int {
	n := 0
	for t := start; t.Before(start.Add(span)); t = t.Add(step) {
		if l.Exhausted(key, t) {
			continue
		}
		n++
		l.Fail(key, t)
	}
	return n
}

func TestLocalBoundsChecksPerWindow(t *testing.T) {
	p := Policy{Limit: 5, Window: time.Minute}
	start := time.Unix(1_700_000_000, 0)
	for _, step := range []time.Duration{0, time.Millisecond, time.Second, 9 * time.Second} {
		l := NewLocal(p, 0)
		if step == 0 {
			// Any number of parallel attempts at one instant.
			n := 0
			for i := 0; i < 100; i++ {
				if !l.Exhausted("ip:192.0.2.1", start) {
					n++
					l.Fail("ip:192.0.2.1", start)
				}
			}
			assert.Equal(t, 6, n, "at once: fail_limit+1 checks")
			continue
		}
		got := checksWithin(l, "ip:192.0.2.1", start, step, time.Minute-time.Nanosecond)
		assert.LessOrEqual(t, got, 6, "step %s: at most fail_limit+1 checks inside one window", step)
	}
	// Over k windows: at most Limit+1+k.
	l := NewLocal(p, 0)
	got := checksWithin(l, "k", start, 100*time.Millisecond, 10*time.Minute)
	assert.LessOrEqual(t, got, 5+1+10)
	assert.GreaterOrEqual(t, got, 5+10, "the allowance refills one per window")
}

func TestLocalKeysIndependentAndReset(t *testing.T) {
	l := NewLocal(Policy{Limit: 2, Window: time.Minute}, 0)
	now := time.Unix(1_700_000_000, 0)
	for i := 0; i < 3; i++ {
		l.Fail("ip:a", now)
	}
	assert.True(t, l.Exhausted("ip:a", now))
	assert.False(t, l.Exhausted("ip:b", now))
	assert.False(t, l.Exhausted("ip:a", now.Add(time.Minute)), "one more check a window later")
	l.Reset("ip:a")
	assert.False(t, l.Exhausted("ip:a", now))
}

func TestLocalBounded(t *testing.T) {
	l := NewLocal(Policy{Limit: 1, Window: time.Hour}, 1000)
	now := time.Unix(1_700_000_000, 0)
	long := strings.Repeat("x", 1000)
	for i := 0; i < 20_000; i++ {
		l.Fail("clientid:"+long+strconv.Itoa(i), now)
	}
	require.LessOrEqual(t, l.Len(), 1000)
	for k := range l.m {
		assert.LessOrEqual(t, len(k), 65)
	}
	// A key under attack stays tracked while fresh keys churn, most of the time:
	// eviction prefers the emptiest entries.
	for i := 0; i < 3; i++ {
		l.Fail("ip:attacker", now)
	}
	assert.True(t, l.Exhausted("ip:attacker", now))
}

func TestLocalEmpty(t *testing.T) {
	l := NewLocal(Policy{Limit: 2, Window: time.Minute}, 0)
	assert.True(t, l.Empty())
	l.Fail("ip:a", time.Unix(1_700_000_000, 0))
	assert.False(t, l.Empty())
	l.Reset("ip:a")
	assert.True(t, l.Empty())
}

// A key Local keeps as it is (64 bytes or less) is a copy: the plugin's
// keys are parts of a CONNECT's strings, one allocation with its client ID
// and username (up to 128 KB), which a key kept whole. 2 000 failing
// usernames, each a part of a 60 000-byte string, kept 117 MB.
func TestLocalKeepsNoLargerString(t *testing.T) {
	l := NewLocal(Policy{Limit: 3, Window: time.Minute}, 0)
	const n = 2000
	live := func() int64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&m)
		return int64(m.HeapAlloc)
	}
	now := time.Now()
	before := live()
	for i := 0; i < n; i++ {
		ids := strings.Repeat("c", 60000) + "user-" + strconv.Itoa(i)
		l.Fail(ids[60000:], now)
	}
	held := live() - before
	t.Logf("%d keys: %.0f bytes of heap each", n, float64(held)/n)
	assert.Less(t, held, int64(n*512))
	assert.False(t, l.Exhausted("user-7", now), "a key found by its value")
	for i := 0; i < 3; i++ {
		l.Fail("user-7", now)
	}
	assert.True(t, l.Exhausted("user-7", now))
}

// A key that goes on failing past its bound counts no further ahead than
// Limit+1 failures, as Redis's count, which a refused failure does not
// move: the two agree again within a window of the failures ending.
func TestLocalCountsNoFurtherThanOverTheLimit(t *testing.T) {
	p := Policy{Limit: 3, Window: time.Minute}
	l := NewLocal(p, 0)
	now := time.Now()
	for range 50 {
		l.Fail("username:bob", now)
	}
	assert.InDelta(t, 4, l.Debt("username:bob", now), 0.01)
	assert.True(t, l.Exhausted("username:bob", now))
	assert.False(t, l.Exhausted("username:bob", now.Add(p.Window+time.Second)), "a window after the failures end")
}
