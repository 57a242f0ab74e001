package plugin

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"
)

// health tracks whether Redis answers. While it does not, the hot path skips
// it entirely (no CONNECT waits redis_timeout on a dead Redis) and one
// goroutine probes until it is back.
type health struct {
	g       *Guard
	isUp    atomic.Bool
	probing atomic.Bool
}

// probeEvery is how often a down Redis is probed.
const probeEvery = 500 * time.Millisecond

func (h *health) init(g *Guard) {
	h.g = g
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.RedisTimeout)
	defer cancel()
	if err := g.store.Ping(ctx); err != nil {
		h.down(err)
		return
	}
	h.isUp.Store(true)
	g.log(LevelInfo, "mosquitto-guard: connected to redis at "+strings.Join(g.cfg.RedisAddrs, ","))
}

func (h *health) up() bool { return h.isUp.Load() }

// down records that Redis failed to answer and starts probing it.
func (h *health) down(err error) {
	h.isUp.Store(false)
	if !h.probing.CompareAndSwap(false, true) {
		return
	}
	g := h.g
	mode := "allow: checking credentials only"
	if g.cfg.DenyWhenRedisDown {
		mode = "deny: refusing every client"
	}
	g.log(LevelWarning, fmt.Sprintf("mosquitto-guard: redis at %s unreachable (%v); redis_unavailable %s until it is reachable again",
		strings.Join(g.cfg.RedisAddrs, ","), err, mode))
	g.spawn("redis probe", func() {
		defer h.probing.Store(false)
		t := time.NewTicker(probeEvery)
		defer t.Stop()
		for {
			select {
			case <-g.stop:
				return
			case <-t.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err := g.store.Ping(ctx)
			cancel()
			if err == nil {
				h.isUp.Store(true)
				g.log(LevelNotice, "mosquitto-guard: redis at "+strings.Join(g.cfg.RedisAddrs, ",")+" is back: list checks resume")
				return
			}
		}
	})
}
