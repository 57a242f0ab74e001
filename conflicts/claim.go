package conflicts

import (
	"context"
	"net/netip"
	"strings"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// Anonymous is the principal of a client without a username or a
// certificate.
const Anonymous = "<anonymous>"

// certPrefix starts the principal of a client with a certificate:
// "cert:" and the certificate's ID (keys.CertID), as AWS IoT names a
// certificate principal by its ID.
const certPrefix = "cert:"

// usernamePrefix starts the principal of a username that could pose as
// another kind of principal: one starting with certPrefix or with
// usernamePrefix itself, or equal to Anonymous.
const usernamePrefix = "username:"

// Principal returns who a client is, for conflict detection: its
// certificate, certPrefix+certID, when it has one (certID: keys.CertID of
// the certificate the TLS handshake verified; its username is then only a
// claim beside it), else its authenticated username, else Anonymous.
//
// No username poses as another principal: a username starting with
// certPrefix or "username:", or equal to Anonymous, is "username:" and the
// username; every other username is itself, as before certificates. So
// two clients have one principal only when they have one certificate, or
// neither a certificate and one username (or none).
//
// It is in its keys.Tracking form, the form Redis holds and it is compared
// with: a username of up to 65 535 bytes must not size what tracking keeps.
func Principal(certID string, hasUsername bool, username string) string {
	switch {
	case certID != "":
		return keys.Tracking(certPrefix + certID)
	case !hasUsername:
		return Anonymous
	case username == Anonymous || strings.HasPrefix(username, certPrefix) || strings.HasPrefix(username, usernamePrefix):
		return keys.Tracking(usernamePrefix + username)
	}
	return keys.Tracking(username)
}

// principalKind names the kind of a principal Principal returned: "cert",
// "anonymous" or "username".
func principalKind(principal string) string {
	switch {
	case strings.HasPrefix(principal, certPrefix):
		return "cert"
	case principal == Anonymous:
		return "anonymous"
	}
	return "username"
}

// Claim claims clientID in Redis for a new connection of principal from ip
// (clientid_conflict deny, on the broker thread, bounded by
// Options.ClaimTimeout): it records the connection live unless another
// principal holds the ID live on another broker whose lease had not run
// out at the last renewal (a broker started since counts), and returns
// that holder. The record and the look are one atomic step on the
// client ID's live hash, so of two brokers admitting one client ID for two
// principals at the same moment, exactly one refuses. The connection
// claimed is the one the next NewConn for principal and ip returns.
//
// The claim allocates (the connection's ID, what Redis answers): it is
// clientid_conflict deny's round trip on the broker thread anyway.
func (t *Tracker) Claim(clientID, principal, ip string, now time.Time) (conn Conn, holder *store.Conn, err error) {
	return t.ClaimAddr(clientID, principal, ip, netip.Addr{}, now)
}

// ClaimAddr is Claim for a connection whose address is ip's text or, when
// ip is "", addr (NewConnAddr); the connection claimed is the one the next
// NewConnAddr for principal, ip and addr returns.
func (t *Tracker) ClaimAddr(clientID, principal, ip string, addr netip.Addr, now time.Time) (conn Conn, holder *store.Conn, err error) {
	conn = t.NewConnAddr(principal, ip, addr, now)
	// The lease view (leaseView.counts): a broker started since the last
	// renewal counts too.
	v := t.view(now.UnixMilli())
	b := store.Brokers{Since: v.since}
	for in, ok := range v.alive {
		switch {
		case in == t.instance:
		case ok:
			b.Alive = append(b.Alive, in)
		default:
			b.Dead = append(b.Dead, in)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), t.opts.ClaimTimeout)
	defer cancel()
	holder, err = t.claimer.Claim(ctx, clientID, t.StoreConn(conn), b)
	if err == nil && holder == nil {
		cc := conn
		t.claimed.Store(&cc)
	}
	return conn, holder, err
}

// RemoteHolder returns a live connection of clientID on another broker
// under another principal, from the live connections a lookup read.
func (t *Tracker) RemoteHolder(live []store.Conn, principal string) *store.Conn {
	alive := t.view(t.now().UnixMilli())
	for i := range live {
		r := live[i]
		if r.Instance != t.instance && alive.counts(&r) && r.Principal != principal {
			return &r
		}
	}
	return nil
}
