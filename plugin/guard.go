package plugin

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/backends/hashes"
	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/conflicts"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/metrics"
	"github.com/mosquitto-guard/mosquitto-guard/ratelimit"
	"github.com/mosquitto-guard/mosquitto-guard/store"
	"github.com/mosquitto-guard/mosquitto-guard/store/replica"
)

// Store is what the guard asks of Redis; *store.Store implements it.
type Store interface {
	Lookup(ctx context.Context, q store.Query) (store.Answer, error)
	LiveConns(ctx context.Context, clientID string) ([]store.Conn, error)
	PublishChange(ctx context.Context, key string) error
	// ClaimThrottle writes username's throttle key unless it exists
	// (store.Store.ClaimThrottle): the guess a lapsed throttle admits.
	ClaimThrottle(ctx context.Context, username, reason string, ttl time.Duration) (bool, error)
	// ReleaseThrottle deletes it if it still holds reason
	// (store.Store.ReleaseThrottle): the claimed guess was right.
	ReleaseThrottle(ctx context.Context, username, reason string) (bool, error)
	Ping(ctx context.Context) error
	Close() error
}

// FailCounter counts failed authentications and bans; *ratelimit.Limiter implements it.
type FailCounter interface {
	// FailAttempt counts a failure and bans past the limit; a, kept
	// across the caller's tries of one failure, makes a try after an
	// error go on from where the last stopped (ratelimit.Attempt).
	FailAttempt(ctx context.Context, scope keys.Scope, value string, a *ratelimit.Attempt) (*ratelimit.Ban, error)
	// ThrottleFailAttempt counts a failure of a username given in its
	// keys.Tracking form (a queued failure keeps no longer form), a as
	// FailAttempt's.
	ThrottleFailAttempt(ctx context.Context, tracked string, limit int, a *ratelimit.Attempt) (*ratelimit.Throttle, error)
	Reset(ctx context.Context, scope keys.Scope, value string) error
}

// Guard is one plugin instance.
type Guard struct {
	// confirmHook, set by a test, runs after each of confirmDue's holds of
	// g.mu: a DISCONNECT the broker thread handles there.
	confirmHook atomic.Pointer[func()]

	cfg       config.Options
	log       Logger
	published logGate // publishChange's refusals logged
	store     Store   // the broker thread's calls, bounded by redis_timeout
	bgStore   Store   // background work's calls: longer deadlines (store.Options.BackgroundTimeout)
	now       func() time.Time
	out       Output

	creds        *credentials       // the backend's users, the password checks and their cache
	reloads      *userReloads       // files backend: password files read off the broker thread (userreload.go); nil otherwise
	health       *health            // whether Redis answers
	refusals     *refusals          // the refusal log lines, bounded
	failures     *failureQueue      // failures counted in Redis, in the background
	local        *ratelimit.Local   // this broker's own failure count, on the broker thread
	localUser    *ratelimit.Local   // the same for each username's failures from every source (the throttle)
	localClaimed *ratelimit.Local   // throttled usernames: failures of sources known by client ID only
	owed         *owedFailures      // failures counted here alone while Redis did not answer
	replaying    atomic.Bool        // replayOwed's goroutine is queueing
	known        *knownSources      // nil without Redis or with username_fail_limit 0
	knownLost    chan struct{}      // Redis lost its keys: the live connections' known sources are written again (rewriteKnownLoop)
	knownRetry   atomic.Bool        // a rewrite failed: again once Redis answers
	relistReq    chan struct{}      // the live connections may have gone from Redis: recorded again (relistLoop); nil without conflict tracking
	cheapAt      logGate            // the warnCheapUser lines
	cheapMore    atomic.Int64       // the keys warnCheapUser met since, unlogged
	tracker      *conflicts.Tracker // nil when clientid_conflict is off
	replica      *replica.Replica   // nil without a Redis client (unit tests)
	sync         *replica.Sync
	stopSync     context.CancelFunc
	metrics      *guardMetrics   // nil without metrics_addr
	metricsSrv   *metrics.Server // its endpoint

	mu      sync.Mutex
	conns   connTable // connections this guard let through, until DISCONNECT; offline sessions they left
	offline int       // offline sessions in conns, at most offlineMax
	byID    idIndex   // client ID -> its newest connection here (byid.go)
	// displaced: a connection -> the one it took over, until either ends
	// (byID goes back to that one if it is still here when the newer one
	// ends). Few: a takeover's, until the old connection's DISCONNECT.
	displaced map[*liveConn]*liveConn
	pending   []pendingConn // deferred connections not yet confirmed
	recs      records       // ended records kept for reuse (records.go)
	// scans counts the kick scans started (scanStartLocked, under g.mu): a
	// CONNECT that sees it move between its list check and its admit may
	// have been missed by one (banRaced).
	scans atomic.Uint64
	// afterCredentials, when set (tests), runs after a CONNECT's password
	// check, before its second look at the lists.
	afterCredentials func()

	stop chan struct{}
	wg   sync.WaitGroup
}

