package plugin

import (
	"fmt"
	"sync"
)

// owedFailures holds the keys and usernames of failed authentications that
// Redis was not told of: counted by this broker alone (ratelimit.Local)
// while Redis did not answer (Guard.failed, redis_unavailable allow), or
// dropped by the counting queue (full: a flood outran Redis), or given up
// on by it (no answer for 30 s). When Redis answers again (health.back),
// and at the queue's report (every 10 s) while it does, each is
// reconciled: as many failures are counted in Redis as bring its count up
// to this broker's own (failureQueue.owedOf), read then, not remembered.
//
// Without it, the two counts parted for good: this broker's own count,
// exhausted by failures Redis never saw, let the source check one password
// per fail_window, the very rate at which Redis's allowance refills, so
// Redis's count never went over and the source was never banned, however
// long it went on guessing (atk97: a guesser whose first burst fell in a 1 s
// Redis stall, then one guess every 0.2 s for 30 s: 13 passwords checked and
// no ban, where with no stall 6 were checked and two bans written). Half a
// failure short was enough.
//
// Read, not remembered: what Redis already has is never counted again (a
// failure whose count timed out and that a hung Redis ran when it resumed;
// another broker's count of the same source, when its count is the
// larger), a key whose ban an operator lifted here has no count left of its
// own (Guard.liftedEarly resets it), and a count that has refilled since
// owes nothing.
//
// Bounds: at most owedMax keys and owedMax usernames, each the last failure
// under it: at most failureHeld (1 KB) of the client's strings and about
// 250 bytes more, under 10 MB in all however long the outage and however
// many sources fail in it, and as much again in a replay on its way into
// the queue. Past them a failure under a new key is not held, and reported
// as not counted (the queue's report). A broker that stops first forgets
// them.
type owedFailures struct {
	mu    sync.Mutex
	keys  map[failKey]failure // the last failure under each, its keys that one
	users map[string]failure  // by the tracked username (failure.userTracked), no keys
}

// owedMax bounds the keys, and the usernames, held.
const owedMax = 4096

func newOwedFailures() *owedFailures {
	return &owedFailures{keys: map[failKey]failure{}, users: map[string]failure{}}
}

// add holds f's keys and, counted toward its throttle, its username. It
// reports whether it held all of them: not when one new to it finds its
// bound reached.
func (o *owedFailures) add(f failure) bool {
	all := true
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, k := range f.keys {
		if _, ok := o.keys[k]; !ok && len(o.keys) >= owedMax {
			all = false
			continue
		}
		one := f
		one.keys = []failKey{k}
		one.throttle = false
		one.reconcile = true
		o.keys[k] = one
	}
	if f.throttle && f.hasUsername {
		if _, ok := o.users[f.userTracked]; !ok && len(o.users) >= owedMax {
			return false
		}
		one := f
		one.keys = nil
		one.reconcile = true
		o.users[f.userTracked] = one
	}
	return all
}

// empty reports whether nothing is held.
func (o *owedFailures) empty() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.keys) == 0 && len(o.users) == 0
}

// take empties the holding, and returns its reconciles.
func (o *owedFailures) take() []failure {
	o.mu.Lock()
	keys, users := o.keys, o.users
	o.keys, o.users = map[failKey]failure{}, map[string]failure{}
	o.mu.Unlock()
	out := make([]failure, 0, len(keys)+len(users))
	for _, f := range keys {
		out = append(out, f)
	}
	for _, f := range users {
		out = append(out, f)
	}
	return out
}

// replayOwed queues the reconciles of what is held (owedFailures). It
// waits for room in the queue (the guard's stop ends the wait), on a
// goroutine of its own: health calls it when Redis answers again, and
// must not block; the queue's worker at each report (10 s). Nothing while
// Redis does not answer, nor while the last replay is still queueing.
func (g *Guard) replayOwed() {
	if !g.health.up() || g.owed.empty() || !g.replaying.CompareAndSwap(false, true) {
		return
	}
	fs := g.owed.take()
	if len(fs) == 0 {
		g.replaying.Store(false)
		return
	}
	g.spawn("failures held while redis was down", func() {
		defer g.replaying.Store(false)
		for _, f := range fs {
			select {
			case g.failures.ch <- f:
			case <-g.stop:
				return
			}
		}
		g.log(LevelNotice, fmt.Sprintf("mosquitto-guard: counting in redis the failed authentications of %d keys and usernames that this broker counted alone (redis down, or the counting queue full), as far as redis's counts lack them", len(fs)))
	})
}
