package plugin

import (
	"net/netip"
	"slices"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// kickScan bounds the connections kickMatching examines per hold of g.mu,
// the lock that CONNECT, DISCONNECT and ACL checks take on the broker
// thread: a range ban over 100 000 connections must not stall them.
const kickScan = 256

// kickMatching disconnects the connections a new block key matches,
// unless an allow key exempts them. Until the kick lands (on the broker
// thread, through the work queue) the connection is flagged, and ACL
// checks refuse its messages.
//
// The table is scanned kickScan entries per lock hold, releasing g.mu in
// between (Go allows a map to change while it is ranged over: entries added
// meanwhile may be missed: their CONNECT read g.scans before this scan
// started, so banRaced looks them up again after their admit); the allow
// check runs unlocked.
func (g *Guard) kickMatching(key string, scope keys.Scope, value string) {
	var prefix netip.Prefix
	if scope == keys.CIDR {
		p, err := keys.ParseCIDR(value)
		if err != nil {
			return
		}
		prefix = p
	}
	// The candidates are read outside g.mu: no record is reused until
	// scanDone (records.go).
	defer g.scanDone()
	// A value that is a hashed tracking form also names the claims it is
	// the form of: an automatic ban of a long (or "sha256:") client ID or
	// username is written so (keys.FailKey), and refuses them at CONNECT
	// (atk48: such a key refused the claim but kicked nobody). Then the
	// connections are scanned, and the claims that may have that form
	// (keys.Hashed) hashed outside g.mu: up to 64 KB each, 256 of them per
	// hold took the broker thread's lock for 20 ms (atk49).
	hashed := (scope == keys.ClientID || scope == keys.Username) && keys.IsTrackingHash(value)
	if scope == keys.ClientID && !hashed { // one lookup, no scan
		g.mu.Lock()
		g.scanStartLocked(true)
		lc := g.byID.get(value)
		g.mu.Unlock()
		if lc != nil {
			g.kickCandidates(key, []*liveConn{lc})
		}
		return
	}
	pred := func(lc *liveConn) bool { return matches(lc, scope, value, prefix) }
	each := func(cands []*liveConn) { g.kickCandidates(key, cands) }
	if hashed {
		pred = func(lc *liveConn) bool { return maybeMatches(lc, scope, value) }
		each = func(cands []*liveConn) {
			g.kickCandidates(key, slices.DeleteFunc(cands, func(lc *liveConn) bool { return !matches(lc, scope, value, prefix) }))
		}
	}
	g.scanConns(true, pred, each)
}

// maybeMatches is matches for a clientid or username value that is a
// hashed tracking form, without hashing: the claim is the value, or may
// have it as its form (keys.Hashed). Cheap enough for g.mu.
func maybeMatches(lc *liveConn, scope keys.Scope, value string) bool {
	if scope == keys.ClientID {
		return lc.clientID == value || keys.Hashed(lc.clientID)
	}
	return lc.hasUsername && (lc.username() == value || keys.Hashed(lc.username()))
}

// scanConns calls each with the live connections pred picks (not flagged,
// not offline), at most kickScan at a time, g.mu held for kickScan entries
// at most and released while each runs. It starts a scan
// (scanStartLocked; ban: one for a list entry), so that no record is reused
// meanwhile: the caller ends it (scanDone) once done with the candidates.
// pred runs under g.mu.
func (g *Guard) scanConns(ban bool, pred func(*liveConn) bool, each func([]*liveConn)) {
	cands := make([]*liveConn, 0, kickScan)
	n := 0
	g.walkConns(func() { g.scanStartLocked(ban) }, func(lc *liveConn) bool {
		if !lc.flagged && !lc.offline && pred(lc) {
			cands = append(cands, lc)
		}
		n++
		return n%kickScan == 0
	}, func() bool {
		each(cands)
		cands = cands[:0]
		return true
	})
	each(cands)
}

// walkConns walks g.conns (every record there throughout is visited:
// connTable), g.mu held while start (nil: none) and visit run; after a
// visit that asks to pause, g.mu is released while paused runs, and the
// walk stops if it answers false. A panic in any of them leaves neither
// g.mu held (the broker thread takes it) nor the walk open.
func (g *Guard) walkConns(start func(), visit func(*liveConn) (pause bool), paused func() (more bool)) {
	g.mu.Lock()
	locked := true
	w := g.conns.walk()
	defer func() {
		if w.open() {
			if !locked {
				g.mu.Lock()
				locked = true
			}
			w.done()
		}
		if locked {
			g.mu.Unlock()
		}
	}()
	if start != nil {
		start()
	}
	for lc := w.next(); lc != nil; lc = w.next() {
		if !visit(lc) {
			continue
		}
		g.mu.Unlock()
		locked = false
		if !paused() {
			return
		}
		g.mu.Lock()
		locked = true
	}
	w.done()
	g.mu.Unlock()
	locked = false
}

// kickCandidates flags and kicks the candidates no allow entry exempts and
// that are still connected; g.mu not held, inside a scan (scanStartLocked:
// no record is reused meanwhile, so a candidate still in g.conns is the
// connection it was picked as). A candidate's identity fields are fixed at
// admit: they are read without the lock.
func (g *Guard) kickCandidates(key string, cands []*liveConn) {
	if len(cands) == 0 {
		return
	}
	now := g.now()
	hit := cands[:0:0]
	for _, lc := range cands {
		if g.replica.Lookup(queryOf(lc), now).Block != nil { // an allow entry may lift this ban for this client
			hit = append(hit, lc)
		}
	}
	// Banned while connected (an operator's ban: automatic ones do not kick).
	g.kick(key, true, hit)
}

// kick flags the connections of hit still connected and not flagged, and
// kicks them, each logged as kicked by rule (a list key when isKey, else one
// of the Rule constants); g.mu not held, inside a scan.
func (g *Guard) kick(rule string, isKey bool, hit []*liveConn) {
	if len(hit) == 0 {
		return
	}
	g.scanPause()
	var kicked []*liveConn
	g.mu.Lock()
	for _, lc := range hit {
		if lc.flagged || lc.offline || g.conns.get(lc.handle) != lc {
			continue // flagged by another ban meanwhile, or gone
		}
		lc.flagged = true
		kicked = append(kicked, lc)
		g.out.Flagged(1) // under g.mu: Disconnected's -1 cannot come first
	}
	g.mu.Unlock()
	g.metrics.kicked(len(kicked))
	for _, lc := range kicked {
		// Address: a client without an IP (a unix socket listener's) is
		// named by the broker's address for it, as its refused lines do.
		c := Client{ClientID: lc.clientID, Username: lc.username(), HasUsername: lc.hasUsername,
			CertID: lc.certID, CertSubject: lc.certSubject, Address: lc.addr}
		l := clientLine("kicked", &c, lc.ipAddr())
		if isKey {
			l.Str("rule", rule)
		} else {
			l.Tok("rule", rule)
		}
		l.Tok("origin", "operator")
		g.log(LevelNotice, clientFields(l, &c).String())
		g.out.Kick(lc.handle, lc.clientID)
	}
}

// banRaced closes the gap between a CONNECT's list check and its admit: an
// operator's ban that reached the replica in between was not seen by the
// check, and its kick scan may have run before the client was in g.conns.
// One that came while the password was hashed refuses the CONNECT
// (authenticate reads the lists again before the claim); what is left is
// the claim's Redis round trip under clientid_conflict deny, and a few
// instructions: the client is admitted, then flagged and kicked.
// scans is g.scans read before the check: unchanged, no scan started since
// (one that starts later finds the client in g.conns, admit being ordered
// with it by g.mu), and this costs one atomic load. Changed, c is looked up
// again and, when an operator's ban blocks it, flagged and kicked as
// kickCandidates does; the ban is returned (nil otherwise).
func (g *Guard) banRaced(c *Client, ip netip.Addr, scans uint64) *store.Match {
	if g.scans.Load() == scans {
		return nil
	}
	b := g.blockNow(c, ip)
	if b == nil || keys.IsAutoBan(b.Reason) { // automatic bans do not kick connected clients
		return nil
	}
	if !g.flagOne(c.Handle) {
		return nil
	}
	l := clientLine("kicked", c, ip).Str("rule", b.Key).Tok("origin", "operator")
	g.log(LevelNotice, clientFields(l, c).String())
	g.out.Kick(c.Handle, c.ClientID)
	return b
}

// flagOne flags the connection at handle, just admitted, unless it is gone
// or flagged already, and counts its kick; the caller queues the kick. It
// reports whether it flagged it.
func (g *Guard) flagOne(handle uintptr) bool {
	g.mu.Lock()
	lc := g.conns.get(handle)
	if lc == nil || lc.flagged || lc.offline {
		g.mu.Unlock()
		return false
	}
	lc.flagged = true
	g.out.Flagged(1) // under g.mu: Disconnected's -1 cannot come first
	g.mu.Unlock()
	g.metrics.kicked(1)
	return true
}

// blockNow is the block entry the replica now holds against c, after the
// allow entries' exemptions; nil without one (or without a replica: kick
// scans, which make a CONNECT look again, come from its changes).
func (g *Guard) blockNow(c *Client, ip netip.Addr) *store.Match {
	if g.replica == nil {
		return nil
	}
	return g.replica.Lookup(store.Query{ClientID: c.ClientID, IP: ip, Username: c.Username, HasUsername: c.HasUsername,
		Cert: c.CertID}, g.now()).Block
}

func matches(lc *liveConn, scope keys.Scope, value string, prefix netip.Prefix) bool {
	switch scope {
	case keys.ClientID:
		return lc.clientID == value || trackedAs(lc.clientID, value)
	case keys.Username:
		return lc.hasUsername && (lc.username() == value || trackedAs(lc.username(), value))
	case keys.IP:
		ip := lc.ipAddr()
		return ip.IsValid() && ip.String() == value
	case keys.CIDR:
		ip := lc.ipAddr()
		return ip.IsValid() && prefix.Contains(ip)
	case keys.Cert:
		return lc.certID != "" && lc.certID == value
	}
	return false
}

// trackedAs reports whether claim's tracking form is the hashed form
// value, which a key names when it is an automatic ban of the claim
// (keys.FailKey). Only a claim that has a hashed form is hashed.
func trackedAs(claim, value string) bool {
	return keys.Hashed(claim) && keys.IsTrackingHash(value) && keys.Tracking(claim) == value
}

func queryOf(lc *liveConn) store.Query {
	return store.Query{ClientID: lc.clientID, IP: lc.ipAddr(), Username: lc.username(), HasUsername: lc.hasUsername, Cert: lc.certID}
}

// KickDue says what to do with a kick queued for connection handle, whose
// client ID is clientID: run it (due), keep it for the next safe point
// (wait), or drop it. It is due while that very connection is there, banned
// while connected and not yet kicked (flagged), and is the one its client ID
// names here; Mosquitto 2.0 kicks by client ID only. So a kick whose
// connection ended is dropped rather than hitting a newer connection with the
// same ID (not banned, hence not flagged) or the offline session it left; and
// while a newer connection with the same ID awaits a later check (deferred),
// the kick waits: that one may still be refused, and the banned connection
// then names its ID again (see disconnected). Broker thread only.
func (g *Guard) KickDue(handle uintptr, clientID string) (due, wait bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	lc := g.conns.get(handle)
	if lc == nil || lc.clientID != clientID || lc.offline || !lc.flagged {
		return false, false
	}
	switch holder := g.byID.get(clientID); {
	case holder == lc:
		return true, false
	case holder != nil && holder.pending:
		return false, true
	}
	return false, false // taken over: its DISCONNECT is on the way
}

// Flagged reports whether a connection was banned while connected and
// awaits its kick (MOSQ_EVT_ACL_CHECK refuses its messages meanwhile).
func (g *Guard) Flagged(handle uintptr) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	lc := g.conns.get(handle)
	return lc != nil && !lc.offline && lc.flagged
}
