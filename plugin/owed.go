package plugin

import (
	"fmt"
	"sync"
	"time"
)

// owedFailures holds the failed authentications this broker counted while
// Redis did not answer (Guard.failed, redis_unavailable): counted on this
// broker only, by its own count (ratelimit.Local), and in no Redis count.
// When Redis answers again they are counted there too (replay).
//
// Without it, the two counts parted for good: this broker's own count,
// exhausted by the outage's failures, let the source check one password per
// fail_window from then on, the very rate at which Redis's allowance
// refills, so Redis's count never went over and the source was never
// banned, however long it went on guessing (atk97: a guesser whose first
// burst fell in a 1 s Redis stall, then one guess every 0.2 s for 30 s: 13
// passwords checked and no ban, where with no stall 6 were checked and two
// bans written).
//
// Only what has not refilled is counted when Redis is back: each key keeps
// its failures as Local does (GCRA, one refilled per fail_window), and
// as many are counted as its count holds then, at most the limit and one
// (enough to go over it). So an outage's failures older than their window
// count for nothing, as they would have in Redis, and a source under its
// limit is not banned for being counted late.
//
// Bounds: at most owedMax keys and owedMax usernames (the throttle's), each
// the last failure under it: at most failureHeld (1 KB) of its own strings
// and about 200 bytes more, under 10 MB in all however long the outage and
// however many sources fail in it. Past them a failure under a new key is
// not held, and reported as not counted (the queue's report). A broker
// that stops first forgets them.
//
// The failure queue holds here too the failures it dropped (full: a flood
// outran Redis) or gave up on (Redis did not answer for 30 s): counted on
// this broker alone, they would part the counts the same way. They are
// counted at the queue's next report (10 s) or when Redis answers again. A
// failure given up on may have been counted already (a lost reply): then
// it counts twice, a ban one failure early, where not held it could keep
// its source from ever being banned.
type owedFailures struct {
	mu     sync.Mutex
	keys   map[failKey]*owedOne
	users  map[string]*owedOne // by the tracked username (failure.userTracked)
	period int64               // fail_window, in ns
}

// owedOne is one key's (or one username's) failures held: the last of
// them, which the ban's line names, and their count as a GCRA theoretical
// arrival time (unix ns).
type owedOne struct {
	f   failure
	tat int64
}

// owedMax bounds the keys, and the usernames, held.
const owedMax = 4096

func newOwedFailures(window time.Duration) *owedFailures {
	return &owedFailures{keys: map[failKey]*owedOne{}, users: map[string]*owedOne{}, period: int64(window)}
}

// add holds f, a failure (f.times of them) Redis could not be told of, at
// now. It reports whether it held all of it: not when a key or username
// new to it finds its bound reached (that part is counted as not counted
// at the next replay).
func (o *owedFailures) add(f failure, now time.Time) bool {
	n := now.UnixNano()
	d := int64(max(f.times, 1)) * o.period
	all := true
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, k := range f.keys {
		e := o.keys[k]
		if e == nil {
			if len(o.keys) >= owedMax {
				all = false
				continue
			}
			e = &owedOne{}
			o.keys[k] = e
		}
		e.f = f
		e.f.keys = []failKey{k}
		e.f.throttle = false
		e.tat = max(e.tat, n) + d
	}
	if f.throttle && f.hasUsername {
		e := o.users[f.userTracked]
		if e == nil {
			if len(o.users) >= owedMax {
				return false
			}
			e = &owedOne{}
			o.users[f.userTracked] = e
		}
		e.f = f
		e.f.keys = nil
		e.tat = max(e.tat, n) + d
	}
	return all
}

// empty reports whether nothing is held.
func (o *owedFailures) empty() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.keys) == 0 && len(o.users) == 0
}

// forget drops k's failures held: an operator lifted its ban (Guard.liftedEarly).
func (o *owedFailures) forget(k failKey) {
	o.mu.Lock()
	delete(o.keys, k)
	o.mu.Unlock()
}

// take empties the holding, and returns the failures to count in Redis at
// now, each with its times: what its count has not refilled, at most
// keyMax for a key and userMax for a username.
func (o *owedFailures) take(now time.Time, keyMax, userMax int) (out []failure) {
	n := now.UnixNano()
	o.mu.Lock()
	keys, users := o.keys, o.users
	o.keys, o.users = map[failKey]*owedOne{}, map[string]*owedOne{}
	o.mu.Unlock()
	due := func(e *owedOne, most int) int {
		if e.tat <= n || o.period <= 0 {
			return 0
		}
		return min(int((e.tat-n+o.period-1)/o.period), most)
	}
	for _, e := range keys {
		if t := due(e, keyMax); t > 0 {
			f := e.f
			f.times = t
			out = append(out, f)
		}
	}
	for _, e := range users {
		if t := due(e, userMax); t > 0 {
			f := e.f
			f.times = t
			out = append(out, f)
		}
	}
	return out
}

// replayOwed counts in Redis, through the failure queue, the failures held
// while it did not answer, or dropped or given up on by the queue
// (owedFailures). It waits for room in the queue (the guard's stop ends the
// wait), on a goroutine of its own: health calls it when Redis answers
// again, and must not block; the queue's worker at each report (10 s),
// for failures held while Redis answered. Nothing while Redis does not
// answer, nor while the last replay is still queueing.
func (g *Guard) replayOwed() {
	if !g.health.up() || g.owed.empty() || !g.replaying.CompareAndSwap(false, true) {
		return
	}
	fs := g.owed.take(g.now(), g.cfg.Policy.Limit+1, g.cfg.UsernameFailLimit+1)
	if len(fs) == 0 {
		g.replaying.Store(false)
		return
	}
	g.spawn("failures held while redis was down", func() {
		defer g.replaying.Store(false)
		n := 0
		for _, f := range fs {
			select {
			case g.failures.ch <- f:
				n += f.times
			case <-g.stop:
				return
			}
		}
		g.log(LevelNotice, fmt.Sprintf("mosquitto-guard: counting in redis the %d failed authentications (%d keys and usernames) this broker counted alone (redis down, or the counting queue full) and has not refilled yet", n, len(fs)))
	})
}
