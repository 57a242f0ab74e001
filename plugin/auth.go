package plugin

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/backends/hashes"
	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// Authenticate decides one CONNECT (MOSQ_EVT_BASIC_AUTH): lists, then the
// failure limits, then credentials, then conflicts, then admit. The lists
// come from the local replica; Redis is asked (once, for at most
// redis_timeout) only until the replica is loaded, and for live connections
// under clientid_conflict deny. A failure is counted locally at once and in
// Redis in the background.
func (g *Guard) Authenticate(c Client) Decision { return g.authenticate(c, g.reauth(c.Handle)) }

// authenticate is Authenticate; reauth: the broker re-checking a client it
// holds after a reload (see Reauthenticate), never counted nor admitted.
func (g *Guard) authenticate(c Client, reauth bool) Decision {
	ip, _ := keys.NormalizeIP(c.Address)
	ans, known := g.lookup(c, ip, reauth)
	redisOK := g.health.up()
	if !redisOK && g.cfg.DenyWhenRedisDown {
		return g.refuse(c, ip, Decision{Result: Deny, Rule: RuleRedisUnavailable}, false)
	}
	// ans.Block is the block entry left after the allow entry's exemptions:
	// an allow on where the client comes from (ip, cidr) lifts every ban, one
	// on what it claims (clientid, username) only bans on claims.
	if ans.Block != nil {
		return g.refuse(c, ip, Decision{Result: Deny, Rule: ans.Block.Key, Match: ans.Block}, false)
	}
	// exempt: the connection comes from an allowlisted address; its
	// failures are neither limited nor counted.
	exempt := ans.Allow != nil && ans.Allow.Scope.Proof()
	result := Defer
	if c.HasUsername && g.cfg.Backend != config.BackendDefer {
		var limits Decision
		if !reauth && !exempt {
			d, refused := g.checkLimits(c, ip, ans)
			if refused {
				return d
			}
			limits = d
		}
		rule, err := g.checkCredentials(c, ans, known)
		if err != nil {
			g.log(LevelError, fmt.Sprintf("mosquitto-guard: the stored hash of username=%s cannot be used: %v", logval.Quote(c.Username), err))
		}
		if rule != "" {
			d := g.refuse(c, ip, Decision{Result: Deny, Rule: rule}, reauth)
			// Only the client's own failures count: not an exempt client, not
			// the broker re-checking a connected client after a reload, not a
			// stored hash the operator got wrong, not a Redis that cannot be asked.
			if !exempt && !reauth && rule != RuleBadStoredHash && rule != RuleRedisUnavailable {
				g.failed(c, ip, redisOK, limits.claimedSource)
			}
			return d
		}
		result = Allow
		if !reauth && g.known != nil {
			g.known.succeeded(c.Username, ip, c.ClientID, g.now())
		}
	}
	if reauth {
		return Decision{Result: result}
	}
	if g.cfg.Conflicts.Mode == config.ConflictDeny && g.conflicts != nil {
		if d, refused := g.checkConflict(c, ip, ans, redisOK); refused {
			return d
		}
	}
	g.admit(c, ip, result == Defer)
	return Decision{Result: result}
}

// Rules of the failure limits.
const (
	// RuleFailLimit: fail_limit+1 passwords of one counted key were checked
	// and failed faster than the allowance refills; until its ban arrives (or
	// when Redis cannot count) no more are checked on this broker.
	RuleFailLimit = "fail-limit"
	// RuleUsernameThrottled: the username failed too often from every
	// source, and this one never authenticated as it.
	RuleUsernameThrottled = "username-throttled"
)

// checkLimits refuses, without checking the password, a client that one of
// the failure limits stops: the local count of a key whose ban would apply
// to it, or a throttle on its username when it is not a known source.
func (g *Guard) checkLimits(c Client, ip netip.Addr, ans store.Answer) (Decision, bool) {
	now := g.now()
	var fk []failKey
	if !g.local.Empty() { // no failure counted here lately: nothing to build
		fk = g.failKeys(c, ip)
	}
	for _, k := range fk {
		if ans.Allow != nil && keys.Exempts(ans.Allow.Scope, k.scope) {
			continue // a ban of this key would not apply to this client
		}
		if g.local.Exhausted(k.local(), now) {
			return g.refuse(c, ip, Decision{Result: Deny, Rule: RuleFailLimit, Detail: string(k.scope) + "=" + logval.Quote(k.value)}, false), true
		}
	}
	// The username throttle: from Redis (every broker's count), or from this
	// broker's own count while that is on its way.
	if g.known == nil || (ans.Throttle == nil && (g.localUser.Empty() || !g.localUser.Exhausted(c.Username, now))) {
		return Decision{}, false
	}
	if !g.userExists(c, ans) {
		// No source is known to a username that does not exist: refuse
		// alike, without loading its (empty) set; a botnet keeping 10 000
		// made-up usernames throttled must not crowd real fleets out of
		// knownLoadedUsersMax.
		return g.refuseThrottled(c, ip, ans.Throttle), true
	}
	byIP, byClientID := g.known.known(c.Username, ip, c.ClientID, now)
	switch {
	case byIP:
		return Decision{}, false
	case byClientID && !g.localClaimed.Exhausted(c.Username, now):
		// A client ID is a claim, and device IDs are no secret: a source
		// known only by its client ID shares, with every other such source of
		// the username, a budget of one failure per fail_window (two checks)
		// on this broker. A roaming device with its password never fails.
		return Decision{claimedSource: true}, false
	}
	return g.refuseThrottled(c, ip, ans.Throttle), true
}