// Output is where a guard's log lines, MQTT messages and kicks go; each
// must be safe to call from any goroutine (the cgo layer queues them for
// the broker thread).
type Output struct {
	Log     Logger
	Publish Publisher
	// Kick disconnects, without its will, the connection handle (whose
	// client ID is clientID) if plugin.Guard.KickDue still says so.
	Kick func(handle uintptr, clientID string)
	// Flagged is told how many connections are flagged banned, awaiting their kick.
	Flagged func(delta int)
	// Wake says the broker thread has work of the guard's (a password file
	// read to apply): its next TICK calls Guard.Tick. Nil: the next CONNECT
	// or TICK that reaches the guard does it.
	Wake func()
}

// Deps are the guard's connections to the outside; tests pass fakes.
// Everything but Store serves background work.
type Deps struct {
	Store      Store           // the broker thread's lookups
	Background Store           // the same Redis for background work; nil: Store
	Conflicts  conflicts.Store // nil: no conflict detection
	Counter    FailCounter     // failed-auth counting and bans
	// Redis is the replica's client. Nil: no replica, every lookup asks
	// Store, and the redis backend's unknown-user dummy follows only the
	// users whose passwords it has checked (no load to take their class
	// from; plugin.New always gives one).
	Redis redis.UniversalClient
}

// initialLoadWait bounds how long plugin_init waits for the replica's
// first load; lookups ask Redis directly until it is done.
const initialLoadWait = 10 * time.Second

// New builds a Guard from cfg, connected to the Redis that cfg names. An
// unreadable password file is an error, and so is a TLS setting that Redis
// proves wrong at once (checkTLS); an unreachable Redis is not: it is
// logged and retried in the background.
//
// Only the broker thread's lookups and the health probe (which judges the
// waits of those lookups) use the client bounded by redis_timeout; failure
// counting, conflict tracking and the replica use the background client, so
// a Redis stall longer than redis_timeout fails none of them. go-redis's own log lines go to the broker's log.
func New(cfg config.Options, out Output) (*Guard, error) {
	o := cfg.StoreOptions()
	o.Log = func(msg string) {
		if out.Log != nil {
			out.Log(LevelWarning, "mosquitto-guard: redis client: "+msg)
		}
	}
	store := store.New(o, keys.Builder{Prefix: cfg.KeyPrefix})
	if err := checkTLS(store, cfg); err != nil {
		store.Close()
		return nil, err
	}
	if err := checkSettings(store, cfg); err != nil {
		store.Close()
		return nil, err
	}
	bg := store.Background()
	counter := ratelimit.New(bg.Client(), bg.Keys(), cfg.Policy)
	g, err := NewWith(cfg, out, Deps{Store: store, Background: bg, Conflicts: bg, Counter: counter, Redis: bg.Client()})
	if err != nil {
		store.Close()
		return nil, err
	}
	return g, nil
}

