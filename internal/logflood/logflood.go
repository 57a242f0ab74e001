package logflood

import (
	"cmp"
	"slices"
	"strings"
	"sync"
	"time"
)

// The defaults New uses for a parameter that is zero or negative.
const (
	DefaultMax    = 10000            // keys tracked at once
	DefaultBurst  = 10               // lines logged per key and window
	DefaultPeriod = 10 * time.Second // the window
)

// Summary tells of lines a Limiter suppressed in a window that has ended:
// Suppressed lines of Source and Rule (or, with Overflow, of keys that found
// the limiter full; Source and Rule are then empty) within Period. Period is
// the window; when Flush came late, after several windows of the key had
// ended, one Summary covers them all and Period spans them.
type Summary struct {
	Source, Rule string
	Suppressed   int
	Period       time.Duration
	Overflow     bool
}

// key is what the lines are limited by.
type key struct{ source, rule string }

// entry is the state of one key (and of the overflow bucket). Times are
// nanoseconds after Limiter.base.
type entry struct {
	start      int64 // start of the current window
	logged     int   // lines allowed in the current window
	suppressed int   // lines suppressed in the current window
	owed       int   // lines suppressed in ended windows, not yet summarised
	owedFrom   int64 // start of the first of those windows
	owedTo     int64 // end of the last of those windows
}

// step counts one line at time t and says whether to log it.
func (e *entry) step(t, period int64, burst int) bool {
	if t-e.start >= period { // the window ended: it is summarised at the next flush
		e.close(period)
		e.start, e.logged = t, 0
	}
	if e.logged < burst {
		e.logged++
		return true
	}
	e.suppressed++
	return false
}

// close moves the current window's suppressed lines to those owed.
func (e *entry) close(period int64) {
	if e.suppressed == 0 {
		return
	}
	if e.owed == 0 {
		e.owedFrom = e.start
	}
	e.owed += e.suppressed
	e.owedTo = e.start + period
	e.suppressed = 0
}

// Limiter limits log lines per (source, rule); see the package comment.
// It is safe for concurrent use.
type Limiter struct {
	max, burst int
	period     int64

	mu     sync.Mutex
	based  bool
	base   time.Time // the first time seen: times are kept as offsets from it
	m      map[key]*entry
	peak   int   // the most keys held since the map was last made
	over   entry // the overflow bucket
	overOn bool  // the overflow bucket has a window open or lines owed
}

// New returns a Limiter that holds at most maxKeys keys, logs the first
// burst lines of each key in every window of period and suppresses the
// rest. Zero or negative values mean DefaultMax, DefaultBurst and
// DefaultPeriod.
func New(maxKeys, burst int, period time.Duration) *Limiter {
	if maxKeys <= 0 {
		maxKeys = DefaultMax
	}
	if burst <= 0 {
		burst = DefaultBurst
	}
	if period <= 0 {
		period = DefaultPeriod
	}
	return &Limiter{max: maxKeys, burst: burst, period: int64(period), m: map[key]*entry{}}
}

// since returns now as an offset from the limiter's base. With times from
// time.Now() the offsets come from the monotonic clock.
func (l *Limiter) since(now time.Time) int64 {
	if !l.based {
		l.base, l.based = now, true
	}
	return int64(now.Sub(l.base))
}

// Allow counts one line of source and rule at now and says whether to log
// it: true for the first line of the key's window (always) and the next up
// to the burst, false for the others, which the first Flush after the window
// ends summarises. A key new to a full limiter is counted in the overflow
// bucket instead, which is limited as one key.
//
// Allow is O(1) and, for a key already held, does not allocate. A new key
// costs its state and copies of source and rule: the limiter keeps no
// reference into the caller's strings.
func (l *Limiter) Allow(source, rule string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.since(now)
	if e := l.m[key{source, rule}]; e != nil {
		return e.step(t, l.period, l.burst)
	}
	if len(l.m) < l.max {
		l.m[key{strings.Clone(source), strings.Clone(rule)}] = &entry{start: t, logged: 1}
		l.peak = max(l.peak, len(l.m))
		return true
	}
	if !l.overOn {
		l.over, l.overOn = entry{start: t, logged: 1}, true
		return true
	}
	return l.over.step(t, l.period, l.burst)
}

// Flush returns the summaries of the windows that have ended by now with
// lines suppressed, sorted by source and rule, the overflow bucket's last;
// nil when there are none. It forgets every key whose window has ended, so
// the next line of that key starts a new window and is logged. Call it
// regularly, every second or so: a key's summary waits for it, and only
// it frees the room of idle keys.
//
// Flush takes O(keys held) time, under the lock that Allow waits for:
// about 0.3 ms for 10 000 keys.
func (l *Limiter) Flush(now time.Time) []Summary {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.since(now)
	var out []Summary
	for k, e := range l.m {
		ended := t-e.start >= l.period
		if ended {
			e.close(l.period)
		}
		if e.owed > 0 {
			out = append(out, Summary{Source: k.source, Rule: k.rule, Suppressed: e.owed, Period: time.Duration(e.owedTo - e.owedFrom)})
			e.owed = 0
		}
		if ended {
			delete(l.m, k)
		}
	}
	slices.SortFunc(out, func(a, b Summary) int {
		return cmp.Or(strings.Compare(a.Source, b.Source), strings.Compare(a.Rule, b.Rule))
	})
	if l.overOn {
		e := &l.over
		ended := t-e.start >= l.period
		if ended {
			e.close(l.period)
		}
		if e.owed > 0 {
			out = append(out, Summary{Suppressed: e.owed, Period: time.Duration(e.owedTo - e.owedFrom), Overflow: true})
			e.owed = 0
		}
		l.overOn = !ended
	}
	// A Go map keeps the room of its largest size; after a flood, give the
	// memory back once it is over.
	if len(l.m) == 0 && l.peak > shrinkAbove {
		l.m, l.peak = map[key]*entry{}, 0
	}
	return out
}

// shrinkAbove is the size past which an emptied map is made anew.
const shrinkAbove = 64

// Len returns the number of keys held (not counting the overflow bucket).
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}