// failKey is one key a failure is counted under: a scope of fail_scopes and
// the client's value in it (an IPv6 address as its fail_ipv6_prefix network).
type failKey struct {
	scope keys.Scope
	value string
}

func (k failKey) local() string { return string(k.scope) + ":" + k.value }

// failKeys lists the keys c's failures count under, one per fail scope.
func (g *Guard) failKeys(c Client, ip netip.Addr) []failKey {
	out := make([]failKey, 0, len(g.cfg.FailScopes))
	for _, scope := range g.cfg.FailScopes {
		switch scope {
		case keys.IP:
			if ip.IsValid() {
				out = append(out, g.sourceKey(ip))
			}
		case keys.ClientID:
			// Claims over 256 bytes in their tracking form: the counter, the
			// offences and an automatic ban must not keep 65 535 bytes a key.
			out = append(out, failKey{keys.ClientID, keys.Tracking(c.ClientID)})
		case keys.Username:
			out = append(out, failKey{keys.Username, keys.Tracking(c.Username)})
		}
	}
	return out
}

// failed counts one failed authentication: at once in the local counts,
// and in Redis in the background (when Redis answers). Every fail scope
// counts, also for a client an allow entry on a claim (client ID, username)
// lets past the bans on claims: its source IP is banned when it guesses. The
// username's count toward its throttle includes unknown usernames: a
// throttled username must not tell an attacker that it exists. claimed: the
// client passed a throttle as a source known only by its client ID.
func (g *Guard) failed(c Client, ip netip.Addr, redisOK, claimed bool) {
	fk := g.failKeys(c, ip)
	now := g.now()
	for _, k := range fk {
		g.local.Fail(k.local(), now)
	}
	if g.known != nil {
		g.localUser.Fail(c.Username, now)
		if claimed {
			g.localClaimed.Fail(c.Username, now)
		}
	}
	if !redisOK {
		return
	}
	g.failures.add(failure{clientID: c.ClientID, ip: ip, username: c.Username, hasUsername: c.HasUsername,
		keys: fk, throttle: g.known != nil})
}

// checkConflict refuses a client whose client ID is live, here or on
// another broker, under another principal (clientid_conflict deny). The
// holder stays connected; the same principal reconnecting is let through.
//
// A client this plugin admits itself claims the client ID: its connection
// is recorded live in the same atomic step that looks for a holder (one
// round trip, bounded by redis_timeout), so of two principals connecting
// with one client ID at the same moment on two brokers exactly one is
// refused. A client a later check decides (anonymous, backend defer) may
// still be refused after this, so it only looks (ans.Live) and is recorded
// once confirmed. When Redis fails to answer, the client is let in (and
// flagged later if it conflicts), as when Redis is down.
func (g *Guard) checkConflict(c Client, ip netip.Addr, ans store.Answer, redisOK bool) (Decision, bool) {
	principal := principalOf(c)
	holder := g.localHolder(c.ClientID, principal)
	attempt := store.Conn{}
	claimed := false
	switch {
	case holder != nil || !redisOK || !g.health.up():
	case g.claims(c):
		cl := Claimer(g.conflicts.store)
		if s, ok := g.store.(Claimer); ok {
			cl = s // the broker thread's client: bounded by redis_timeout, no retries
		}
		var err error
		attempt, holder, err = g.conflicts.claim(cl, c.ClientID, principal, addrString(c, ip), g.now(), g.cfg.RedisTimeout)
		if err != nil {
			g.health.down(err)
		}
		claimed = true
	default:
		holder = g.conflicts.remoteHolder(ans.Live, principal)
	}
	if holder == nil {
		return Decision{}, false
	}
	d := Decision{Result: Deny, Rule: RuleClientIDConflict}
	if g.floods.Allow(g.floodSource(c, ip), floodRule(d), g.now()) { // as every refusal line: bounded per source
		g.log(LevelNotice, fmt.Sprintf("mosquitto-guard: refused %s rule=%s holder_principal=%s holder_ip=%s holder_broker=%s",
			describeClient(c, ip), RuleClientIDConflict, logval.Quote(holder.Principal), holder.IP, logval.Quote(holder.Broker)))
	}
	if !claimed {
		attempt = g.conflicts.newConn(principal, addrString(c, ip), g.now())
	}
	g.conflicts.enqueue(conflictEvent{kind: evRefused, clientID: c.ClientID, conn: attempt, other: holder})
	return d, true
}

