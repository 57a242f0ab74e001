package plugin

import (
	"net/netip"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// FirstSight decides a connection the plugin first sees at one of its ACL
// checks (MOSQ_EVT_ACL_CHECK) because Mosquitto 2.0 never called BASIC_AUTH
// for it: a listener with use_identity_as_username or
// use_subject_as_username, where the certificate is the client's whole
// authentication. The lists are checked as at a CONNECT (certificate,
// client ID, username, IP, range; allow entries as there); a client they
// ban, or that clientid_conflict deny refuses, is refused now: this ACL
// check and every later one until its kick, which runs at the next safe
// point (the TICK the broker is woken for, cgo/wake.go). Either way the connection is
// recorded, for kicks by later bans and for conflict detection. No
// password is checked and no failure counted: there is none.
//
// The window this leaves: a banned device completes its TLS handshake and
// CONNECT, and holds the connection, doing nothing (each PUBLISH and
// SUBSCRIBE refused), until the kick. Broker thread only.
func (g *Guard) FirstSight(c Client) Decision {
	ip, _ := keys.NormalizeIP(c.Address)
	scans := g.scans.Load() // before the lists are read (banRaced)
	ans, _ := g.lookup(&c, ip, false)
	redisOK := g.health.up()
	d := Decision{Result: Allow}
	long, tooLong := g.tooLong(&c)
	switch {
	case tooLong:
		d = long
	case !redisOK && g.cfg.DenyWhenRedisDown:
		d = Decision{Result: Deny, Rule: RuleRedisUnavailable}
	case ans.Block != nil:
		d = Decision{Result: Deny, Rule: ans.Block.Key, Match: ans.Block}
	default:
		if cd, refused := g.checkConflict(&c, ip, ans, redisOK); refused {
			// checkConflict logged it; only the kick is left.
			g.metrics.connect(ruleClientIDConflict)
			g.admitFlagged(&c, ip)
			return cd
		}
	}
	if d.Result != Deny {
		g.metrics.connect(ruleCertificate)
		g.admit(&c, ip, false, true)
		if b := g.banRaced(&c, ip, scans); b != nil { // flagged and kicked: this ACL check too is refused
			return Decision{Result: Deny, Rule: b.Key, Match: b}
		}
		return d
	}
	g.metrics.connect(refusedBy(d))
	if d.Detail != "" {
		d.Detail += " "
	}
	d.Detail += "seen=first-acl-check" // no BASIC_AUTH on this listener: kicked at the next safe point
	g.refusals.refuse(&c, ip, d, false)
	g.admitFlagged(&c, ip)
	return d
}

// admitFlagged records a connection refused at its first sight and flags
// it: ACL checks refuse its messages until its kick, queued here. Conflict
// tracking hears of it like any connection: it is one (the broker let it in
// and it may have taken over a client ID), so a banned certificate taking
// another's client ID is a finding too.
func (g *Guard) admitFlagged(c *Client, ip netip.Addr) {
	g.admit(c, ip, false, true)
	if g.flagOne(c.Handle) {
		g.out.Kick(c.Handle, c.ClientID)
	}
}

// LeftUnseen checks a client that ends before the plugin saw it (no
// BASIC_AUTH on its listener, no ACL check yet) against the lists, at its
// DISCONNECT: a client they ban, or whose client ID or username is over its
// bound (tooLong), is refused its will, the ACL check the broker makes
// next, and the refusal is logged. It reports whether the
// client is banned. Nothing is recorded: the connection is over.
func (g *Guard) LeftUnseen(c Client) bool {
	ip, _ := keys.NormalizeIP(c.Address)
	// Over clientid_max_bytes or username_max_bytes: refused as at its first
	// sight, so its will too (a hostile test found it delivered: atk16).
	if d, long := g.tooLong(&c); long {
		d.Detail += " seen=disconnect"
		g.refusals.refuse(&c, ip, d, false)
		return true
	}
	ans, _ := g.lookup(&c, ip, true) // no live connections asked: nothing is admitted
	if ans.Block == nil {
		return false
	}
	// Its will is refused.
	g.refusals.refuse(&c, ip, Decision{Result: Deny, Rule: ans.Block.Key, Match: ans.Block, Detail: "seen=disconnect"}, false)
	return true
}
