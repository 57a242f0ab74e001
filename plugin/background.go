package plugin

import (
	"context"
	"fmt"
	"time"
)

// rangeCheckEvery is how often range keys are scanned for malformed ones.
const rangeCheckEvery = time.Minute

func (g *Guard) startBackground() {
	g.spawn("range check", func() {
		reported := map[string]bool{}
		t := time.NewTicker(rangeCheckEvery)
		defer t.Stop()
		for {
			if g.health.up() {
				g.checkRanges(reported)
			}
			select {
			case <-g.stop:
				return
			case <-t.C:
			}
		}
	})
}

// checkRanges logs, once each, range keys that can never match.
func (g *Guard) checkRanges(reported map[string]bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bad, err := g.store.CheckRanges(ctx)
	if err != nil {
		g.log(LevelWarning, "mosquitto-guard: cannot check range keys: "+err.Error())
	}
	for _, b := range bad {
		if !reported[b.Key] {
			reported[b.Key] = true
			g.log(LevelWarning, "mosquitto-guard: range key "+quote(b.Key)+" can never match: "+b.Err.Error())
		}
	}
}

// spawn runs fn in a goroutine that Close waits for. A panic in it is logged
// and swallowed: a panic escaping any goroutine would kill the broker.
func (g *Guard) spawn(name string, fn func()) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		defer func() {
			if r := recover(); r != nil {
				g.log(LevelError, fmt.Sprintf("mosquitto-guard: internal error in %s: %v", name, r))
			}
		}()
		fn()
	}()
}
