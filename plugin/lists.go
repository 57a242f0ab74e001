package plugin

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
	"github.com/mosquitto-guard/mosquitto-guard/store/replica"
)

// lookup answers the list checks (and the redis backend's user hash) from
// the replica once it is loaded, even while Redis is down: the last known
// lists, with their expiry honoured locally. Before that it asks Redis, and
// so it does while Redis refuses the replica's subscription (the replica
// then learns of a ban only at its next reload, replica_resync: a CONNECT
// asks Redis, as before the replica could load in that case). known is false
// when neither could answer.
// A re-authentication after a reload never asks for the live connections: it
// admits nothing, and a round trip per client of the reload's walk would
// stall the broker for as many round trips as it holds clients. For the same
// reason it is answered from a loaded replica even while the subscription
// is refused (300 clients held: 300 lookups, 11 137 PTTL, before): the
// replica is what kicks the clients it holds then too. The replica may then
// be a reload behind Redis, so a re-check it would refuse (a ban lifted
// since, for the redis backend a user added since) asks Redis: a client let
// in by Redis is not disconnected by a stale replica, and the common pass
// costs no round trip.
func (g *Guard) lookup(c *Client, ip netip.Addr, reauth bool) (ans store.Answer, known bool) {
	ans, known, _ = g.lookupAt(c, ip, reauth, g.now())
	return ans, known
}

// lookupAt is lookup with the time now read (a CONNECT reads the clock once
// for its checks, issue 12); local: answered from the replica, without a
// round trip to Redis (after which now is stale by up to redis_timeout).
func (g *Guard) lookupAt(c *Client, ip netip.Addr, reauth bool, now time.Time) (ans store.Answer, known, local bool) {
	q := store.Query{
		ClientID: c.ClientID, IP: ip, Username: c.Username, HasUsername: c.HasUsername, Cert: c.CertID,
		WantUser:  g.cfg.Backend == config.BackendRedis,
		WantConns: g.tracker != nil && g.cfg.Conflicts.Mode == config.ConflictDeny && !reauth,
		// The re-check after a reload refuses by operators' bans only:
		// automatic bans do not kick (atk51: a stranger's wrong passwords
		// from a NAT address dropped every device behind it at SIGHUP).
		OperatorsOnly: reauth,
	}
	if g.sync != nil && g.sync.Ready() {
		inStep := !g.sync.Unsubscribed() || !g.health.up()
		if inStep || reauth {
			ans = g.replica.Lookup(q, now)
			stale := !inStep && (ans.Block != nil || (q.WantUser && q.HasUsername && !ans.HasUser))
			if !stale {
				if q.WantConns && g.health.up() && !claims(c, g.cfg.Backend) { // claimed in checkConflict instead
					ans.Live = g.liveConns(c.ClientID)
					return ans, true, false // a round trip to Redis
				}
				return ans, true, true
			}
		}
	}
	if !g.health.up() {
		return store.Answer{}, false, true
	}
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.RedisTimeout)
	defer cancel()
	ans, err := g.store.Lookup(ctx, q)
	if err != nil {
		g.health.down(err)
		return store.Answer{}, false, false
	}
	if ans.KeyErr != nil {
		g.health.down(ans.KeyErr) // told, once per key and interval; not an outage
	}
	return ans, true, false
}

