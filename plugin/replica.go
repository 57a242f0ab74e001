package plugin

import (
	"context"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/backends/replica"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
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
// operator's new ban disconnects the matching connections.
func (g *Guard) listChanged(key string, e *replica.Entry) {
	if e == nil || strings.HasPrefix(e.Value, "auto:") {
		return // lifted, or an automatic ban (its client was refused already)
	}
	kind, scope, value, ok := g.replica.Keys().Split(key)
	if !ok || kind != keys.Block {
		return
	}
	if !e.Expires.IsZero() && !g.now().Before(e.Expires) {
		return
	}
	g.kickMatching(key, scope, value)
}
