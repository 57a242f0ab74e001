package plugin

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// health tracks whether Redis answers. The hot path asks no Redis question
// once the replica is loaded, so nothing there would notice a Redis that hangs
// (SIGSTOP, a stuck failover) rather than refusing: one goroutine pings it
// every healthEvery, whatever the state, and any Redis error seen anywhere in
// the plugin marks it down at once (but a WRONGTYPE reply: see down). While
// it is down the hot path skips Redis entirely, and redis_unavailable deny
// refuses every client.
//
// Bounds: a Redis that stops answering is seen within healthEvery +
// healthTimeout (700 ms); one that answers again within healthEvery (200 ms)
// plus its answer. Each change of state is logged once.
type health struct {
	healthDeps
	isUp atomic.Bool

	mu     sync.Mutex // orders the log lines of state changes
	logged bool       // the state last logged: true up

	wrongMu sync.Mutex
	wrongBy map[string]*logGate // the WRONGTYPE lines by their text (it names the key), at most wrongTypeKeys
	wrongAt logGate             // the WRONGTYPE lines past wrongTypeKeys texts

	// back, if set (before run starts), is called when Redis answers
	// again after it was seen down, under mu: it must not block.
	back func()
}

// healthDeps are what the health probe needs of the guard.
type healthDeps struct {
	probe   func(ctx context.Context) error // asks Redis (the broker thread's client)
	timeout time.Duration                   // redis_timeout
	log     Logger
	where   string // the Redis (config.Options.RedisWhere), for the log lines
	deny    bool   // redis_unavailable deny, for the log lines
}

const (
	healthEvery   = 200 * time.Millisecond
	healthTimeout = 500 * time.Millisecond
)

// newHealth asks Redis once, and logs the answer; run keeps asking.
func newHealth(d healthDeps) *health {
	h := &health{healthDeps: d, logged: true}
	if err := h.ping(); err != nil {
		h.down(err)
	} else {
		h.isUp.Store(true)
		h.log(LevelInfo, "mosquitto-guard: connected to redis at "+h.where)
	}
	return h
}

// ping asks Redis, bounded by redis_timeout (at least healthTimeout).
func (h *health) ping() error {
	ctx, cancel := context.WithTimeout(context.Background(), max(h.timeout, healthTimeout))
	defer cancel()
	return h.probe(ctx)
}

// run pings Redis every healthEvery until stop.
func (h *health) run(stop <-chan struct{}) {
	every(stop, healthEvery, func() {
		if err := h.ping(); err != nil {
			h.down(err)
		} else {
			h.upAgain()
		}
	})
}

func (h *health) up() bool { return h.isUp.Load() }

// down records that Redis failed to answer, from any part of the plugin.
// A WRONGTYPE reply is an answer about one key (an operator's key of
// another type under the plugin's prefix): Redis is not marked down, and it
// is logged at most once per wrongTypeLogEvery. Marked down, each use of
// that key took Redis down until the probe saw it up again, refusing every
// client meanwhile under redis_unavailable deny (TestWrongTypeIsNoOutage).
func (h *health) down(err error) {
	if store.IsKeyReply(err) { // WRONGTYPE, a value no command can use: the store's errors wrap it (atk68, atk69)
		h.wrongType(err)
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.isUp.Store(false)
	if !h.logged {
		return
	}
	h.logged = false
	mode := "allow: the last known lists and the passwords still apply, failures are counted on this broker only"
	if h.deny {
		mode = "deny: refusing every client"
	}
	// An error reply is an answer: Redis is there and refuses (a rotated
	// password, an ACL change, OOM); the line says so. It keeps the word
	// "unreachable", which operators' alerts match.
	what := "unreachable"
	if store.IsReply(err) {
		what = "unreachable: it refuses the plugin's commands"
	}
	h.log(LevelWarning, fmt.Sprintf("mosquitto-guard: redis at %s %s (%v); redis_unavailable %s until it answers again",
		h.where, what, store.OneLine(err), mode))
}

func (h *health) upAgain() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.isUp.Store(true)
	if h.logged {
		return
	}
	h.logged = true
	h.log(LevelNotice, "mosquitto-guard: redis at "+h.where+" is back: list checks resume")
	if h.back != nil {
		h.back()
	}
}

// wrongTypeLogEvery: a WRONGTYPE reply about one key is logged at most
// once per this; replies about up to wrongTypeKeys keys are gated apart (one
// key mended, the next is told: atk68), the rest share one gate; a key's
// gate is dropped once it has been quiet for the interval and the table is
// full. At most wrongTypeKeys + 1 lines per wrongTypeLogEvery.
const (
	wrongTypeLogEvery = 10 * time.Minute
	wrongTypeKeys     = 32
)

// wrongType logs a WRONGTYPE reply, at most once per wrongTypeLogEvery.
func (h *health) wrongType(err error) {
	text := store.OneLine(err)
	h.wrongMu.Lock()
	g := h.wrongBy[text]
	if g == nil && len(h.wrongBy) >= wrongTypeKeys {
		// Full: the gates whose key has been quiet for an interval go
		// (atk70: kept for ever, a 33rd key over a broker's life was told
		// only through the shared gate).
		now := time.Now()
		for t, old := range h.wrongBy {
			if old.idle(now, wrongTypeLogEvery) {
				delete(h.wrongBy, t)
			}
		}
	}
	if g == nil && len(h.wrongBy) < wrongTypeKeys {
		if h.wrongBy == nil {
			h.wrongBy = make(map[string]*logGate, wrongTypeKeys)
		}
		g = new(logGate)
		h.wrongBy[text] = g
	}
	if g == nil {
		g = &h.wrongAt
	}
	// Under wrongMu: a gate just made (no line yet, so idle) is not dropped
	// by another caller before it lets its line through (atk71).
	ok := g.allow(wrongTypeLogEvery)
	h.wrongMu.Unlock()
	if !ok {
		return
	}
	h.log(LevelWarning, fmt.Sprintf("mosquitto-guard: redis at %s holds a key of another type or value than the plugin expects (%s): delete or rename it (said at most once per %v for this key)",
		h.where, text, wrongTypeLogEvery))
}
