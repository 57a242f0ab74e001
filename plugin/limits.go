package plugin

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logline"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// checkLimits refuses, without checking the password, a client that one of
// the failure limits stops: the local count of a key whose ban would apply
// to it, or a throttle on its username when it is not a known source.
func (g *Guard) checkLimits(c *Client, ip netip.Addr, ans store.Answer) (Decision, bool) {
	return g.checkLimitsAt(c, ip, ans, g.now())
}

// checkLimitsAt is checkLimits with the time now read.
func (g *Guard) checkLimitsAt(c *Client, ip netip.Addr, ans store.Answer, now time.Time) (Decision, bool) {
	var fk []failKey
	if !g.local.Empty() { // no failure counted here lately: nothing to build
		fk = g.failKeys(c, ip)
	}
	for _, k := range fk {
		if ans.Allow != nil && keys.Exempts(ans.Allow.Scope, k.scope) {
			continue // a ban of this key would not apply to this client
		}
		if g.local.Exhausted(k.local(), now) {
			return g.refusals.refuse(c, ip, Decision{Result: Deny, Rule: RuleFailLimit, Detail: logline.Pairs().Tok("fail_scope", string(k.scope)).Str("fail_value", k.value).Body()}, false), true
		}
	}
	// The username throttle: from Redis (every broker's count), or from this
	// broker's own count while that is on its way.
	if g.known == nil {
		return Decision{}, false
	}
	if ans.Throttle == nil && (g.localUser.Empty() || !g.localUser.Exhausted(c.Username, now)) {
		return g.lapsedThrottle(c, ip, ans, now)
	}
	g.known.noteEpisode(keys.Tracking(c.Username), now) // its lapse is claimed (lapsedThrottle)
	if !g.creds.exists(c, ans) {
		// No source is known to a username that does not exist: refuse
		// alike, without loading its (empty) set; a botnet keeping 10 000
		// made-up usernames throttled must not crowd real fleets out of
		// knownLoadedUsersMax.
		return g.refusals.throttled(c, ip, ans.Throttle), true
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
	return g.refusals.throttled(c, ip, ans.Throttle), true
}

// lapsedThrottle decides a CONNECT of a username that is not throttled now
// but whose throttle episode is on record here (knownSources.episode): its
// throttle lapsed on every broker at once, and each broker's own count would
// admit one guess before the throttle that guess brings back reached the
// others, N guesses per fail_window with N brokers (a README-only
// attacker's measure: 10 passwords checked on each of two brokers). A
// source that is not known claims the guess in Redis first
// (Store.ClaimThrottle: the throttle key written unless it exists, for one
// fail_window, one round trip bounded by redis_timeout on the broker
// thread): the broker that writes it checks the password, the others refuse
// as throttled, and the key throttles every broker from then on. Known
// sources go on as usual. Redis not answering: this broker's own count
// decides, as before. Whether the username exists changes nothing here but
// which sources are known.
func (g *Guard) lapsedThrottle(c *Client, ip netip.Addr, ans store.Answer, now time.Time) (Decision, bool) {
	if !g.health.up() || !g.known.episode(c.Username, now) {
		return Decision{}, false
	}
	if g.creds.exists(c, ans) {
		byIP, byClientID := g.known.known(c.Username, ip, c.ClientID, now)
		switch {
		case byIP:
			return Decision{}, false
		case byClientID && !g.localClaimed.Exhausted(c.Username, now):
			// As under the throttle (checkLimits): sources known only by
			// their client ID share one failure per fail_window here.
			return Decision{claimedSource: true}, false
		}
	}
	ttl := g.cfg.Policy.Window
	// The value names this claim alone (its release deletes only its own):
	// a random number beside the time.
	reason := fmt.Sprintf("%s one guess claimed after a throttle of this username lapsed, at %s (claim %016x)",
		keys.AutoBanMarker, now.UTC().Format(time.RFC3339), rand.Uint64())
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.RedisTimeout)
	defer cancel()
	claimed, err := g.store.ClaimThrottle(ctx, c.Username, reason, ttl)
	if err != nil {
		g.health.down(err)
		return Decision{waitedRedis: true}, false
	}
	if claimed {
		// This broker's lookups see it at once; the others by its
		// notification, or by the changes channel (published in the
		// background: no second round trip here).
		key := g.replica.Keys().Throttle(c.Username)
		_ = g.replica.Put(key, reason, now.Add(ttl))
		g.spawn("throttle claim publish", func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			g.publishChange(ctx, key)
		})
		return Decision{throttleClaim: reason, waitedRedis: true}, false
	}
	return g.refusals.throttled(c, ip, nil), true
}

