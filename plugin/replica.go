package plugin

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store/replica"
)

// startReplica starts keeping the local list replica in step with Redis,
// and waits (bounded) for its first load so that the broker starts with
// the lists in memory.
func (g *Guard) startReplica(rdb redis.UniversalClient) {
	kb := keys.Builder{Prefix: g.cfg.KeyPrefix}
	g.replica = replica.New(kb)
	g.sync = replica.NewSync(g.replica, rdb, replica.Options{
		DB:          g.cfg.RedisDB,
		Users:       g.cfg.Backend == config.BackendRedis,
		ResyncEvery: g.cfg.ReplicaResync,
		Log: func(warning bool, msg string) {
			level := LevelInfo
			if warning {
				level = LevelWarning
			}
			g.log(level, "mosquitto-guard: "+msg)
		},
		OnChange:       func(key string, e, old *replica.Entry) { g.listChanged(key, e, old, true) },
		OnReloadChange: func(key string, e, old *replica.Entry) { g.listChanged(key, e, old, false) },
		OnManyChanges:  g.recheckConns,
		OnLost:         g.replicaLost,
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
//
// notified: a notification told of the change. A reload's finding that an
// automatic ban is gone does not reset its count: a FLUSHALL or an empty
// restart of Redis is no operator lifting a ban, and resetting this broker's
// own count then would give a guesser fail_limit+1 fresh checks per flush.
func (g *Guard) listChanged(key string, e, old *replica.Entry, notified bool) {
	if u, ok := strings.CutPrefix(key, g.replica.Keys().Throttle("")); ok {
		if e != nil && g.known != nil && !strings.HasPrefix(u, "sha256:") { // a long username is prefetched at its first attempt
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
		if notified && old != nil && keys.IsAutoBan(old.Value) &&
			(old.Expires.IsZero() || now.Before(old.Expires.Add(-liftSlack))) {
			g.liftedEarly(scope, value)
		}
		return
	}
	if keys.IsAutoBan(e.Value) {
		return // an automatic ban: its client was refused already
	}
	if !e.Expires.IsZero() && !now.Before(e.Expires) {
		return
	}
	g.kickMatching(key, scope, value)
}

// replicaLost is called when changes stopped reaching the replica. That
// alone does not make Redis unavailable (redis_unavailable deny refusing
// everyone): Redis may have cut only the subscription (CLIENT KILL, the
// pubsub output buffer limit) or refused one load. Redis is marked down when
// it does not answer a ping either; the sync then subscribes and reloads again.
func (g *Guard) replicaLost(err error) {
	if perr := g.health.ping(); perr != nil {
		g.health.down(err)
	}
}

// recheckConns is called when a reload changed too many keys to report
// one by one: every connection the replica now blocks by an operator's ban
// (not an automatic one, as in listChanged) is kicked, through kickMatching
// once per such ban. It holds g.mu for at most recheckChunk connections at
// a time, and looks them up in the replica unlocked.
func (g *Guard) recheckConns() {
	done := map[string]bool{} // bans kickMatching ran for
	var chunk []*liveConn
	check := func() {
		now := g.now()
		for _, lc := range chunk {
			b := g.replica.Lookup(queryOf(lc), now).Block
			if b == nil || done[b.Key] || keys.IsAutoBan(b.Reason) {
				continue
			}
			done[b.Key] = true
			g.kickMatching(b.Key, b.Scope, b.Value)
		}
		chunk = chunk[:0]
	}
	n := 0
	g.mu.Lock()
	for _, lc := range g.conns {
		if !lc.flagged {
			chunk = append(chunk, lc)
		}
		if n++; n%recheckChunk == 0 {
			g.mu.Unlock()
			check()
			g.mu.Lock()
		}
	}
	g.mu.Unlock()
	check()
}

// recheckChunk bounds the connections recheckConns reads per hold of g.mu.
const recheckChunk = 256

// liftSlack: a deletion this close to the entry's expiry is taken for the
// expiry itself (Redis reports an expired key a little late).
const liftSlack = 250 * time.Millisecond

// liftedEarly resets the failure count of a key whose automatic ban an
// operator lifted: otherwise its next failure would ban it again at once.
func (g *Guard) liftedEarly(scope keys.Scope, value string) {
	k := failKey{scope, value}
	g.local.Reset(k.local())
	// Through the failure queue: a failure counted before the lift must not
	// land after the reset and ban the key again at once.
	g.failures.addReset(k)
}

// resetCount resets k's count in Redis (failure worker).
func (g *Guard) resetCount(k failKey) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := g.counter.Reset(ctx, k.scope, k.value); err != nil {
		g.health.down(err)
		return
	}
	g.log(LevelNotice, fmt.Sprintf("mosquitto-guard: automatic ban of %s=%s lifted before its time: its failure count starts again", k.scope, logval.Quote(k.value)))
}