// listed puts an entry this broker wrote itself (an automatic ban, a
// username throttle) into the local replica at once, and tells the other
// brokers' replicas, for Redis without keyspace notifications.
func (g *Guard) listed(key, reason string, expires time.Time) {
	if g.replica != nil {
		_ = g.replica.Put(key, reason, expires)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	g.publishChange(ctx, key)
}

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
		OnManyChanges: func() {
			g.seedUnknownUsersDummy()
			g.recheckConns()
		},
		// The unknown users' dummy is seeded before the replica answers
		// its first lookup: after Ready, the first CONNECTs would get the
		// default dummy while the seed parses every user's hash (some
		// 230 ms with 200 000 users).
		OnFirstLoad: g.seedUnknownUsersDummy,
		// A reload that changes keys no notification told of (the users
		// back after a FLUSHALL; a costlier user added while notifications
		// are off) swaps them in, frees memory, then re-ranks them in
		// OnManyChanges or OnReloadChange: meanwhile unknown users got the
		// model of the users before (none after a flush: the default
		// dummy), 336 of them told from a bcrypt-11 user in one test. The
		// model is raised to the fresh users' most expensive before the
		// swap, so that it covers the users held before and after it.
		BeforeReloadSwap: g.raiseUnknownUsersDummy,
		OnLost:           g.replicaLost,
		OnFlushed:        g.replicaFlushed,
	})
	ctx, cancel := context.WithCancel(context.Background())
	g.stopSync = cancel
	g.spawn("replica", func() { g.sync.Run(ctx) })
	g.spawn("replica sweep", func() { every(g.stop, time.Minute, func() { g.replica.Sweep(g.now()) }) })
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
	if g.cfg.Backend == config.BackendRedis && strings.HasPrefix(key, g.replica.Keys().User("")) {
		switch {
		case old != nil && g.creds.isModel(old.Value) && (e == nil || e.Value != old.Value):
			// The model's user deleted or rehashed: the dummy follows the
			// users held now, not a removed one's cost (one scan, only for
			// that user's change).
			g.creds.resetHashes(g.replica.UserHashes())
		case e != nil:
			g.creds.noteHash(e.Value) // a user added or changed: the unknown users' dummy follows the most expensive
			if notified && g.creds.cheaperThanModel(e.Value) {
				// An operator's change (a reload's changes are counted by
				// the next full load's line instead).
				g.warnCheapUser(key)
			}
		}
		return
	}
	if u, ok := strings.CutPrefix(key, g.replica.Keys().Throttle("")); ok {
		if e != nil && g.known != nil {
			now := g.now()
			g.known.noteEpisode(u, now) // u is the Tracking form: made-up and long usernames too
			// Only an existing username's known sources are loaded: a
			// botnet keeping 10 000 made-up usernames throttled must not
			// crowd a fleet's set out of knownLoadedUsersMax. A long
			// username is prefetched at its first attempt.
			if !strings.HasPrefix(u, "sha256:") && g.userExists(u) {
				g.known.prefetch(u, now) // the username's devices are recognised from its first attempt on
			}
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
	if g.known != nil {
		// The replica's session broke: Redis may restart empty, faster than
		// the health probe looks (a kill and restart within 200 ms).
		g.known.forgetWritten(g.now())
	}
	if g.tracker != nil {
		g.tracker.RedisLost() // and so may tracking's marks
	}
	if perr := g.health.ping(); perr != nil {
		g.health.down(perr) // the ping's failure: the replica's err may be a reply about one key (atk70)
	}
	// Redis may have restarted, from a snapshot older than this broker's
	// live entries: they are recorded again once it answers.
	g.relistNow()
}

// replicaFlushed is called when the replica finds Redis's keys flushed or
// lost (its flush mark gone): the known sources went with them.
func (g *Guard) replicaFlushed() {
	if g.known != nil {
		g.known.forgetWritten(g.now())
		g.knownLostNow() // and the live connections' sources are written again now
	}
	if g.tracker != nil {
		g.tracker.RedisLost() // tracking's quiet and seen marks
	}
	g.relistNow() // and the live connections themselves
}

// userExists reports whether username is a user of the backend, from what
// this broker holds (the password file, or the replica's users).
func (g *Guard) userExists(username string) bool {
	switch g.cfg.Backend {
	case config.BackendFiles:
		_, ok := g.creds.users.Load().Hash(username)
		return ok
	case config.BackendRedis:
		return g.replica.Lookup(store.Query{Username: username, HasUsername: true, WantUser: true}, g.now()).HasUser
	}
	return false
}

// seedUnknownUsersDummy makes the redis backend's unknown users cost what its
// most expensive known user costs from the replica's load on, not only once
// such a user has been checked: before, a fresh broker answered an unknown
// username at once (the default dummy, ~1 ms) where a bcrypt-11 user took
// ~170 ms, telling every probed username apart until the first real check.
// On the sync goroutine: parsing each hash's cost is microseconds.
func (g *Guard) seedUnknownUsersDummy() {
	if g.cfg.Backend != config.BackendRedis {
		return
	}
	// A reload replaces the users: a deleted one's cost goes with it.
	if n := g.creds.resetHashes(g.replica.UserHashes()); n > 0 {
		// As the files backend says of a password file (credentials.apply):
		// a cheaper user costs less than an unknown one, and timing tells it
		// apart (a README-only attacker: $7$ 101 rounds beside 20 000, 0.6
		// against 11.9 ms at the median, e2e TestZZRedisBackendMixedCostsWarned).
		g.log(LevelWarning, fmt.Sprintf("mosquitto-guard: backend redis: %s mixes hash costs: %d users have a hash cheaper than the most expensive one by more than a tenth, or of another format, and timing can tell them from unknown users; rehash them with one format and cost",
			g.replica.Keys().User("*"), n))
	}
	g.creds.seeded.Store(true)
}

// raiseUnknownUsersDummy makes the redis backend's unknown users cost at
// least what the most expensive user of fresh costs, before fresh replaces
// the replica's users; the model is not lowered here (the users before
// still answer until the swap): OnManyChanges resets it to the users held.
func (g *Guard) raiseUnknownUsersDummy(fresh *replica.Replica) {
	if g.cfg.Backend != config.BackendRedis {
		return
	}
	if best := g.creds.mostExpensive(fresh.UserHashes()); best != nil {
		g.creds.noteHash(*best)
	}
}

// recheckConns is called when a reload changed too many keys to report
// one by one: every connection the replica now blocks by an operator's ban
// (not an automatic one, as in listChanged) is kicked, through kickMatching
// once per such ban. It holds g.mu for at most recheckChunk connections at
// a time, and looks them up in the replica unlocked (a scan: no record is
// reused meanwhile, records.go).
func (g *Guard) recheckConns() {
	done := map[string]bool{} // bans kickMatching ran for
	var chunk []*liveConn
	check := func() {
		g.scanPause()
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
	defer g.scanDone()
	n := 0
	g.mu.Lock()
	g.scanStartLocked(true)
	w := g.conns.walk() // every record there throughout is visited (connTable)
	// The walk is closed after a panic in check too.
	defer func() {
		if w.open() {
			g.mu.Lock()
			w.done()
			g.mu.Unlock()
		}
	}()
	for lc := w.next(); lc != nil; lc = w.next() {
		if !lc.flagged {
			chunk = append(chunk, lc)
		}
		if n++; n%recheckChunk == 0 {
			g.mu.Unlock()
			check()
			g.mu.Lock()
		}
	}
	w.done()
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
	g.local.Reset(k.local()) // and with it what a reconcile would count (owedFailures)
	// Through the failure queue: a failure counted before the lift must not
	// land after the reset and ban the key again at once.
	g.failures.addReset(k)
}

// cheapUserLogEvery bounds the redis backend's lines about one user key
// whose hash is cheaper than the most expensive user's (warnCheapUser): a
// script setting 100 000 such users logs one line per this, which counts
// the keys met since the line before, not one line per key.
const cheapUserLogEvery = time.Minute

// warnCheapUser says that key was set with a hash timing tells from unknown
// users', at most once per cheapUserLogEvery.
func (g *Guard) warnCheapUser(key string) {
	if !g.cheapAt.allowAt(g.now(), cheapUserLogEvery) {
		g.cheapMore.Add(1)
		return
	}
	more := ""
	if n := g.cheapMore.Swap(0); n > 0 {
		more = fmt.Sprintf(" (and %d more user keys since the last such line)", n)
	}
	g.log(LevelWarning, fmt.Sprintf("mosquitto-guard: backend redis: %s mixes hash costs: its hash is cheaper than the most expensive user's by more than a tenth, or of another format, and timing can tell it from unknown users%s; rehash it with the others' format and cost (said at most once per %v)",
		logval.Quote(key), more, cheapUserLogEvery))
}