// lookup answers the list checks (and the redis backend's user hash) from
// the replica once it is loaded, even while Redis is down: the last known
// lists, with their expiry honoured locally. Before that it asks Redis. known
// is false when neither could answer.
// A re-authentication after a reload never asks for the live connections: it
// admits nothing, and a round trip per client of the reload's walk would
// stall the broker for as many round trips as it holds clients.
func (g *Guard) lookup(c Client, ip netip.Addr, reauth bool) (ans store.Answer, known bool) {
	q := store.Query{
		ClientID: c.ClientID, IP: ip, Username: c.Username, HasUsername: c.HasUsername,
		WantUser:  g.cfg.Backend == config.BackendRedis,
		WantConns: g.conflicts != nil && g.cfg.Conflicts.Mode == config.ConflictDeny && !reauth,
	}
	if g.sync != nil && g.sync.Ready() {
		ans = g.replica.Lookup(q, g.now())
		if q.WantConns && g.health.up() && !g.claims(c) { // claimed in checkConflict instead
			ans.Live = g.liveConns(c.ClientID)
		}
		return ans, true
	}
	if !g.health.up() {
		return store.Answer{}, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.RedisTimeout)
	defer cancel()
	ans, err := g.store.Lookup(ctx, q)
	if err != nil {
		g.health.down(err)
		return store.Answer{}, false
	}
	return ans, true
}

// liveConns asks Redis for the client ID's live connections on other
// brokers (clientid_conflict deny), bounded by redis_timeout.
func (g *Guard) liveConns(clientID string) []store.Conn {
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.RedisTimeout)
	defer cancel()
	live, err := g.store.LiveConns(ctx, clientID)
	if err != nil {
		g.health.down(err)
		return nil
	}
	return live
}

// checkCredentials returns "" when the password is right, else the rule
// that refused. known says whether ans holds what Redis knows.
func (g *Guard) checkCredentials(c Client, ans store.Answer, known bool) (string, error) {
	var hash string
	switch g.cfg.Backend {
	case config.BackendFiles:
		users := g.users.Load()
		h, ok := users.Hash(c.Username)
		if !ok {
			users.Verify(c.Username, c.Password) // spend the same time as for a known user
			return RuleUnknownUser, nil
		}
		hash = h
	case config.BackendRedis:
		if !known {
			return RuleRedisUnavailable, nil
		}
		if !ans.HasUser {
			// Spend what a known user costs: a hash of the class of the most
			// expensive known user's seen so far (or mosquitto_passwd's
			// default), never matching. Only known users' hashes move it, so
			// an attacker cannot make it cheaper.
			dummy := hashes.DefaultDummy()
			if ref := g.lastHash.Load(); ref != nil {
				if d, err := g.verifier.DummyLike(*ref); err == nil {
					dummy = d
				}
			}
			g.cache.hit(c.Username, c.Password, dummy)
			_, _ = g.verifier.Verify(dummy, c.Password)
			return RuleUnknownUser, nil
		}
		hash = ans.UserHash
	}
	if g.cache.hit(c.Username, c.Password, hash) {
		return "", nil
	}
	if g.cfg.Backend == config.BackendRedis {
		g.noteHash(hash)
	}
	ok, err := g.verifier.Verify(hash, c.Password)
	if ok && err == nil {
		g.cache.add(c.Username, c.Password, hash)
	}
	switch {
	case err != nil:
		return RuleBadStoredHash, err
	case !ok:
		return RuleBadPassword, nil
	}
	return "", nil
}

// refuse logs a refusal and returns d. The lines are limited per source and
// rule (see logflood): a client that hammers the broker after its refusal
// gets its first lines logged, then one summary line per 10 s.
func (g *Guard) refuse(c Client, ip netip.Addr, d Decision, reauth bool) Decision {
	if !g.floods.Allow(g.floodSource(c, ip), floodRule(d), g.now()) {
		return d
	}
	var b strings.Builder
	b.WriteString("mosquitto-guard: refused ")
	b.WriteString(describeClient(c, ip))
	b.WriteByte(' ')
	if d.Match != nil {
		b.WriteString(describeMatch(d.Match, g.now()))
	} else {
		b.WriteString("rule=" + d.Rule)
	}
	if d.Detail != "" {
		b.WriteByte(' ')
		b.WriteString(d.Detail)
	}
	if reauth {
		b.WriteString(" (re-authentication after reload; not counted)")
	}
	g.log(LevelNotice, b.String())
	return d
}

