package plugin

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/backends/replica"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/ratelimit"
)

// startReplica starts keeping the local list replica in step with Redis,
// and waits (bounded) for its first load so that the broker starts with
// the lists in memory.
func (g *Guard) startReplica(rdb redis.UniversalClient) {
	kb := keys.Builder{Prefix: g.cfg.KeyPrefix}
	g.replica = replica.New(kb)
	g.sync = replica.NewSync(g.replica, rdb, replica.Options{
		DB:          g.cfg.RedisDB,
		Users:       g.cfg.Backend == BackendRedis,
		ResyncEvery: g.cfg.ReplicaResync,
		Log: func(warning bool, msg string) {
			level := LevelInfo
			if warning {
				level = LevelWarning
			}
			g.log(level, "mosquitto-guard: "+msg)
		},
		OnChange: g.listChanged,
		OnLost:   g.health.down,
	})
	ctx, cancel := context.WithCancel(context.Background())
	g.stopSync = cancel
	g.spawn("replica", func() { g.sync.Run(ctx) })
	g.spawn("replica sweep", func() {
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		for {
			select {
			case <-g.stop:
				return
			case <-t.C:
				g.replica.Sweep(g.now())
			}
		}
	})
	if !g.health.up() {
		return // lookups skip Redis until it is back; the replica loads then
	}
	deadline := time.Now().Add(initialLoadWait)
	for !g.sync.Ready() && time.Now().Before(deadline) && g.health.up() {
		time.Sleep(2 * time.Millisecond)
	}
}

// listChanged is called by the replica for every changed key: an
// operator's new ban disconnects the matching connections; an automatic ban
// lifted before its time (guardctl unban, redis-cli DEL) gives its key a
// full failure allowance again, here and in Redis.
func (g *Guard) listChanged(key string, e, old *replica.Entry) {
	if u, ok := strings.CutPrefix(key, g.replica.Keys().Throttle("")); ok {
		if e != nil && g.known != nil {
			g.known.prefetch(u, g.now()) // the username's devices are recognised from its first attempt on
		}
		return
	}
	kind, scope, value, ok := g.replica.Keys().Split(key)
	if !ok || kind != keys.Block {
		return
	}
	now := g.now()
	if e == nil {
		if old != nil && strings.HasPrefix(old.Value, ratelimit.ReasonPrefix) &&
			(old.Expires.IsZero() || now.Before(old.Expires.Add(-liftSlack))) {
			g.liftedEarly(scope, value)
		}
		return
	}
	if strings.HasPrefix(e.Value, ratelimit.ReasonPrefix) {
		return // an automatic ban: its client was refused already
	}
	if !e.Expires.IsZero() && !now.Before(e.Expires) {
		return
	}
	g.kickMatching(key, scope, value)
}

// liftSlack: a deletion this close to the entry's expiry is taken for the
// expiry itself (Redis reports an expired key a little late).
const liftSlack = 250 * time.Millisecond

// liftedEarly resets the failure count of a key whose automatic ban an
// operator lifted: otherwise its next failure would ban it again at once.
func (g *Guard) liftedEarly(scope keys.Scope, value string) {
	g.local.Reset(failKey{scope, value}.local())
	g.spawn("failure count reset", func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := g.counter.Reset(ctx, scope, value); err != nil {
			g.health.down(err)
			return
		}
		g.log(LevelNotice, fmt.Sprintf("mosquitto-guard: automatic ban of %s=%s lifted before its time: its failure count starts again", scope, quote(value)))
	})
}
