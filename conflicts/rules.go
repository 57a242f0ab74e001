package conflicts

import (
	"math"
	"sort"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// leaseView is which brokers' live entries count (Tracker.view): alive
// maps an instance to true when its lease ran at the last renewal, false
// when it had run out. An entry of an instance it does not name (a broker
// started since that renewal, up to a third of broker_lease ago) counts
// when it connected at or after since (broker_lease before now): before,
// every such entry was ignored until the next renewal, and under
// clientid_conflict deny another principal was let in beside its clients
// (atk42). One never named, of a broker that died before its first
// renewal (it is never reaped), stops counting after broker_lease.
type leaseView struct {
	alive map[string]bool
	since int64 // unix ms
}

// counts reports whether live entry c counts.
func (v leaseView) counts(c *store.Conn) bool {
	if ok, named := v.alive[c.Instance]; named {
		return ok
	}
	return c.ConnectedMs >= v.since
}

// view is the lease view of the last renewal at now (unix ms). While the
// view may miss alive brokers (Tracker.unseenAll: before a renewal with
// the lease running, while renewals fail, after one that found the lease
// lapsed), every entry of a broker it does not name counts: a flush took
// every lease, and a broker alive all along has not renewed its own yet
// (atk43: under deny, for up to a third of broker_lease after a flush, a
// client held longer than broker_lease on another broker, its entry
// relisted with its connect's time, had its client ID taken; atk44,
// atk45).
func (t *Tracker) view(now int64) leaseView {
	if t.unseenAll.Load() {
		return leaseView{alive: *t.live.Load(), since: math.MinInt64}
	}
	return leaseView{alive: *t.live.Load(), since: now - t.opts.Lease.Milliseconds()}
}

// evaluate applies the conflict rules to a new connection me of clientID
// (other: the connection of this broker it took over, if any), given the
// live connections and past users Redis knows of, the lease view alive
// (leaseView.counts), and now (unix ms). It returns:
//   - cross: a cross-principal finding, when another principal used the
//     client ID within window (or holds it live);
//   - dup: a duplicate-connection finding candidate, when the same
//     principal's connection with this ID was live (taken over on this
//     broker, or live on another one). It is reported only once it repeats
//     takeover_limit times in takeover_window.
func evaluate(clientID string, me store.Conn, other *store.Conn, live, seen []store.Conn, alive leaseView, now int64, window time.Duration) (cross, dup *store.Finding) {
	isLive := map[string]bool{}       // connection IDs live now
	others := map[string]store.Conn{} // principal -> its latest connection
	var sameLive *store.Conn
	consider := func(c store.Conn, live bool) {
		if live {
			isLive[c.ID] = true
		}
		if c.Principal == me.Principal {
			if live && sameLive == nil {
				cc := c
				sameLive = &cc
			}
			return
		}
		last := c.ConnectedMs
		switch {
		case live:
			last = now
		case c.DisconnectedMs > 0:
			last = c.DisconnectedMs
		}
		if last < now-window.Milliseconds() {
			return
		}
		if prev, ok := others[c.Principal]; !ok || c.ConnectedMs > prev.ConnectedMs {
			others[c.Principal] = c
		}
	}
	// The connection this one takes over here (other) first: of the
	// principal's own live connections it is the one surely displaced, and
	// the duplicate names it. A remote one named instead may be a stopped
	// broker's leftover, not counted (Tracker.heldLive), and the local
	// takeover went uncounted with it (atk93).
	if other != nil {
		consider(*other, true)
	}
	// Remote live connections count unless their broker's lease ran out
	// (leaseView.counts); this broker's own entries are superseded by the
	// local table (other).
	for _, c := range live {
		if c.Instance != me.Instance && alive.counts(&c) && c.ID != me.ID {
			consider(c, true)
		}
	}
	for _, c := range seen {
		if c.ID != me.ID && !isLive[c.ID] {
			consider(c, false)
		}
	}

	if len(others) > 0 {
		conns := []store.Conn{me}
		var displaced int64
		for _, c := range others {
			conns = append(conns, c)
			switch {
			case other != nil && c.ID == other.ID:
				displaced = now // the broker closes it as this client takes over
			case !isLive[c.ID] && c.DisconnectedMs > displaced && displaced != now:
				displaced = c.DisconnectedMs
			}
		}
		cross = newFinding(store.KindCrossPrincipal, clientID, conns, now)
		cross.DisplacedDisconnectedMs = displaced
	}
	if sameLive != nil {
		dup = newFinding(store.KindDuplicate, clientID, []store.Conn{me, *sameLive}, now)
		if other != nil && sameLive.ID == other.ID {
			dup.DisplacedDisconnectedMs = now
		}
	}
	return cross, dup
}

// show gives f, a finding on l's client ID, what its log line quotes of
// it; nil l or f: nothing to do.
func (l *longID) show(f *store.Finding) {
	if l != nil && f != nil {
		f.ClientIDShown, f.ClientIDBytes = l.shown, l.bytes
	}
}

// newFinding builds a finding over conns (the new connection first);
// clientID is in its keys.Tracking form, as the queue's events hold it.
func newFinding(kind, clientID string, conns []store.Conn, now int64) *store.Finding {
	sorted := append([]store.Conn(nil), conns...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].ConnectedMs > sorted[j].ConnectedMs })
	seen := map[string]bool{}
	var principals []string
	for _, c := range conns {
		if !seen[c.Principal] {
			seen[c.Principal] = true
			principals = append(principals, c.Principal)
		}
	}
	sort.Strings(principals)
	return &store.Finding{
		Reason: store.ReasonDuplicateClientID, Severity: store.SeverityHigh,
		Kind: kind, Action: "flagged", ClientID: clientID, ClientIDTracked: true,
		Principals: principals, Connections: sorted, TimeMs: now,
	}
}
