package plugin

import (
	"context"
	"net/netip"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/conflicts"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// checkConflict refuses a client whose client ID is live, here or on
// another broker, under another principal (clientid_conflict deny only). The
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
func (g *Guard) checkConflict(c *Client, ip netip.Addr, ans store.Answer, redisOK bool) (Decision, bool) {
	if g.cfg.Conflicts.Mode != config.ConflictDeny || g.tracker == nil {
		return Decision{}, false
	}
	principal := principalOf(c)
	holder := g.localHolder(c.ClientID, principal)
	attempt := conflicts.Conn{}
	claimed := false
	switch {
	case holder != nil || !redisOK || !g.health.up():
	case claims(c, g.cfg.Backend):
		var err error
		text, addr := connAddr(c, ip)
		attempt, holder, err = g.tracker.ClaimAddr(c.ClientID, principal, text, addr, g.now())
		if err != nil {
			g.health.down(err)
		}
		claimed = true
	default:
		holder = g.tracker.RemoteHolder(ans.Live, principal)
	}
	if holder == nil {
		return Decision{}, false
	}
	g.refusals.conflict(c, ip, holder)
	if !claimed {
		text, addr := connAddr(c, ip)
		attempt = g.tracker.NewConnAddr(principal, text, addr, g.now())
	}
	g.tracker.Refused(ownTracked(len(c.ClientID)+len(c.Username), c.ClientID), attempt, holder)
	return Decision{Result: Deny, Rule: RuleClientIDConflict}, true
}

// claims reports whether c's client ID is claimed on the broker thread
// under clientid_conflict deny: c is a client this plugin admits itself (a
// username, checked by the files or redis backend). The others may still be
// refused by a later check: they only look for a holder.
func claims(c *Client, backend config.Backend) bool {
	return backend.Checks(c.HasUsername)
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

// newTracker builds the conflict tracker of cfg's clientid_conflict
// options on st; claims go through claimer (the broker thread's client,
// bounded by redis_timeout, without retries) when it can claim; reported
// hears the kind of each finding reported; relist is told when this
// broker's lease was found gone (conflicts.Deps.Relist).
func newTracker(cfg config.Options, st conflicts.Store, claimer Store, log Logger, publish Publisher, now func() time.Time, reported func(kind string), relist func()) *conflicts.Tracker {
	d := conflicts.Deps{Store: st, Now: now, Publish: publish, Reported: reported, Relist: relist,
		Log: func(l conflicts.Level, msg string) { log(levelOf(l), msg) }}
	if cl, ok := claimer.(conflicts.Claimer); ok {
		d.Claimer = cl
	}
	// Deny and the claim's bound follow clientid_conflict and redis_timeout,
	// read here, once: the options hold each setting in one place.
	o := cfg.Conflicts.Options
	o.Deny = cfg.Conflicts.Mode == config.ConflictDeny
	o.ClaimTimeout = cfg.RedisTimeout
	return conflicts.New(o, d)
}

// levelOf maps a conflicts log level to the plugin's.
func levelOf(l conflicts.Level) Level {
	switch l {
	case conflicts.LevelNotice:
		return LevelNotice
	case conflicts.LevelWarning:
		return LevelWarning
	}
	return LevelError
}