// releaseClaim lifts the throttle key c's CONNECT claimed (lapsedThrottle)
// once its password proved right: the claim throttled the username for one
// fail_window so that no other guess would be checked meanwhile, but
// nothing failed, and a throttle stops failures: a batch of new devices
// after an attack must not get in one per fail_window. Here at once (the
// replica, unless a change came meanwhile); in Redis and on the other
// brokers in the background, unless a failure's throttle replaced it.
func (g *Guard) releaseClaim(c *Client, reason string) {
	username := c.Username // not c: the goroutine must not keep the CONNECT's Client alive (on the heap)
	key := g.replica.Keys().Throttle(username)
	g.replica.DeleteIf(key, reason)
	g.spawn("throttle claim release", func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if ok, err := g.bgStore.ReleaseThrottle(ctx, username, reason); err == nil && ok {
			g.publishChange(ctx, key)
		}
	})
}

// failed counts one failed authentication: at once in the local counts,
// and in Redis in the background (when Redis answers). Every fail scope
// counts, also for a client an allow entry on a claim (client ID, username)
// lets past the bans on claims: its source IP is banned when it guesses. The
// username's count toward its throttle includes unknown usernames: a
// throttled username must not tell an attacker that it exists. claimed: the
// client passed a throttle as a source known only by its client ID.
func (g *Guard) failed(c *Client, ip netip.Addr, redisOK, claimed bool) {
	fk := g.failKeys(c, ip)
	now := g.now()
	own := func() {
		for _, k := range fk {
			g.local.Fail(k.local(), now)
		}
		if g.known != nil {
			// ratelimit.Local keeps a copy of the username (or its hash),
			// not the CONNECT's strings it is a part of.
			g.localUser.Fail(c.Username, now)
			if claimed {
				g.localClaimed.Fail(c.Username, now)
			}
		}
	}
	f := newFailure(c, ip, fk, g.known != nil)
	if !redisOK {
		own()
		// Counted in Redis when it answers again (owedFailures).
		if !g.owed.add(f) {
			g.failures.uncounted.Add(1) // past the holding's bound: reported as not counted
			g.failures.lostTotal.Add(1)
		}
		return
	}
	g.failures.add(f, own) // counted here and queued as one step (failureQueue.add)
}

// failKey is one key a failure is counted under: a scope of fail_scopes and
// the client's value in it (an IPv6 address as its fail_ipv6_prefix network).
type failKey struct {
	scope keys.Scope
	value string
}

func (k failKey) local() string { return string(k.scope) + ":" + k.value }

// failKeys lists the keys c's failures count under, one per fail scope
// (keys.FailKey, which guardctl explain reads by too).
func (g *Guard) failKeys(c *Client, ip netip.Addr) []failKey {
	out := make([]failKey, 0, len(g.cfg.FailScopes))
	for _, scope := range g.cfg.FailScopes {
		if s, v, ok := keys.FailKey(scope, ip, g.cfg.FailIPv6Prefix, c.ClientID, c.Username); ok {
			out = append(out, failKey{s, v})
		}
	}
	return out
}

// sourceKey is where a connection comes from, as failures are counted and
// refusal lines limited: the IP, an IPv6 address by its network of
// ipv6Prefix bits (fail_ipv6_prefix: an attacker rotating addresses inside
// it is one source).
func sourceKey(ip netip.Addr, ipv6Prefix int) failKey {
	s, v, _ := keys.FailKey(keys.IP, ip, ipv6Prefix, "", "")
	return failKey{s, v}
}
