package plugin

import (
	"net/netip"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/backends/redisstore"
)

// liveConn is one connection this guard let through.
type liveConn struct {
	handle      uintptr
	clientID    string
	username    string
	hasUsername bool
	ip          netip.Addr
	conn        redisstore.Conn  // as recorded for conflict detection
	other       *redisstore.Conn // the connection of this broker it took over, if any
	pending     bool             // deferred to a later check: confirmed after confirmDelay without DISCONNECT
	flagged     bool             // banned while connected: its kick is on the way
	since       time.Time
}

// confirmDelay: a client this plugin deferred and a later check refused is
// disconnected within the same broker loop; one still there after this
// was let in.
const confirmDelay = 500 * time.Millisecond

// Disconnected forgets a connection (MOSQ_EVT_DISCONNECT).
func (g *Guard) Disconnected(handle uintptr) {
	g.mu.Lock()
	lc := g.conns[handle]
	delete(g.conns, handle)
	if lc != nil && g.byID[lc.clientID] == lc {
		delete(g.byID, lc.clientID)
	}
	recorded := lc != nil && !lc.pending
	flagged := lc != nil && lc.flagged
	g.mu.Unlock()
	if flagged {
		g.out.Flagged(-1)
	}
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
	lc := &liveConn{handle: c.Handle, clientID: c.ClientID, username: c.Username, hasUsername: c.HasUsername,
		ip: ip, pending: pending, since: now}
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
