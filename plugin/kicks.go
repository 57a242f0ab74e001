package plugin

import (
	"fmt"
	"net/netip"

	"github.com/mosquitto-guard/mosquitto-guard/backends/redisstore"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// kickMatching disconnects the connections a new block key matches,
// unless an allow key exempts them. Until the kick lands (on the broker
// thread, through the work queue) the connection is flagged, and ACL
// checks refuse its messages.
func (g *Guard) kickMatching(key string, scope keys.Scope, value string) {
	var prefix netip.Prefix
	if scope == keys.CIDR {
		p, err := keys.ParseCIDR(value)
		if err != nil {
			return
		}
		prefix = p
	}
	var hit []*liveConn
	g.mu.Lock()
	for _, lc := range g.conns {
		if lc.flagged || !matches(lc, scope, value, prefix) {
			continue
		}
		if g.replica.Lookup(queryOf(lc), g.now()).Block == nil {
			continue // an allow entry lifts this ban for this client
		}
		lc.flagged = true
		hit = append(hit, lc)
	}
	g.mu.Unlock()
	for _, lc := range hit {
		g.out.Flagged(1)
		c := Client{ClientID: lc.clientID, Username: lc.username, HasUsername: lc.hasUsername}
		g.log(LevelNotice, fmt.Sprintf("mosquitto-guard: kicking %s rule=%s origin=operator: banned while connected",
			describeClient(c, lc.ip), quote(key)))
		g.out.Kick(lc.clientID)
	}
}

func matches(lc *liveConn, scope keys.Scope, value string, prefix netip.Prefix) bool {
	switch scope {
	case keys.ClientID:
		return lc.clientID == value
	case keys.Username:
		return lc.hasUsername && lc.username == value
	case keys.IP:
		return lc.ip.IsValid() && lc.ip.String() == value
	case keys.CIDR:
		return lc.ip.IsValid() && prefix.Contains(lc.ip)
	}
	return false
}

func queryOf(lc *liveConn) redisstore.Query {
	return redisstore.Query{ClientID: lc.clientID, IP: lc.ip, Username: lc.username, HasUsername: lc.hasUsername}
}

// Flagged reports whether a connection was banned while connected and
// awaits its kick (MOSQ_EVT_ACL_CHECK refuses its messages meanwhile).
func (g *Guard) Flagged(handle uintptr) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	lc := g.conns[handle]
	return lc != nil && lc.flagged
}
