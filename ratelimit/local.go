package ratelimit

import (
	"crypto/sha256"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Local is one broker's own count of failed authentications, consulted on
// the broker thread before a password is checked. Redis (Fail) stays the
// count shared by every broker, but it is updated in the background: without
// a local count, parallel connections from one source get their passwords
// checked while the failures before them are still on their way to Redis.
//
// Local applies the policy's shape in memory (GCRA, Burst = Limit, Rate = 1
// per Window), keyed like Fail's keys, and answers one question: may one
// more password be checked for this key now? It says no once Limit+1
// failures have been recorded faster than the allowance refills, so that on
// one broker, however many connections run in parallel, at most Limit+1
// passwords are checked per key in any span shorter than Window (Limit+1+k
// in a span of k windows).
//
// Memory is bounded: at most maxKeys keys (values longer than 64 bytes are
// kept as their SHA-256; shorter ones as a copy of their own), about 150
// bytes each. When full, a few entries
// chosen at random are examined and the emptiest is forgotten: an attacker
// who fills the table from maxKeys sources at once only weakens the local
// bound for the others back to what Redis gives.
type Local struct {
	burst  int64
	period int64 // nanoseconds
	max    int

	mu sync.Mutex
	m  map[string]int64 // key -> GCRA theoretical arrival time (unix ns)
	n  atomic.Int64     // len(m), read without the lock by Empty
}

// Empty reports, without taking the lock, whether no key has failed: then
// no key is exhausted, and the broker thread skips building keys at all (the
// common case: a CONNECT with no failure anywhere recently).
func (l *Local) Empty() bool { return l.n.Load() == 0 }

// DefaultLocalKeys is the default bound on the keys a Local holds.
const DefaultLocalKeys = 65536

// NewLocal returns a Local for p holding at most maxKeys keys.
func NewLocal(p Policy, maxKeys int) *Local {
	p = p.withDefaults()
	if maxKeys <= 0 {
		maxKeys = DefaultLocalKeys
	}
	return &Local{burst: int64(p.Limit), period: int64(p.Window), max: maxKeys, m: map[string]int64{}}
}

// localKey bounds the map key of a client-supplied value.
func localKey(key string) string {
	if len(key) <= 64 {
		return key
	}
	h := sha256.Sum256([]byte(key))
	return "#" + string(h[:])
}

// Exhausted reports whether key has used up its checks: Limit+1 failures
// were recorded faster than the allowance refills, and another check now
// would go beyond the bound.
func (l *Local) Exhausted(key string, now time.Time) bool {
	n := now.UnixNano()
	l.mu.Lock()
	tat, ok := l.m[localKey(key)]
	l.mu.Unlock()
	// After k failures at once tat = now + k*period; the check that would
	// be failure Limit+2 finds tat - now > Limit*period.
	return ok && tat-n > l.burst*l.period
}

// Debt is how many of key's failures have not refilled at now, in
// failures (a fraction: part of one refilled); 0 for a key with none.
func (l *Local) Debt(key string, now time.Time) float64 {
	l.mu.Lock()
	tat, ok := l.m[localKey(key)]
	l.mu.Unlock()
	if !ok || l.period <= 0 {
		return 0
	}
	return max(float64(tat-now.UnixNano())/float64(l.period), 0)
}

// LocalKey is the form Local keeps s under: s itself, or past 64 bytes
// its SHA-256. Local's methods given it find s's entry (localKey of it is
// itself), so a caller can keep it in place of a long s.
func LocalKey(s string) string { return localKey(s) }

// Fail records one failed authentication of key.
func (l *Local) Fail(key string, now time.Time) {
	n := now.UnixNano()
	k := localKey(key)
	l.mu.Lock()
	defer l.mu.Unlock()
	tat, ok := l.m[k]
	if !ok {
		if len(l.m) >= l.max {
			l.evict(n)
		}
		if len(k) == len(key) {
			// Kept as it is: a copy. The plugin's keys are parts of a
			// CONNECT's strings (one allocation with the client ID and
			// the username, up to 128 KB), which a key kept whole: at
			// maxKeys (65 536) about 8 GB of a stranger's strings.
			k = strings.Clone(k)
		}
	}
	// No further ahead than Limit+1 failures at once: a key that goes on
	// failing past its bound (a username's known sources, which its
	// throttle lets through) counts no more than Redis's count does (a
	// failure it refuses adds nothing there), so that the two agree again
	// within a window of the failures ending, and a reconcile of the two
	// (plugin's owedFailures) finds nothing owed then (a review: a
	// username's count 5 000 failures ahead throttled it again thousands
	// of windows later). Exhausted's answer is the same: over the limit.
	l.m[k] = min(max(tat, n)+l.period, n+(l.burst+1)*l.period)
	l.n.Store(int64(len(l.m)))
}

// Reset forgets key (an operator lifted its ban).
func (l *Local) Reset(key string) {
	l.mu.Lock()
	delete(l.m, localKey(key))
	l.n.Store(int64(len(l.m)))
	l.mu.Unlock()
}

// Len returns the number of keys held.
func (l *Local) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}

// evict forgets the emptiest of a few entries (Go's map iteration starts
// at a random place); an entry whose allowance is full again goes first.
// Constant work, whatever the size of the map.
func (l *Local) evict(now int64) {
	const sample = 8
	var victim string
	best := int64(1<<63 - 1)
	i := 0
	for k, tat := range l.m {
		if tat <= now {
			delete(l.m, k)
			return
		}
		if tat < best {
			victim, best = k, tat
		}
		if i++; i == sample {
			break
		}
	}
	delete(l.m, victim)
}