// NewWith builds a Guard on the given dependencies. With metrics_addr set,
// the metrics endpoint is opened first: an address that cannot be listened
// on is an error (an *config.OptionError) before anything else is started.
func NewWith(cfg config.Options, out Output, d Deps) (_ *Guard, err error) {
	var srv *metrics.Server
	if cfg.MetricsAddr != "" {
		if srv, err = metrics.Listen(cfg.MetricsAddr); err != nil {
			return nil, &config.OptionError{Option: "metrics_addr", Value: cfg.MetricsAddr,
				Expected: "a host:port this broker can listen on (" + err.Error() + ")"}
		}
		defer func() {
			if err != nil {
				srv.Close()
			}
		}()
	}
	if out.Kick == nil {
		out.Kick = func(uintptr, string) {}
	}
	if out.Flagged == nil {
		out.Flagged = func(int) {}
	}
	g := &Guard{
		cfg:     cfg,
		log:     out.Log,
		store:   d.Store,
		bgStore: d.Background,
		out:     out,
		now:     time.Now,
		conns:   newConnTable(),
		byID:    newIDIndex(),
		stop:    make(chan struct{}),
	}
	if g.bgStore == nil {
		g.bgStore = d.Store
	}
	if srv != nil {
		g.metrics = newGuardMetrics(cfg.Backend)
	}
	g.creds = &credentials{backend: cfg.Backend, passwordFile: cfg.PasswordFile, usernameMax: cfg.UsernameMaxBytes, log: g.log,
		verifier: hashes.Verifier{SaltEncoding: hashes.SaltEncoding(cfg.SaltEncoding)},
		cache:    newVerifyCache(cfg.AuthCache)}
	if cfg.Backend == config.BackendFiles {
		if err := g.creds.load(); err != nil {
			return nil, err
		}
		g.reloads = newUserReloads()
		g.spawn("password_file reload", g.reloadLoop)
	}
	// The parts below read the clock through clock, so that a test setting
	// g.now after NewWith moves them all.
	clock := func() time.Time { return g.now() }
	g.refusals = newRefusals(g.log, clock, cfg.FailIPv6Prefix, cfg.Policy.Window)
	g.spawn("refusal log summaries", func() { g.refusals.run(g.stop) })
	g.local = ratelimit.NewLocal(cfg.Policy, ratelimit.DefaultLocalKeys)
	userPolicy := cfg.Policy
	userPolicy.Limit = max(cfg.UsernameFailLimit, 1)
	g.localUser = ratelimit.NewLocal(userPolicy, ratelimit.DefaultLocalKeys)
	g.localClaimed = ratelimit.NewLocal(ratelimit.Policy{Limit: 1, Window: cfg.Policy.Window}, ratelimit.DefaultLocalKeys)
	g.owed = newOwedFailures()
	g.health = newHealth(healthDeps{probe: g.store.Ping, timeout: cfg.RedisTimeout, log: g.log,
		where: cfg.RedisWhere(), deny: cfg.DenyWhenRedisDown})
	g.failures = newFailureQueue(failureDeps{counter: d.Counter, policy: cfg.Policy, userLimit: cfg.UsernameFailLimit,
		log: g.log, now: clock, down: g.health.down, listed: g.listed, spawn: g.spawn, stop: g.stop, m: g.metrics,
		owe: g.owed.add, replay: g.replayOwed, up: g.health.up,
		localDebt: func(k failKey) float64 { return g.local.Debt(k.local(), g.now()) },
		userDebt:  func(u string) float64 { return g.localUser.Debt(u, g.now()) }})
	if d.Redis != nil && cfg.UsernameFailLimit > 0 {
		g.known = newKnownSources(knownDeps{rdb: d.Redis, kb: keys.Builder{Prefix: cfg.KeyPrefix},
			max: cfg.KnownSourcesMax, window: cfg.Conflicts.Window, failWindow: cfg.Policy.Window, userLimit: cfg.UsernameFailLimit,
			down: g.health.down, log: g.log, spawn: g.spawn, stop: g.stop})
		g.knownLost = make(chan struct{}, 1)
		g.spawn("known sources rewrite", g.rewriteKnownLoop)
	}
	tracking := d.Conflicts != nil && cfg.Conflicts.Mode != config.ConflictOff
	if tracking {
		g.relistReq = make(chan struct{}, 1) // before anything may call relistNow
	}
	// Redis back: it may have come back empty (a restart), so the known
	// sources written before are written again at their next success, and
	// a rewrite of the live connections' sources that failed is tried
	// again. (The live connections are recorded again when there is cause
	// to think they went: relistNow. Redis marked down by one slow answer,
	// and up 200 ms later, lost nothing: a relist at each was 2 000 writes
	// for 2 000 held connections, atk30.)
	// And the failures counted here alone meanwhile are counted in it.
	g.health.back = func() {
		if g.known != nil {
			g.known.forgetWritten(g.now())
			if g.knownRetry.Swap(false) {
				g.knownLostNow()
			}
		}
		g.replayOwed()
	}
	g.spawn("redis health", func() { g.health.run(g.stop) })
	if tracking {
		g.tracker = newTracker(cfg, d.Conflicts, d.Store, g.log, out.Publish, clock, g.metrics.found, g.relistNow)
		g.spawn("client ID tracking", func() { g.tracker.Run(g.stop) })
		g.spawn("deferred confirmation", g.confirmLoop)
		g.spawn("live connections relist", g.relistLoop)
		if r, ok := d.Conflicts.(interface{ RefusedUses() uint64 }); ok {
			g.spawn("client ID index report", func() { g.reportRefusedUses(r.RefusedUses, cfg.ClientIDsMax) })
		}
	}
	if d.Redis != nil {
		g.startReplica(d.Redis)
	} else {
		g.creds.seeded.Store(true) // no load will seed it (Deps.Redis)
	}
	if srv != nil {
		g.metrics.watch(g)
		g.metricsSrv = srv
		srv.Serve(g.metrics.reg, func(msg string) { g.log(LevelError, "mosquitto-guard: "+msg) })
		g.log(LevelNotice, "mosquitto-guard: metrics on http://"+srv.Addr().String()+metrics.Path)
	}
	return g, nil
}

