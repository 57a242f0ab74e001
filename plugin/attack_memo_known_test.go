package plugin

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

// Random successes of a (username, source) at any millisecond, gaps around
// the refresh and the window, the clock sometimes stepped back, and a
// question at any millisecond after each: this broker's own knowledge
// (recent, seconds stamps) knows the source whenever it succeeded within
// conflict_window, as the ms kept before did.
func TestAttackKnownRecentWithinWindow(t *testing.T) {
	stop := make(chan struct{})
	defer close(stop)
	const window = 4 * time.Minute
	k := newKnownSources(knownDeps{max: 100, window: window, failWindow: time.Minute,
		spawn: func(string, func()) {}, stop: stop})
	refresh := k.refresh
	ip := netip.MustParseAddr("192.0.2.9")
	rng := rand.New(rand.NewPCG(3, 4))
	gaps := []time.Duration{0, time.Millisecond, 999 * time.Millisecond, time.Second, refresh - time.Second, refresh - time.Millisecond,
		refresh, refresh + time.Millisecond, window - time.Millisecond, window, -1500 * time.Millisecond}
	for run := 0; run < 200; run++ {
		user := "u" + string(rune('a'+run%26)) + time.Duration(run).String()
		now := time.Unix(1_700_000_000, 0).Add(time.Duration(rng.IntN(1000)) * time.Millisecond)
		var last time.Time
		for i := 0; i < 60; i++ {
			now = now.Add(gaps[rng.IntN(len(gaps))])
			k.succeeded(user, ip, "dev", now)
			if now.After(last) {
				last = now
			}
			k.queue.Take() // the writer took them
			ask := last.Add(time.Duration(rng.Int64N(int64(window + time.Second))))
			byIP, byID := k.known(user, ip, "dev", ask)
			if ask.Sub(last) <= window && !(byIP && byID) {
				t.Fatalf("run %d: succeeded at %v, not known at %v (%v later, window %v)", run, last.UnixMilli(), ask.UnixMilli(), ask.Sub(last), window)
			}
		}
	}
}
