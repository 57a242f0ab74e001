package plugin

import (
	"context"
	"time"
)

// rangeCheckEvery is how often range keys are scanned for malformed ones.
const rangeCheckEvery = time.Minute

func (g *Guard) startBackground() {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
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
	}()
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
