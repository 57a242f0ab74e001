package plugin

import (
	"strconv"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// Authenticate decides one CONNECT (MOSQ_EVT_BASIC_AUTH): the lists, the
// failure limits, the credentials (a failure counted), client-ID conflicts,
// then admit. The lists come from the local replica; Redis is asked (once,
// for at most redis_timeout) only until the replica is loaded, and for live
// connections under clientid_conflict deny. A failure is counted locally at
// once and in Redis in the background. Each decision is counted in the
// metrics, by its rule; a re-check after a reload is not.
func (g *Guard) Authenticate(c Client) Decision {
	g.applyUsers(false) // a password file read since the last CONNECT or TICK
	reauth := g.reauth(c.Handle)
	d := g.authenticate(&c, reauth)
	if !reauth {
		g.metrics.decided(d)
	}
	return d
}

// Reauthenticate decides the broker's re-check of a client it already holds,
// connected or an offline session, in the walk over every client that
// follows a reload (the cgo layer tells the walk from new CONNECTs): the
// lists and the password are checked as for a CONNECT, but a refusal is not
// counted, a success is not recorded, and nothing is admitted.
func (g *Guard) Reauthenticate(c Client) Decision { return g.authenticate(&c, true) }

// authenticate is Authenticate, step by step; reauth: the broker re-checking
// a client it holds after a reload (see Reauthenticate), never counted nor
// admitted.
func (g *Guard) authenticate(c *Client, reauth bool) Decision {
	ip := c.ip()
	// A client ID or username over its bound: refused before anything
	// reads or hashes it (clientid_max_bytes, username_max_bytes). No
	// password is checked, so nothing is learnt and no failure counted.
	if d, refused := g.tooLong(c); refused {
		return g.refusals.refuse(c, ip, d, reauth)
	}
	scans := g.scans.Load() // before the lists are read (banRaced)

	// The clock is read once for the list and limit checks, and once after
	// the password check for what is recorded (issue 12: four reads a
	// CONNECT cost the broker thread 0.3 k instructions); again after a
	// round trip to Redis.
	now := g.now()
	// Lists (lists.go): the entries that apply to c, from the replica or,
	// until it is loaded, from Redis.
	ans, known, local := g.lookupAt(c, ip, reauth, now)
	if !local {
		now = g.now()
	}
	redisOK := g.health.up()
	// Not the re-check after a reload: a Redis outage says nothing of a
	// client the broker holds, and connected clients are not dropped when
	// Redis goes down (atk53: a SIGHUP while Redis was down under deny
	// dropped every connected client).
	if !redisOK && g.cfg.DenyWhenRedisDown && !reauth {
		return g.refusals.refuse(c, ip, Decision{Result: Deny, Rule: RuleRedisUnavailable}, false)
	}
	// ans.Block is the block entry left after the allow entry's exemptions:
	// an allow on where the client comes from (ip, cidr) lifts every ban, one
	// on what it claims (clientid, username) only bans on claims.
	if ans.Block != nil {
		return g.refusals.refuse(c, ip, Decision{Result: Deny, Rule: ans.Block.Key, Match: ans.Block}, reauth)
	}
	// exempt: the connection comes from an allowlisted address; its
	// failures are neither limited nor counted.
	exempt := store.Exempt(ans.Allow)

	// Only a username the files or redis backend knows is checked here; any
	// other client is left to a later check (Defer).
	result := Defer
	if g.cfg.Backend.Checks(c.HasUsername) {
		// Failure limits (limits.go): a source or username that failed too
		// often is refused before its password is checked.
		var limits Decision
		if !reauth && !exempt {
			d, refused := g.checkLimitsAt(c, ip, ans, now)
			if refused {
				return d
			}
			limits = d
		}
		// Credentials (credentials.go): the password against the backend.
		rule, cached := g.creds.check(c, ans, known, reauth)
		if rule != "" {
			d := g.refusals.refuse(c, ip, Decision{Result: Deny, Rule: rule}, reauth)
			// Failure counting (limits.go, failures.go): only the client's
			// own failures count: not an exempt client, not the broker
			// re-checking a connected client after a reload, not a stored
			// hash the operator got wrong, not a Redis that cannot be asked.
			if !exempt && !reauth && rule != RuleBadStoredHash && rule != RuleRedisUnavailable {
				g.failed(c, ip, redisOK, limits.claimedSource)
			}
			return d
		}
		if !cached || limits.waitedRedis {
			// The check hashed the password (milliseconds), or the limits
			// waited for Redis (a lapsed throttle's claim, up to
			// redis_timeout): what is recorded is stamped after.
			now = g.now()
		}
		result = Allow
		if limits.throttleClaim != "" {
			g.releaseClaim(c, limits.throttleClaim)
		}
		// Known sources (known.go): where the username succeeded from, to
		// let its devices through a throttle of it.
		if !reauth && g.known != nil {
			idsLen := len(c.ClientID) + len(c.Username)
			g.known.succeededFrom(ownTracked(idsLen, c.Username), ip, c.Address, ownTracked(idsLen, c.ClientID), now)
		}
	}
	if reauth {
		return Decision{Result: result}
	}
	if g.afterCredentials != nil {
		g.afterCredentials() // tests: a ban arriving while the password was checked
	}
	// A ban that came while the password was checked (kicks.go, banRaced):
	// the lists are read again, and the CONNECT refused as its list check
	// would now refuse it.
	if s := g.scans.Load(); s != scans {
		scans = s
		if b := g.blockNow(c, ip); b != nil {
			return g.refusals.refuse(c, ip, Decision{Result: Deny, Rule: b.Key, Match: b}, false)
		}
	}

	// Client-ID conflicts (conflicts.go): under clientid_conflict deny, a
	// client ID live under another principal is refused.
	if d, refused := g.checkConflict(c, ip, ans, redisOK); refused {
		return d
	}
	if g.cfg.Conflicts.Mode == config.ConflictDeny {
		now = g.now() // after a claim's round trip to Redis
	}
	// Admit (conns.go): the connection joins this broker's table, and
	// conflict tracking hears of it.
	g.admitAt(c, ip, result == Defer, false, now)
	g.banRaced(c, ip, scans)
	return Decision{Result: result}
}

// tooLong is the refusal of c when its client ID is longer than
// clientid_max_bytes or its username than username_max_bytes (a bound of
// 0: none, Options' zero value).
func (g *Guard) tooLong(c *Client) (Decision, bool) {
	rule, most := "", 0
	switch {
	case g.cfg.ClientIDMaxBytes > 0 && c.idBytes() > g.cfg.ClientIDMaxBytes:
		rule, most = RuleClientIDTooLong, g.cfg.ClientIDMaxBytes
	case g.cfg.UsernameMaxBytes > 0 && c.userBytes() > g.cfg.UsernameMaxBytes:
		rule, most = RuleUsernameTooLong, g.cfg.UsernameMaxBytes
	default:
		return Decision{}, false
	}
	return Decision{Result: Deny, Rule: rule, Detail: "max_bytes=" + strconv.Itoa(most)}, true
}

// Bounds are clientid_max_bytes and username_max_bytes (0: none), for the
// cgo layer to cut what it copies of a CONNECT over them (Client's
// ClientIDBytes).
func (g *Guard) Bounds() (clientID, username int) {
	return g.cfg.ClientIDMaxBytes, g.cfg.UsernameMaxBytes
}
