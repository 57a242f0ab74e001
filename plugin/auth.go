package plugin

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/mosquitto-guard/mosquitto-guard/backends/redisstore"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// Authenticate decides one CONNECT (MOSQ_EVT_BASIC_AUTH): allowlist, then
// blocklist, then credentials. The lists come from the local replica; Redis
// is asked (once, for at most redis_timeout) only until the replica is
// loaded, and for live connections under clientid_conflict deny. A failure
// is counted in the background.
func (g *Guard) Authenticate(c Client) Decision {
	ip, _ := keys.NormalizeIP(c.Address)
	reauth := g.reauth(c.Handle)
	ans, known := g.lookup(c, ip)
	redisOK := g.health.up()
	if !redisOK && g.cfg.DenyWhenRedisDown {
		return g.refuse(c, ip, Decision{Result: Deny, Rule: RuleRedisUnavailable}, false)
	}
	allowed := ans.Allow != nil
	if !allowed && ans.Block != nil {
		return g.refuse(c, ip, Decision{Result: Deny, Rule: ans.Block.Key, Match: ans.Block}, false)
	}
	result := Defer
	if c.HasUsername && g.cfg.Backend != BackendDefer {
		rule, err := g.checkCredentials(c, ans, known)
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

// lookup answers the list checks (and the redis backend's user hash) from
// the replica once it is loaded, even while Redis is down: the last known
// lists, with their expiry honoured locally. Before that it asks Redis. known
// is false when neither could answer.
func (g *Guard) lookup(c Client, ip netip.Addr) (ans redisstore.Answer, known bool) {
	q := redisstore.Query{
		ClientID: c.ClientID, IP: ip, Username: c.Username, HasUsername: c.HasUsername,
		WantUser:  g.cfg.Backend == BackendRedis,
		WantConns: g.conflicts != nil && g.cfg.Conflicts.Mode == ConflictDeny,
	}
	if g.sync != nil && g.sync.Ready() {
		ans = g.replica.Lookup(q, g.now())
		if q.WantConns && g.health.up() {
			ans.Live = g.liveConns(c.ClientID)
		}
		return ans, true
	}
	if !g.health.up() {
		return redisstore.Answer{}, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.RedisTimeout)
	defer cancel()
	ans, err := g.store.Lookup(ctx, q)
	if err != nil {
		g.health.down(err)
		return redisstore.Answer{}, false
	}
	return ans, true
}

// liveConns asks Redis for the client ID's live connections on other
// brokers (clientid_conflict deny), bounded by redis_timeout.
func (g *Guard) liveConns(clientID string) []redisstore.Conn {
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
func (g *Guard) checkCredentials(c Client, ans redisstore.Answer, known bool) (string, error) {
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
		if !known {
			return RuleRedisUnavailable, nil
		}
		if !ans.HasUser {
			return RuleUnknownUser, nil
		}
		hash = ans.UserHash
	}
	if g.cache.hit(c.Username, c.Password, hash) {
		return "", nil
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