// TrimDue reports whether the guard's background workers (the conflict
// tracker, the known-sources writer) hold buffers grown for a burst of
// connections that they give back once idle for half a second: the cgo
// layer's heap release waits for that (issue 12), or those buffers, up to
// about a megabyte after 8 000 CONNECTs, stay in the heap it leaves behind.
// Any goroutine may call it, also after Close.
func (g *Guard) TrimDue() bool {
	return (g.tracker != nil && g.tracker.TrimDue()) || (g.known != nil && g.known.trimDue.Load())
}

// Close stops the guard's goroutines and closes Redis, within CloseBound
// however Redis behaves. Safe to call more than once (and, at exit, from
// goroutines of the cgo layer's closeAll, one per instance).
func (g *Guard) Close() {
	select {
	case <-g.stop:
		return
	default:
	}
	close(g.stop)
	if g.metricsSrv != nil {
		g.metricsSrv.Close() // the port is free again on return
	}
	if g.stopSync != nil {
		g.stopSync()
	}
	// The broker waits for this at exit (plugin cleanup), after it has
	// stopped serving: bounded by CloseBound in all, however Redis behaves.
	ctx, cancel := context.WithTimeout(context.Background(), CloseBound)
	defer cancel()
	if !waitGroup(ctx, &g.wg) {
		g.log(LevelWarning, fmt.Sprintf("mosquitto-guard: stopping without waiting more than %s for background work on redis", CloseBound))
	}
	// The reap is tried whatever the health probe last saw: a Redis that
	// was down may answer now (atk52: Redis back 1 s into the cleanup, the
	// probe's flag still down, the reap skipped, and another broker under
	// deny refused this one's devices for up to broker_lease after it
	// stopped). A Redis still down fails it at once, or at ctx's end when
	// hung: bounded by CloseBound like the rest; then the lease running out
	// clears this broker's connections.
	if g.tracker != nil && ctx.Err() == nil {
		g.tracker.Close(ctx)
	}
	// go-redis's Close of a Sentinel client waits for a dial to the
	// sentinels in progress (about 1 s seen with them down): bounded too.
	closed := make(chan struct{})
	go func() {
		g.store.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-ctx.Done():
	}
	g.creds.cache.free() // its mapping (vcache.go): no CONNECT comes after the cleanup
}

// CloseBound bounds Close, and the process's cleanup of all its instances
// (closed side by side by the cgo layer): background work still waiting on a Redis that does not answer
// (a dial, a retry) is not waited for past it. The process is exiting; a Go
// shared library is never unloaded, so the goroutines left behind end with
// it.
const CloseBound = 1500 * time.Millisecond

// waitGroup waits for wg until ctx is done, and reports whether it ended.
func waitGroup(ctx context.Context, wg *sync.WaitGroup) bool {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-ctx.Done():
		return false
	}
}

// Reload re-reads the password file (on SIGHUP), off the broker thread,
// which waits at most reloadWait for it (userreload.go). A file that cannot
// be read, or that yields no user where users were loaded before (truncated,
// or replaced by lines that are not users), keeps the users loaded before and
// says so at error level: Mosquitto re-authenticates every client right after
// a reload and would otherwise disconnect them all.
//
// The verification cache is kept: clearing it here would make each of those
// re-authentications pay a full hash on the broker thread (20 000 clients
// with 100 000-round PBKDF2 stalled the broker for about 100 s). An entry is
// bound to the hash it was verified against, so a changed password misses,
// and a removed user is refused as unknown before the cache is asked.
func (g *Guard) Reload() {
	if g.cfg.Backend != config.BackendFiles {
		return
	}
	g.reloadUsers()
}

// spawn runs fn in a goroutine that Close waits for. A panic in it is logged
// and swallowed: a panic escaping any goroutine would kill the broker.
// every calls fn every d until stop is closed (not at once: first after d).
// The one ticker loop of the guard's background work.
func every(stop <-chan struct{}, d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			fn()
		}
	}
}

// reportRefusedUses logs, every 10 s, how many uses of client IDs tracking
// did not remember because their principal's index was full
// (conflict_clientids_max): a fleet sharing one username or certificate,
// or every anonymous client, past it is no longer watched on its new
// client IDs, and the operator must know.
func (g *Guard) reportRefusedUses(refused func() uint64, max int) {
	var last uint64
	every(g.stop, 10*time.Second, func() {
		if n := refused(); n > last {
			g.log(LevelWarning, fmt.Sprintf("mosquitto-guard: %d uses of client IDs not remembered for client-ID conflicts: their principal has %d client IDs recorded already (conflict_clientids_max; a fleet sharing one username or certificate, or every anonymous client, needs it above its number of devices)", n-last, max))
			last = n
		}
	})
}

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
