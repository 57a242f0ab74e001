package plugin

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// health tracks whether Redis answers. The hot path asks no Redis question
// once the replica is loaded, so nothing there would notice a Redis that hangs
// (SIGSTOP, a stuck failover) rather than refusing: one goroutine pings it
// every healthEvery, whatever the state, and any Redis error seen anywhere in
// the plugin marks it down at once. While it is down the hot path skips Redis
// entirely, and redis_unavailable deny refuses every client.
//
// Bounds: a Redis that stops answering is seen within healthEvery +
// healthTimeout (700 ms); one that answers again within healthEvery (200 ms)
// plus its answer. Each change of state is logged once.
type health struct {
	g    *Guard
	isUp atomic.Bool

	mu     sync.Mutex // orders the log lines of state changes
	logged bool       // the state last logged: true up
}

const (
	healthEvery   = 200 * time.Millisecond
	healthTimeout = 500 * time.Millisecond
)

func (h *health) init(g *Guard) {
	h.g = g
	h.logged = true
	if err := h.ping(); err != nil {
		h.down(err)
	} else {
		h.isUp.Store(true)
		g.log(LevelInfo, "mosquitto-guard: connected to redis at "+strings.Join(g.cfg.RedisAddrs, ","))
	}
	g.spawn("redis health", h.run)
}

func (h *health) ping() error {
	ctx, cancel := context.WithTimeout(context.Background(), max(h.g.cfg.RedisTimeout, healthTimeout))
	defer cancel()
	return h.g.store.Ping(ctx)
}

func (h *health) run() {
	t := time.NewTicker(healthEvery)
	defer t.Stop()
	for {
		select {
		case <-h.g.stop:
			return
		case <-t.C:
		}
		if err := h.ping(); err != nil {
			h.down(err)
		} else {
			h.upAgain()
		}
	}
}

func (h *health) up() bool { return h.isUp.Load() }

// down records that Redis failed to answer, from any part of the plugin.
func (h *health) down(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.isUp.Store(false)
	if !h.logged {
		return
	}
	h.logged = false
	g := h.g
	mode := "allow: the last known lists and the passwords still apply, failures are counted on this broker only"
	if g.cfg.DenyWhenRedisDown {
		mode = "deny: refusing every client"
	}
	g.log(LevelWarning, fmt.Sprintf("mosquitto-guard: redis at %s unreachable (%v); redis_unavailable %s until it is reachable again",
		strings.Join(g.cfg.RedisAddrs, ","), err, mode))
}

func (h *health) upAgain() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.isUp.Store(true)
	if h.logged {
		return
	}
	h.logged = true
	h.g.log(LevelNotice, "mosquitto-guard: redis at "+strings.Join(h.g.cfg.RedisAddrs, ",")+" is back: list checks resume")
}
