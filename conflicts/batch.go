package conflicts

import (
	"context"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

type quietMark struct {
	principal string
	at        int64 // unix ms
}

const quietFor = 10 * time.Second

type seenKey struct{ clientID, principal string }

type seenMark struct {
	connID string
	at     int64 // unix ms
}

const (
	seenRefresh = 30 * time.Second
	seenMemoMax = 200_000
)

// handle applies the rules to a batch of events, in order, in one round
// trip. Each connect records its connection (live, and its principal's use)
// and reads the client ID's state right after, per key (a script under
// deny, plain commands in order under flag; unless the client ID is known
// quiet), so that of two brokers recording one client ID at the same moment
// the second always sees the first; each disconnect
// removes its live entry and records its end, if still its own. Redis
// applies a batch's writes to each key in batch order, so each connect's
// read shows the events of the batch before it.
func (t *Tracker) handle(ctx context.Context, batch []event) error {
	now := t.now().UnixMilli()
	ws, at := t.writes(batch, now)
	t.flushRetry(ctx)
	states, err := t.store.WriteConns(ctx, ws, t.opts.Window)
	if err != nil {
		t.keepForRetry(ws)
		return err
	}
	alive := *t.live.Load()
	var found, dups []*store.Finding
	for i, ev := range batch {
		switch ev.kind {
		case evConnect:
			var st store.State // a quiet client ID is not read: only a local takeover counts
			if at[i] >= 0 && at[i] < len(states) && ws[at[i]].Read {
				st = states[at[i]]
				t.noteQuiet(ev, &st, alive, now)
			}
			cross, dup := evaluate(ev, st.Live, st.Seen, alive, now, t.opts.Window)
			if cross != nil {
				found = append(found, cross)
			}
			if dup != nil {
				dups = append(dups, dup)
			}
		case evRefused:
			f := newFinding(store.KindCrossPrincipal, ev.clientID, []store.Conn{ev.conn, *ev.other}, now)
			f.Action = "refused"
			found = append(found, f)
		}
	}
	for _, d := range dups {
		n, err := t.store.CountTakeover(ctx, d.ClientID, t.opts.TakeoverWindow)
		if err != nil {
			return err
		}
		if n >= int64(t.opts.TakeoverLimit) {
			found = append(found, d)
		}
	}
	for _, f := range found {
		t.report(ctx, f)
	}
	return nil
}

// writes turns a batch into its writes, and the index of each connect's
// write in them (-1: folded away).
//
// A connection that starts and ends within this batch, of a client ID read
// quiet less than quietFor ago (its principal alone on it, here) and whose
// principal's use is recorded fresh, leaves nothing for Redis to know: the
// pair is folded away (a device reconnecting in a loop costs no Redis
// command), and only its local takeover, if any, is evaluated. folded: the
// connections folded, and whether the client ID was listed live for this
// broker before (then the pair's end must unlist it).
func (t *Tracker) writes(batch []event, now int64) ([]store.ConnWrite, []int) {
	ws := make([]store.ConnWrite, 0, len(batch))
	at := make([]int, len(batch))
	conns := make([]store.Conn, len(batch)) // what ws points to: one allocation per batch
	var ends, folded map[string]bool        // made when first needed: new client IDs never fold
	for i, ev := range batch {
		switch ev.kind {
		case evConnect:
			conns[i] = ev.conn
			conn := &conns[i]
			// Sole under clientid_conflict flag: this worker alone writes this
			// instance's live field, in event order (see store.ConnWrite.Sole).
			w := store.ConnWrite{ClientID: ev.clientID, Instance: t.instance, Live: conn, Read: !t.isQuiet(ev, now), Sole: !t.opts.Deny}
			if !t.seenFresh(ev, now) {
				w.Seen = conn
			}
			// Not under clientid_conflict deny: there the broker thread
			// wrote the live entry already (the claim), and its end must clear it.
			if !w.Read && w.Seen == nil && !t.opts.Deny && endsOf(batch, &ends)[conn.ID] {
				_, listed := t.current[ev.clientID]
				if folded == nil {
					folded = map[string]bool{}
				}
				folded[conn.ID] = listed
				t.current[ev.clientID] = conn.ID
				at[i] = -1
				continue
			}
			t.current[ev.clientID] = conn.ID
			at[i] = len(ws)
			ws = append(ws, w)
		case evDisconnect:
			conns[i] = ev.conn
			left := &conns[i]
			left.DisconnectedMs = now
			if listed, ok := folded[left.ID]; ok {
				if t.current[ev.clientID] == left.ID {
					delete(t.current, ev.clientID)
					if listed {
						ws = append(ws, store.ConnWrite{ClientID: ev.clientID, Instance: t.instance, Unlist: true})
					}
				}
				continue
			}
			w := store.ConnWrite{ClientID: ev.clientID, Instance: t.instance, Gone: left}
			if t.current[ev.clientID] == left.ID { // not already replaced by a takeover
				delete(t.current, ev.clientID)
				w.Unlist = true
				// Under clientid_conflict flag the field holds left, or an
				// older connection of this instance (left's write not
				// taken), which has ended too, or nothing (reaped): a plain
				// HDEL. Otherwise a newer connection was recorded there or
				// folded away (then the field may still hold left): the
				// compare-and-delete, as under deny.
				w.Sole = !t.opts.Deny
			}
			if t.seen[seenKey{keys.Tracking(ev.clientID), left.Principal}].connID == left.ID {
				w.Left = left
			}
			ws = append(ws, w)
		}
	}
	return ws, at
}

// endsOf returns the IDs of the connections that end in batch, made once
// in *ends.
func endsOf(batch []event, ends *map[string]bool) map[string]bool {
	if *ends == nil {
		*ends = map[string]bool{}
		for _, ev := range batch {
			if ev.kind == evDisconnect {
				(*ends)[ev.conn.ID] = true
			}
		}
	}
	return *ends
}

// isQuiet reports whether ev's client ID read back quiet for its principal
// less than quietFor ago.
func (t *Tracker) isQuiet(ev event, now int64) bool {
	m, ok := t.quiet[keys.Tracking(ev.clientID)]
	return ok && m.principal == ev.conn.Principal && now-m.at < quietFor.Milliseconds()
}

// noteQuiet records whether a read of ev's client ID showed only its
// principal, with no live connection on another broker.
func (t *Tracker) noteQuiet(ev event, st *store.State, alive map[string]bool, now int64) {
	for _, x := range st.Seen {
		if x.Principal != ev.conn.Principal {
			delete(t.quiet, keys.Tracking(ev.clientID))
			return
		}
	}
	for _, x := range st.Live {
		if x.Instance != t.instance && alive[x.Instance] {
			delete(t.quiet, keys.Tracking(ev.clientID))
			return
		}
	}
	if len(t.quiet) >= seenMemoMax {
		t.quiet = map[string]quietMark{}
	}
	t.quiet[keys.Tracking(ev.clientID)] = quietMark{principal: ev.conn.Principal, at: now}
}

// seenFresh reports whether ev's principal had its use of the client ID
// recorded less than seenRefresh ago; if not, ev's connection records it.
func (t *Tracker) seenFresh(ev event, now int64) bool {
	k := seenKey{keys.Tracking(ev.clientID), ev.conn.Principal}
	if m, ok := t.seen[k]; ok && now-m.at < seenRefresh.Milliseconds() {
		return true
	}
	if len(t.seen) >= seenMemoMax {
		t.seen = map[seenKey]seenMark{}
	}
	t.seen[k] = seenMark{connID: ev.conn.ID, at: now}
	return false
}

// keepForRetry keeps the disconnect writes of a batch Redis did not take:
// a connection that ended must not stay "live" in guard:conn while this
// broker's lease runs (clientid_conflict deny would refuse its device on
// every other broker). They are final-state and compare-and-delete (not
// Sole any more), so writing them late is safe. At most queueSize are kept; the oldest go
// first.
func (t *Tracker) keepForRetry(ws []store.ConnWrite) {
	for _, w := range ws {
		if w.Gone != nil {
			// Copies of their own: w points into its batch's array,
			// which a kept write must not hold on to.
			gone := *w.Gone
			if w.Left == w.Gone {
				w.Left = &gone
			} else if w.Left != nil {
				left := *w.Left
				w.Left = &left
			}
			w.Gone = &gone
			// Compare-and-delete when retried: a newer connection of the
			// client ID may be recorded by then.
			w.Sole = false
			t.retry = append(t.retry, w)
		}
	}
	if over := len(t.retry) - queueSize; over > 0 {
		t.retry = append(t.retry[:0], t.retry[over:]...)
		t.dropped.Add(int64(over))
	}
}

// flushRetry writes the kept disconnects, before a batch and at each lease
// renewal, until Redis takes them.
func (t *Tracker) flushRetry(ctx context.Context) {
	if len(t.retry) == 0 {
		return
	}
	if _, err := t.store.WriteConns(ctx, t.retry, t.opts.Window); err == nil {
		t.retry = t.retry[:0]
	}
}
