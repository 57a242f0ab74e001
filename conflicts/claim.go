package conflicts

import (
	"context"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// Anonymous is the principal of a client without a username.
const Anonymous = "<anonymous>"

// Principal returns who a client is, for conflict detection: its
// authenticated username, or Anonymous. (Certificate identities will be
// principals too; they belong here.) It is in its keys.Tracking form, the
// form Redis holds and it is compared with: a username of up to 65 535
// bytes must not size what tracking keeps.
func Principal(hasUsername bool, username string) string {
	if !hasUsername {
		return Anonymous
	}
	return keys.Tracking(username)
}

// Claim claims clientID in Redis for a new connection of principal from ip
// (clientid_conflict deny, on the broker thread, bounded by
// Options.ClaimTimeout): it records the connection live unless another
// principal holds the ID live on another broker whose lease runs, and
// returns that holder. The record and the look are one atomic step on the
// client ID's live hash, so of two brokers admitting one client ID for two
// principals at the same moment, exactly one refuses. The connection
// claimed is the one the next NewConn for principal and ip returns.
func (t *Tracker) Claim(clientID, principal, ip string, now time.Time) (conn store.Conn, holder *store.Conn, err error) {
	conn = t.NewConn(principal, ip, now)
	alive := *t.live.Load()
	instances := make([]string, 0, len(alive))
	for in, ok := range alive {
		if ok && in != t.instance {
			instances = append(instances, in)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), t.opts.ClaimTimeout)
	defer cancel()
	holder, err = t.claimer.Claim(ctx, clientID, conn, instances)
	if err == nil && holder == nil {
		cc := conn
		t.claimed.Store(&cc)
	}
	return conn, holder, err
}

// RemoteHolder returns a live connection of clientID on another broker
// under another principal, from the live connections a lookup read.
func (t *Tracker) RemoteHolder(live []store.Conn, principal string) *store.Conn {
	alive := *t.live.Load()
	for i := range live {
		r := live[i]
		if r.Instance != t.instance && alive[r.Instance] && r.Principal != principal {
			return &r
		}
	}
	return nil
}
