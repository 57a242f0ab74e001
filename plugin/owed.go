package plugin

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"

	"github.com/mosquitto-guard/mosquitto-guard/ratelimit"
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
// Bounds: the first owedMax keys and owedMax usernames keep the last
// failure under each (for the ban's line: its client's strings, at most
// failureHeld, 1 KB), under 10 MB; past them, up to owedKeysMax keys in
// all (ratelimit.DefaultLocalKeys: as many as this broker's own count
// keeps, so that no source its count gates is left out) keep only the
// failing address and its own copy of the key, about 150 bytes a network
// address's key and up to 450 a long client ID's or username's: under
// 28 MB more, 9 MB for 61 440 addresses (TestOwedSpillBytesPerKey); and
// as much again while a replay waits to queue what it took. A failure
// under a key or username past them is not held, and reported as not
// counted (the queue's report). The replay builds each reconcile as it
// queues it: nothing more meanwhile but the maps taken. A broker that
// stops first forgets them.
type owedFailures struct {
	mu    sync.Mutex
	keys  map[failKey]failure    // the last failure under each, its keys that one
	spill map[failKey]netip.Addr // past owedMax keys: the last failing address alone
	users map[string]failure     // by the tracked username (failure.userTracked), no keys
}

// owedMax bounds the keys, and the usernames, held with their last
// failure; owedKeysMax the keys held in all.
const (
	owedMax     = 4096
	owedKeysMax = ratelimit.DefaultLocalKeys
)

func newOwedFailures() *owedFailures {
	return &owedFailures{keys: map[failKey]failure{}, spill: map[failKey]netip.Addr{}, users: map[string]failure{}}
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
			if _, ok := o.spill[k]; ok {
				o.spill[k] = f.ip
			} else if len(o.keys)+len(o.spill) < owedKeysMax {
				// Its own copy of the value: not the failure's block of
				// client ID and username it is a part of.
				o.spill[failKey{k.scope, strings.Clone(k.value)}] = f.ip
			} else {
				all = false
			}
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
	return len(o.keys) == 0 && len(o.spill) == 0 && len(o.users) == 0
}

// owedTaken is what take took: each held key's and username's reconcile,
// built as each is queued (each).
type owedTaken struct {
	keys  map[failKey]failure
	spill map[failKey]netip.Addr
	users map[string]failure
}

func (t owedTaken) len() int { return len(t.keys) + len(t.spill) + len(t.users) }

// each calls fn with each reconcile until it returns false.
func (t owedTaken) each(fn func(f failure) bool) {
	for _, f := range t.keys {
		if !fn(f) {
			return
		}
	}
	for k, ip := range t.spill {
		// Its line names the last failing address alone: no client
		// strings were kept (bare).
		if !fn(failure{ip: ip, keys: []failKey{k}, reconcile: true, bare: true}) {
			return
		}
	}
	for _, f := range t.users {
		if !fn(f) {
			return
		}
	}
}

// take empties the holding, and returns what it held.
func (o *owedFailures) take() owedTaken {
	o.mu.Lock()
	defer o.mu.Unlock()
	t := owedTaken{keys: o.keys, spill: o.spill, users: o.users}
	o.keys, o.spill, o.users = map[failKey]failure{}, map[failKey]netip.Addr{}, map[string]failure{}
	return t
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
	taken := g.owed.take()
	n := taken.len()
	if n == 0 {
		g.replaying.Store(false)
		return
	}
	g.spawn("failures held while redis was down", func() {
		defer g.replaying.Store(false)
		stopped := false
		taken.each(func(f failure) bool {
			select {
			case g.failures.ch <- f:
				return true
			case <-g.stop:
				stopped = true
				return false
			}
		})
		if stopped {
			return
		}
		g.log(LevelNotice, fmt.Sprintf("mosquitto-guard: counting in redis the failed authentications of %d keys and usernames that this broker counted alone (redis down, or the counting queue full), as far as redis's counts lack them", n))
	})
}
