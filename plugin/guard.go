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

	health   health
	failures *failureQueue

	mu    sync.Mutex
	known map[uintptr]struct{} // connections this guard let in, until DISCONNECT

	stop chan struct{}
	wg   sync.WaitGroup
}

// New builds a Guard from cfg, connected to the Redis that cfg names. An
// unreadable password file is an error; an unreachable Redis is not: it is
// logged and retried in the background.
func New(cfg Config, log Logger) (*Guard, error) {
	store := redisstore.New(redisstore.Options{
		Addrs: cfg.RedisAddrs, Username: cfg.RedisUsername, Password: cfg.RedisPassword,
		DB: cfg.RedisDB, Timeout: cfg.RedisTimeout,
	}, keys.Builder{Prefix: cfg.KeyPrefix})
	counter := ratelimit.New(store.Client(), store.Keys(), cfg.Policy)
	g, err := NewWith(cfg, log, store, counter)
	if err != nil {
		store.Close()
		return nil, err
	}
	return g, nil
}

// NewWith builds a Guard on the given store and counter (tests use fakes).
func NewWith(cfg Config, log Logger, store Store, counter FailCounter) (*Guard, error) {
	g := &Guard{
		cfg:      cfg,
		log:      log,
		store:    store,
		counter:  counter,
		verifier: hashes.Verifier{SaltEncoding: hashes.SaltEncoding(cfg.SaltEncoding)},
		now:      time.Now,
		known:    map[uintptr]struct{}{},
		stop:     make(chan struct{}),
	}
	if cfg.Backend == BackendFiles {
		if err := g.loadUsers(); err != nil {
			return nil, err
		}
	}
	g.health.init(g)
	g.failures = newFailureQueue(g)
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
	delete(g.known, handle)
	g.mu.Unlock()
}

// reauth reports whether handle is a connection this guard already let in:
// the broker re-runs authentication for every client after a reload, and a
// refusal then is not an attack.
func (g *Guard) reauth(handle uintptr) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.known[handle]
	return ok
}

func (g *Guard) admit(handle uintptr) {
	g.mu.Lock()
	g.known[handle] = struct{}{}
	g.mu.Unlock()
}

// Authenticate decides one CONNECT (MOSQ_EVT_BASIC_AUTH): allowlist, then
// blocklist, then credentials. It waits on Redis at most once, for at most
// redis_timeout; a failure is counted in the background.
func (g *Guard) Authenticate(c Client) Decision {
	ip, _ := keys.NormalizeIP(c.Address)
	ans, redisOK := g.lookup(c, ip)
	if !redisOK && g.cfg.DenyWhenRedisDown {
		return g.refuse(c, ip, Decision{Result: Deny, Rule: RuleRedisUnavailable}, false)
	}
	allowed := ans.Allow != nil
	if !allowed && ans.Block != nil {
		return g.refuse(c, ip, Decision{Result: Deny, Rule: ans.Block.Key, Match: ans.Block}, false)
	}
	if !c.HasUsername || g.cfg.Backend == BackendDefer {
		return Decision{Result: Defer}
	}
	rule, err := g.checkCredentials(c, ans, redisOK)
	if err != nil {
		g.log(LevelError, fmt.Sprintf("mosquitto-guard: the stored hash of username=%s cannot be used: %v", quote(c.Username), err))
	}
	if rule == "" {
		g.admit(c.Handle)
		return Decision{Result: Allow}
	}
	reauth := g.reauth(c.Handle)
	d := g.refuse(c, ip, Decision{Result: Deny, Rule: rule}, reauth)
	// Only the client's own failures count: not an exempt client, not the
	// broker re-checking a connected client after a reload, not a stored
	// hash the operator got wrong, not a Redis that cannot be asked.
	if !allowed && redisOK && !reauth && rule != RuleBadStoredHash && rule != RuleRedisUnavailable {
		g.failures.add(failure{clientID: c.ClientID, ip: ip, username: c.Username, hasUsername: c.HasUsername})
	}
	return d
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
		WantUser: g.cfg.Backend == BackendRedis,
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
