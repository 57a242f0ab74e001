package plugin

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/backends/files"
	"github.com/mosquitto-guard/mosquitto-guard/backends/hashes"
	"github.com/mosquitto-guard/mosquitto-guard/backends/redisstore"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/ratelimit"
)

// Store is what the guard asks of Redis; *redisstore.Store implements it.
type Store interface {
	Lookup(ctx context.Context, q redisstore.Query) (redisstore.Answer, error)
	Ping(ctx context.Context) error
	CheckRanges(ctx context.Context) ([]redisstore.BadRange, error)
	Close() error
}

// FailCounter counts failed authentications and bans; *ratelimit.Limiter implements it.
type FailCounter interface {
	Fail(ctx context.Context, scope keys.Scope, value string) (*ratelimit.Ban, error)
}

// Guard is one plugin instance.
type Guard struct {
	cfg      Config
	log      Logger
	store    Store
	counter  FailCounter
	verifier hashes.Verifier
	users    atomic.Pointer[files.Store]
	now      func() time.Time

	health    health
	failures  *failureQueue
	conflicts *conflicts // nil when clientid_conflict is off

	mu      sync.Mutex
	conns   map[uintptr]*liveConn // connections this guard let through, until DISCONNECT
	byID    map[string]*liveConn  // client ID -> its newest connection here
	pending []*liveConn           // deferred connections not yet confirmed

	stop chan struct{}
	wg   sync.WaitGroup
}

// liveConn is one connection this guard let through.
type liveConn struct {
	handle   uintptr
	clientID string
	conn     redisstore.Conn
	other    *redisstore.Conn // the connection of this broker it took over, if any
	pending  bool             // deferred to a later check: confirmed after confirmDelay without DISCONNECT
	since    time.Time
}

// confirmDelay: a client this plugin deferred and a later check refused is
// disconnected within the same broker loop; one still there after this
// was let in.
const confirmDelay = 500 * time.Millisecond

// Output is where a guard's log lines and MQTT messages go.
type Output struct {
	Log     Logger
	Publish Publisher
}

// New builds a Guard from cfg, connected to the Redis that cfg names. An
// unreadable password file is an error; an unreachable Redis is not: it is
// logged and retried in the background.
func New(cfg Config, out Output) (*Guard, error) {
	store := redisstore.New(redisstore.Options{
		Addrs: cfg.RedisAddrs, Username: cfg.RedisUsername, Password: cfg.RedisPassword,
		DB: cfg.RedisDB, Timeout: cfg.RedisTimeout,
	}, keys.Builder{Prefix: cfg.KeyPrefix})
	counter := ratelimit.New(store.Client(), store.Keys(), cfg.Policy)
	g, err := NewWith(cfg, out, store, store, counter)
	if err != nil {
		store.Close()
		return nil, err
	}
	return g, nil
}

// NewWith builds a Guard on the given stores and counter (tests use fakes).
// A nil ConflictStore turns conflict detection off.
func NewWith(cfg Config, out Output, store Store, cs ConflictStore, counter FailCounter) (*Guard, error) {
	g := &Guard{
		cfg:      cfg,
		log:      out.Log,
		store:    store,
		counter:  counter,
		verifier: hashes.Verifier{SaltEncoding: hashes.SaltEncoding(cfg.SaltEncoding)},
		now:      time.Now,
		conns:    map[uintptr]*liveConn{},
		byID:     map[string]*liveConn{},
		stop:     make(chan struct{}),
	}
	if cfg.Backend == BackendFiles {
		if err := g.loadUsers(); err != nil {
			return nil, err
		}
	}
	g.health.init(g)
	g.failures = newFailureQueue(g)
	if cs != nil && cfg.Conflicts.Mode != ConflictOff {
		g.conflicts = newConflicts(g, cs, out.Publish)
		g.spawn("client ID tracking", g.conflicts.run)
		g.spawn("deferred confirmation", g.confirmLoop)
	}
	g.startBackground()
	return g, nil
}

// Close stops the guard's goroutines and closes Redis.
func (g *Guard) Close() {
	select {
	case <-g.stop:
		return
	default:
	}
	close(g.stop)
	g.wg.Wait()
	if g.conflicts != nil {
		g.conflicts.close()
	}
	g.store.Close()
}

// Reload re-reads the password file (on SIGHUP). A file that cannot be read
// keeps the users loaded before, and says so.
func (g *Guard) Reload() {
	if g.cfg.Backend != BackendFiles {
		return
	}
	if err := g.loadUsers(); err != nil {
		g.log(LevelError, "mosquitto-guard: "+err.Error()+"; keeping the users loaded before")
	}
}