// throttleLog keeps the refusals of a throttled username to one line per
// episode (a throttle key's lifetime) on each broker, whatever the number
// of attempts and sources: at most throttleLogMax usernames remembered.
type throttleLog struct {
	mu     sync.Mutex
	logged map[string]int64 // username -> unix ms when its logged episode ends
}

const throttleLogMax = 10000

// first reports whether this refusal is the first of its episode here.
func (t *throttleLog) first(username string, now time.Time, ttl time.Duration) bool {
	ms := now.UnixMilli()
	t.mu.Lock()
	defer t.mu.Unlock()
	if end, ok := t.logged[username]; ok && ms < end {
		return false
	}
	if t.logged == nil || len(t.logged) >= throttleLogMax {
		t.logged = map[string]int64{}
	}
	end := ms + 1000
	if ttl > 0 {
		end = ms + ttl.Milliseconds()
	}
	t.logged[username] = end
	return true
}

// refuseThrottled refuses an attempt for a throttled username from a source
// it never authenticated from, unchecked and uncounted.
func (g *Guard) refuseThrottled(c Client, ip netip.Addr, m *store.Match) Decision {
	d := Decision{Result: Deny, Rule: RuleUsernameThrottled}
	ttl := g.cfg.Policy.Window // only this broker's count knows yet: about a window
	if m != nil {
		ttl = m.TTL
	}
	if g.throttleLog.first(c.Username, g.now(), ttl) {
		g.log(LevelNotice, fmt.Sprintf("mosquitto-guard: refused %s rule=%s expires=%s (first refusal of this throttle here; the rest are not logged)",
			describeClient(c, ip), RuleUsernameThrottled, expiry(g.now(), ttl)))
	}
	return d
}

// floodSource names a refusal's source for the log-flood limiter: the IP, an
// IPv6 address by its fail_ipv6_prefix network (rotating addresses inside it
// is one source).
func (g *Guard) floodSource(c Client, ip netip.Addr) string {
	if !ip.IsValid() {
		return "ip=" + logval.Quote(c.Address)
	}
	k := g.sourceKey(ip)
	return string(k.scope) + "=" + k.value
}

// sourceKey is where a connection comes from, as failures are counted and
// refusal lines limited: the IP, an IPv6 address by its fail_ipv6_prefix
// network (an attacker rotating addresses inside it is one source).
func (g *Guard) sourceKey(ip netip.Addr) failKey {
	if ip.Is6() && g.cfg.FailIPv6Prefix < 128 {
		p, _ := ip.Prefix(g.cfg.FailIPv6Prefix) // cannot fail: 16..127 bits of an IPv6 address
		return failKey{keys.CIDR, p.String()}
	}
	return failKey{keys.IP, ip.String()}
}

// floodRule names a refusal's rule for the log-flood limiter, in at most
// about 200 bytes.
func floodRule(d Decision) string {
	if d.Match != nil {
		return "rule=" + logval.Quote(d.Match.Key)
	}
	return "rule=" + d.Rule
}

// flushFloods logs the summaries of the refusals the limiter held back.
func (g *Guard) flushFloods() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-g.stop:
			return
		case <-t.C:
		}
		for _, sm := range g.floods.Flush(g.now()) {
			if sm.Overflow {
				g.log(LevelNotice, fmt.Sprintf("mosquitto-guard: %d more refusals from other sources in the last %s", sm.Suppressed, sm.Period.Round(time.Second)))
				continue
			}
			g.log(LevelNotice, fmt.Sprintf("mosquitto-guard: %d more refusals from %s %s in the last %s", sm.Suppressed, sm.Source, sm.Rule, sm.Period.Round(time.Second)))
		}
	}
}

// noteHash keeps the most expensive known user's hash seen (redis backend),
// the model of the unknown users' dummy. Called on cache misses only, beside
// a verification that costs far more than the parse.
func (g *Guard) noteHash(hash string) {
	ref := g.lastHash.Load()
	if ref != nil && *ref == hash {
		return
	}
	w, err := g.verifier.Work(hash)
	if err != nil {
		return
	}
	if ref != nil {
		if cur, _ := g.verifier.Work(*ref); cur >= w {
			return
		}
	}
	g.lastHash.Store(&hash)
}

// userExists reports whether c's username is a known user of the backend.
func (g *Guard) userExists(c Client, ans store.Answer) bool {
	switch g.cfg.Backend {
	case config.BackendFiles:
		_, ok := g.users.Load().Hash(c.Username)
		return ok
	case config.BackendRedis:
		return ans.HasUser
	}
	return false
}
