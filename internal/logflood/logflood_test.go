package logflood

import (
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// t0 is a fixed start; the tests move time by hand.
var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

// allowN calls Allow n times at now and returns how many lines to log.
func allowN(l *Limiter, source, rule string, n int, now time.Time) int {
	logged := 0
	for i := 0; i < n; i++ {
		if l.Allow(source, rule, now) {
			logged++
		}
	}
	return logged
}

func TestDefaults(t *testing.T) {
	l := New(0, -1, 0)
	assert.Equal(t, DefaultMax, l.max)
	assert.Equal(t, DefaultBurst, l.burst)
	assert.Equal(t, int64(DefaultPeriod), l.period)
	assert.Equal(t, 10000, DefaultMax)
	assert.Equal(t, 10, DefaultBurst)
	assert.Equal(t, 10*time.Second, DefaultPeriod)
}

func TestBurst(t *testing.T) {
	l := New(100, 3, 10*time.Second)
	for i := 0; i < 3; i++ {
		assert.True(t, l.Allow("ip=192.0.2.1", "rule=a", at(time.Duration(i)*time.Millisecond)), "line %d", i)
	}
	for i := 0; i < 100; i++ {
		assert.False(t, l.Allow("ip=192.0.2.1", "rule=a", at(time.Second)))
	}
	// Keys are (source, rule): another rule or another source has its own burst.
	assert.Equal(t, 3, allowN(l, "ip=192.0.2.1", "rule=b", 10, at(time.Second)))
	assert.Equal(t, 3, allowN(l, "ip=192.0.2.2", "rule=a", 10, at(time.Second)))
	assert.Equal(t, 3, l.Len())
	// Still within the window: nothing more is logged, nothing summarised.
	assert.False(t, l.Allow("ip=192.0.2.1", "rule=a", at(10*time.Second-1)))
	assert.Nil(t, l.Flush(at(10*time.Second-1)))

	// A burst of 1 logs the first line of each window only.
	one := New(10, 1, time.Second)
	assert.Equal(t, 1, allowN(one, "s", "r", 50, at(0)))
}

func TestSummaryCounts(t *testing.T) {
	l := New(100, 10, 10*time.Second)
	assert.Equal(t, 10, allowN(l, "ip=192.0.2.1", "rule=a", 1000, at(0)))
	assert.Equal(t, 10, allowN(l, "ip=192.0.2.2", "rule=b", 17, at(3*time.Second)))
	assert.Equal(t, 5, allowN(l, "ip=192.0.2.3", "rule=c", 5, at(4*time.Second))) // under the burst: no summary
	assert.Nil(t, l.Flush(at(9*time.Second)), "no window has ended")

	// The first window has ended: its summary, once; the key is forgotten.
	assert.Equal(t, []Summary{{Source: "ip=192.0.2.1", Rule: "rule=a", Suppressed: 990, Period: 10 * time.Second}},
		l.Flush(at(10*time.Second)))
	assert.Nil(t, l.Flush(at(11*time.Second)))
	assert.Equal(t, 2, l.Len())

	// The other two have ended: one summary, one key forgotten silently.
	assert.Equal(t, []Summary{{Source: "ip=192.0.2.2", Rule: "rule=b", Suppressed: 7, Period: 10 * time.Second}},
		l.Flush(at(15*time.Second)))
	assert.Equal(t, 0, l.Len())
	assert.Nil(t, l.Flush(at(time.Hour)))
}

func TestSummariesAreSorted(t *testing.T) {
	l := New(100, 1, time.Second)
	for _, s := range []string{"c", "a", "b"} {
		for _, r := range []string{"y", "x"} {
			allowN(l, s, r, 3, at(0))
		}
	}
	var got []string
	for _, s := range l.Flush(at(time.Second)) {
		got = append(got, s.Source+s.Rule+strconv.Itoa(s.Suppressed))
	}
	assert.Equal(t, []string{"ax2", "ay2", "bx2", "by2", "cx2", "cy2"}, got)
}

func TestEpisodeRestart(t *testing.T) {
	l := New(100, 2, 10*time.Second)
	assert.Equal(t, 2, allowN(l, "s", "r", 5, at(0)))
	l.Flush(at(10 * time.Second))
	// A new episode: its first line is logged, whatever came before.
	assert.True(t, l.Allow("s", "r", at(12*time.Second)))
	assert.True(t, l.Allow("s", "r", at(12*time.Second)))
	assert.False(t, l.Allow("s", "r", at(12*time.Second)))

	// The window ends before a Flush sees it: Allow opens the next window
	// at once (and logs its first line); the ended window is still
	// summarised, apart from the new one.
	assert.True(t, l.Allow("s", "r", at(22*time.Second)))
	assert.True(t, l.Allow("s", "r", at(22*time.Second)))
	assert.Equal(t, 0, allowN(l, "s", "r", 4, at(23*time.Second)))
	assert.Equal(t, []Summary{{Source: "s", Rule: "r", Suppressed: 1, Period: 10 * time.Second}}, l.Flush(at(23*time.Second)))
	assert.Equal(t, 1, l.Len(), "the new window is open")
	assert.Equal(t, []Summary{{Source: "s", Rule: "r", Suppressed: 4, Period: 10 * time.Second}}, l.Flush(at(32*time.Second)))
	assert.Equal(t, 0, l.Len())

	// Idle exactly one period after its window: a new episode too.
	assert.True(t, l.Allow("s", "r", at(time.Hour)))
}

// When no Flush runs for several windows, their suppressed lines make one
// summary whose Period spans them.
func TestLateFlushSumsWindows(t *testing.T) {
	l := New(100, 1, 10*time.Second)
	for w := 0; w < 3; w++ {
		start := time.Duration(w) * 10 * time.Second
		assert.Equal(t, 1, allowN(l, "s", "r", 4, at(start)), "window %d", w)
	}
	assert.Equal(t, []Summary{{Source: "s", Rule: "r", Suppressed: 9, Period: 30 * time.Second}}, l.Flush(at(30*time.Second)))
}

func TestOverflowBucket(t *testing.T) {
	l := New(2, 3, 10*time.Second)
	assert.True(t, l.Allow("a", "r", at(0)))
	assert.True(t, l.Allow("b", "r", at(0)))
	assert.Equal(t, 2, l.Len())
	// Full: new keys share the overflow bucket and its burst.
	logged := 0
	for i := 0; i < 50; i++ {
		if l.Allow("x"+strconv.Itoa(i), "r", at(time.Second)) {
			logged++
		}
	}
	assert.Equal(t, 3, logged)
	assert.Equal(t, 2, l.Len(), "the overflow bucket adds no key")
	// Held keys keep their own limits meanwhile.
	assert.Equal(t, 2, allowN(l, "a", "r", 5, at(time.Second)))

	got := l.Flush(at(11 * time.Second))
	assert.Equal(t, []Summary{
		{Source: "a", Rule: "r", Suppressed: 3, Period: 10 * time.Second},
		{Suppressed: 47, Period: 10 * time.Second, Overflow: true},
	}, got)
	assert.Equal(t, 0, l.Len())
	// Room again: new keys are held, each logged from its first line.
	assert.True(t, l.Allow("x1", "r", at(12*time.Second)))
	assert.True(t, l.Allow("x2", "r", at(12*time.Second)))
	assert.Equal(t, 2, l.Len())
	assert.True(t, l.Allow("x3", "r", at(12*time.Second)), "a new overflow window logs its first line")
	assert.Nil(t, l.Flush(at(30*time.Second)), "nothing suppressed")
	assert.False(t, l.overOn)
}

// source returns the i-th of 16 777 216 distinct sources.
func source(i int) string {
	return "ip=10." + strconv.Itoa(i>>16&255) + "." + strconv.Itoa(i>>8&255) + "." + strconv.Itoa(i&255)
}

// A million distinct sources within one window: the limiter holds at most
// Max keys, writes at most Max+Burst lines, and counts every other line in
// the overflow summary.
func TestBoundUnderMillionSources(t *testing.T) {
	const max, burst, n = 10000, 10, 1_000_000
	l := New(max, burst, 10*time.Second)
	logged := 0
	for i := 0; i < n; i++ {
		if l.Allow(source(i), "rule=blocked", at(time.Duration(i)*time.Microsecond)) {
			logged++
		}
		if i%100_000 == 0 {
			require.LessOrEqual(t, l.Len(), max)
		}
	}
	assert.Equal(t, max, l.Len())
	assert.Equal(t, max+burst, logged)
	s := l.Flush(at(time.Minute))
	require.Len(t, s, 1)
	assert.Equal(t, Summary{Suppressed: n - max - burst, Period: 10 * time.Second, Overflow: true}, s[0])
	assert.Equal(t, 0, l.Len())

	// And again over many windows, with flushes every second.
	l = New(max, burst, 10*time.Second)
	total, suppressed := 0, 0
	for i := 0; i < n; i++ {
		now := at(time.Duration(i) * 50 * time.Microsecond) // 50 s in all
		if i%20_000 == 0 {
			for _, s := range l.Flush(now) {
				suppressed += s.Suppressed
			}
		}
		if l.Allow(source(i), "rule=blocked", now) {
			total++
		}
		if i%1000 == 0 {
			require.LessOrEqual(t, l.Len(), max)
		}
	}
	for _, s := range l.Flush(at(time.Hour)) {
		suppressed += s.Suppressed
	}
	assert.Equal(t, n, total+suppressed, "every line is logged or summarised")
	assert.LessOrEqual(t, total, (max+1)*burst*(50/10+1), "the bound on lines")
}

// The memory of Max keys stays under 200 bytes a key plus its strings, and
// is given back when the flood is over.
func TestMemoryBound(t *testing.T) {
	const max = 10000
	sources := make([]string, 2*max)
	for i := range sources {
		sources[i] = fmt.Sprintf("ip=10.0.%d.%d", i/256, i%256) // 12 to 14 bytes
	}
	const rule = `rule="guard:block:ip:10.0.0.1"`
	var before, full, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	l := New(max, 10, 10*time.Second)
	for _, s := range sources {
		l.Allow(s, rule, at(0)) // copied: the limiter keeps no reference to the caller's strings
	}
	runtime.GC()
	runtime.ReadMemStats(&full)
	runtime.KeepAlive(sources)
	perKey := (int64(full.HeapAlloc) - int64(before.HeapAlloc)) / max
	t.Logf("%d bytes a key, its strings (16 + 32 bytes) included", perKey)
	assert.Less(t, perKey, int64(200+16+32))
	l.Flush(at(time.Minute))
	runtime.GC()
	runtime.ReadMemStats(&after)
	assert.Less(t, int64(after.HeapAlloc)-int64(before.HeapAlloc), int64(max*20), "the map is given back")
	runtime.KeepAlive(l)
}

func TestAllowDoesNotAllocate(t *testing.T) {
	l := New(2, 5, 10*time.Second)
	src, rule := "ip=192.0.2.1", "rule=a"
	now := at(0)
	l.Allow(src, rule, now)
	l.Allow("other", rule, now) // full now
	var i int64
	for name, f := range map[string]func(){
		"held key":        func() { l.Allow(src, rule, now) },
		"new windows":     func() { i++; l.Allow(src, rule, at(time.Duration(i)*10*time.Second)) },
		"overflow bucket": func() { l.Allow("new", rule, now) },
	} {
		assert.Zero(t, testing.AllocsPerRun(1000, f), name)
	}
}

// Allow from many goroutines while Flush runs: under -race, and every line
// is accounted for, logged or summarised.
func TestConcurrent(t *testing.T) {
	l := New(50, 5, time.Millisecond)
	var calls, logged atomic.Int64
	var suppressed atomic.Int64
	stop := make(chan struct{})
	flushed := make(chan struct{})
	go func() {
		defer close(flushed)
		for {
			for _, s := range l.Flush(time.Now()) {
				suppressed.Add(int64(s.Suppressed))
			}
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Microsecond):
			}
		}
	}()
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20000; i++ {
				calls.Add(1)
				if l.Allow("s"+strconv.Itoa((g*31+i)%100), "r", time.Now()) {
					logged.Add(1)
				}
				_ = l.Len()
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-flushed
	for _, s := range l.Flush(time.Now().Add(time.Hour)) {
		suppressed.Add(int64(s.Suppressed))
	}
	assert.Equal(t, calls.Load(), logged.Load()+suppressed.Load())
	assert.Greater(t, suppressed.Load(), int64(0))
	assert.Equal(t, 0, l.Len())
}

func BenchmarkAllowHeldKey(b *testing.B) {
	l := New(DefaultMax, DefaultBurst, DefaultPeriod)
	now := time.Now()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		l.Allow("ip=203.0.113.7", `rule="guard:block:ip:203.0.113.7"`, now)
	}
}

func BenchmarkFlushFull(b *testing.B) {
	l := New(DefaultMax, DefaultBurst, DefaultPeriod)
	now := time.Now()
	for i := 0; i < DefaultMax; i++ {
		l.Allow("ip="+strconv.Itoa(i), "r", now)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		l.Flush(now) // nothing has ended: every key is visited, none dropped
	}
}