func (g *Guard) loadUsers() error {
	users, skipped, err := files.Load(g.cfg.PasswordFile, g.verifier)
	if err != nil {
		return &OptionError{"password_file", g.cfg.PasswordFile, "a readable mosquitto_passwd file (" + err.Error() + ")"}
	}
	for _, s := range skipped {
		g.log(LevelWarning, "mosquitto-guard: skipped "+s.Error())
	}
	g.users.Store(users)
	g.log(LevelInfo, fmt.Sprintf("mosquitto-guard: loaded %d users from %s", users.Len(), g.cfg.PasswordFile))
	return nil
}

// Disconnected forgets a connection (MOSQ_EVT_DISCONNECT).
func (g *Guard) Disconnected(handle uintptr) {
	g.mu.Lock()
	lc := g.conns[handle]
	delete(g.conns, handle)
	if lc != nil && g.byID[lc.clientID] == lc {
		delete(g.byID, lc.clientID)
	}
	recorded := lc != nil && !lc.pending
	g.mu.Unlock()
	if recorded && g.conflicts != nil {
		g.conflicts.enqueue(conflictEvent{kind: evDisconnect, clientID: lc.clientID, conn: lc.conn})
	}
}

// reauth reports whether handle is a connection this guard already let
// through: the broker re-runs authentication for every client after a
// reload; a refusal then is not an attack, nor a success a new connection.
func (g *Guard) reauth(handle uintptr) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.conns[handle]
	return ok
}

// admit records a connection let through; pending when a later check decides.
func (g *Guard) admit(c Client, ip netip.Addr, pending bool) {
	now := g.now()
	lc := &liveConn{handle: c.Handle, clientID: c.ClientID, pending: pending, since: now}
	if g.conflicts != nil {
		lc.conn = g.conflicts.newConn(principalOf(c), addrString(c, ip), now)
	}
	g.mu.Lock()
	if prev := g.byID[c.ClientID]; prev != nil && prev.handle != c.Handle {
		o := prev.conn
		lc.other = &o
	}
	g.conns[c.Handle] = lc
	g.byID[c.ClientID] = lc
	if pending && g.conflicts != nil {
		g.pending = append(g.pending, lc)
	}
	g.mu.Unlock()
	if !pending && g.conflicts != nil {
		g.conflicts.enqueue(conflictEvent{kind: evConnect, clientID: c.ClientID, conn: lc.conn, other: lc.other})
	}
}

// confirmLoop turns deferred connections still there after confirmDelay
// into tracked ones.
func (g *Guard) confirmLoop() {
	t := time.NewTicker(confirmDelay / 5)
	defer t.Stop()
	for {
		select {
		case <-g.stop:
			return
		case <-t.C:
		}
		cutoff := g.now().Add(-confirmDelay)
		var ready []*liveConn
		g.mu.Lock()
		i := 0
		for ; i < len(g.pending) && g.pending[i].since.Before(cutoff); i++ {
			lc := g.pending[i]
			if g.conns[lc.handle] == lc {
				lc.pending = false
				ready = append(ready, lc)
			}
		}
		g.pending = append(g.pending[:0], g.pending[i:]...)
		g.mu.Unlock()
		for _, lc := range ready {
			g.conflicts.enqueue(conflictEvent{kind: evConnect, clientID: lc.clientID, conn: lc.conn, other: lc.other})
		}
	}
}

// localHolder returns this broker's live connection of clientID if another
// principal holds it.
func (g *Guard) localHolder(clientID, principal string) *redisstore.Conn {
	g.mu.Lock()
	defer g.mu.Unlock()
	if lc := g.byID[clientID]; lc != nil && lc.conn.Principal != principal {
		o := lc.conn
		return &o
	}
	return nil
}

func addrString(c Client, ip netip.Addr) string {
	if ip.IsValid() {
		return ip.String()
	}
	return c.Address
}

// Authenticate decides one CONNECT (MOSQ_EVT_BASIC_AUTH): allowlist, then
// blocklist, then credentials. It waits on Redis at most once, for at most
// redis_timeout; a failure is counted in the background.
func (g *Guard) Authenticate(c Client) Decision {
	ip, _ := keys.NormalizeIP(c.Address)
	reauth := g.reauth(c.Handle)
	ans, redisOK := g.lookup(c, ip)
	if !redisOK && g.cfg.DenyWhenRedisDown {
		return g.refuse(c, ip, Decision{Result: Deny, Rule: RuleRedisUnavailable}, false)
	}
	allowed := ans.Allow != nil
	if !allowed && ans.Block != nil {
		return g.refuse(c, ip, Decision{Result: Deny, Rule: ans.Block.Key, Match: ans.Block}, false)
	}
	result := Defer
	if c.HasUsername && g.cfg.Backend != BackendDefer {
		rule, err := g.checkCredentials(c, ans, redisOK)
		if err != nil {
			g.log(LevelError, fmt.Sprintf("mosquitto-guard: the stored hash of username=%s cannot be used: %v", quote(c.Username), err))
		}
		if rule != "" {
			d := g.refuse(c, ip, Decision{Result: Deny, Rule: rule}, reauth)
			// Only the client's own failures count: not an exempt client, not
			// the broker re-checking a connected client after a reload, not a
			// stored hash the operator got wrong, not a Redis that cannot be asked.
			if !allowed && redisOK && !reauth && rule != RuleBadStoredHash && rule != RuleRedisUnavailable {
				g.failures.add(failure{clientID: c.ClientID, ip: ip, username: c.Username, hasUsername: c.HasUsername})
			}
			return d
		}
		result = Allow
	}
	if reauth {
		return Decision{Result: result}
	}
	if g.cfg.Conflicts.Mode == ConflictDeny && g.conflicts != nil {
		if d, refused := g.checkConflict(c, ip, ans, redisOK); refused {
			return d
		}
	}
	g.admit(c, ip, result == Defer)
	return Decision{Result: result}
}

// checkConflict refuses a client whose client ID is live, here or on
// another broker, under another principal (clientid_conflict deny). The
// holder stays connected; the same principal reconnecting is let through.
func (g *Guard) checkConflict(c Client, ip netip.Addr, ans redisstore.Answer, redisOK bool) (Decision, bool) {
	principal := principalOf(c)
	holder := g.localHolder(c.ClientID, principal)
	if holder == nil && redisOK {
		holder = g.conflicts.remoteHolder(ans.Live, principal)
	}
	if holder == nil {
		return Decision{}, false
	}
	d := Decision{Result: Deny, Rule: RuleClientIDConflict}
	g.log(LevelNotice, fmt.Sprintf("mosquitto-guard: refused %s rule=%s holder_principal=%s holder_ip=%s holder_broker=%s",
		describeClient(c, ip), RuleClientIDConflict, quote(holder.Principal), holder.IP, quote(holder.Broker)))
	attempt := g.conflicts.newConn(principal, addrString(c, ip), g.now())
	g.conflicts.enqueue(conflictEvent{kind: evRefused, clientID: c.ClientID, conn: attempt, other: holder})
	return d, true
}

// lookup asks Redis about the client, unless Redis is known to be down.
func (g *Guard) lookup(c Client, ip netip.Addr) (redisstore.Answer, bool) {
	if !g.health.up() {
		return redisstore.Answer{}, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.RedisTimeout)
	defer cancel()
	ans, err := g.store.Lookup(ctx, redisstore.Query{
		ClientID: c.ClientID, IP: ip, Username: c.Username, HasUsername: c.HasUsername,
		WantUser:  g.cfg.Backend == BackendRedis,
		WantConns: g.conflicts != nil && g.cfg.Conflicts.Mode == ConflictDeny,
	})
	if err != nil {
		g.health.down(err)
		return redisstore.Answer{}, false
	}
	return ans, true
}

// checkCredentials returns "" when the password is right, else the rule that refused.
func (g *Guard) checkCredentials(c Client, ans redisstore.Answer, redisOK bool) (string, error) {
	var hash string
	switch g.cfg.Backend {
	case BackendFiles:
		users := g.users.Load()
		h, ok := users.Hash(c.Username)
		if !ok {
			users.Verify(c.Username, c.Password) // spend the same time as for a known user
			return RuleUnknownUser, nil
		}
		hash = h
	case BackendRedis:
		if !redisOK {
			return RuleRedisUnavailable, nil
		}
		if !ans.HasUser {
			return RuleUnknownUser, nil
		}
		hash = ans.UserHash
	}
	ok, err := g.verifier.Verify(hash, c.Password)
	switch {
	case err != nil:
		return RuleBadStoredHash, err
	case !ok:
		return RuleBadPassword, nil
	}
	return "", nil
}

// refuse logs a refusal and returns d.
func (g *Guard) refuse(c Client, ip netip.Addr, d Decision, reauth bool) Decision {
	var b strings.Builder
	b.WriteString("mosquitto-guard: refused ")
	b.WriteString(describeClient(c, ip))
	b.WriteByte(' ')
	if d.Match != nil {
		b.WriteString(describeMatch(d.Match, g.now()))
	} else {
		b.WriteString("rule=" + d.Rule)
	}
	if reauth {
		b.WriteString(" (re-authentication after reload; not counted)")
	}
	g.log(LevelNotice, b.String())
	return d
}
