package conflicts

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// oldMemos are the worker's memos as they were before one entry per client
// ID (7c46b08: current, seen and quiet in three maps, times in unix ms),
// with the writes they made: the reference that TestMemosAsBefore holds
// the new memos to.
type oldMemos struct {
	t       *Tracker // its instance, options and memo keys
	seen    map[memoKey]oldSeenMark
	current map[string]uint64
	quiet   map[memoKey]oldQuietMark
}

type oldSeenMark struct {
	seq uint64
	at  int64
}

type oldQuietMark struct {
	who memoKey
	at  int64
}

func newOldMemos(t *Tracker) *oldMemos {
	return &oldMemos{t: t, seen: map[memoKey]oldSeenMark{}, current: map[string]uint64{}, quiet: map[memoKey]oldQuietMark{}}
}

func (o *oldMemos) isQuiet(clientID string, pair memoKey, now int64) bool {
	m, ok := o.quiet[o.t.memo(clientID, "")]
	return ok && m.who == pair && now-m.at < quietFor.Milliseconds()
}

func (o *oldMemos) noteQuiet(ev event, st *store.State, alive leaseView, now int64) {
	id := o.t.memo(ev.clientID, "")
	for _, x := range st.Seen {
		if x.Principal != ev.conn.Principal {
			delete(o.quiet, id)
			return
		}
	}
	for _, x := range st.Live {
		if x.Instance != o.t.instance && alive.counts(&x) {
			delete(o.quiet, id)
			return
		}
	}
	o.quiet[id] = oldQuietMark{who: o.t.memo(ev.clientID, ev.conn.Principal), at: now}
}

func (o *oldMemos) seenFresh(pair memoKey, seq uint64, now int64) bool {
	if m, ok := o.seen[pair]; ok && now-m.at < seenRefresh.Milliseconds() {
		return true
	}
	o.seen[pair] = oldSeenMark{seq: seq, at: now}
	return false
}

func (o *oldMemos) sweepQuiet(now int64) {
	for k, m := range o.quiet {
		if now-m.at >= quietFor.Milliseconds() {
			delete(o.quiet, k)
		}
	}
}

// writes is the worker's writes of 7c46b08, on the three maps.
func (o *oldMemos) writes(batch []event, conns []store.Conn, now int64) ([]store.ConnWrite, []int) {
	ws := make([]store.ConnWrite, 0, len(batch))
	at := make([]int, len(batch))
	var ends map[uint64]end
	var folded map[uint64]bool
	for i, ev := range batch {
		switch ev.kind {
		case evConnect:
			conn := &conns[i]
			seq := ev.conn.Seq
			// Sole under clientid_conflict flag: this worker alone writes this
			// instance's live field, in event order (see store.ConnWrite.Sole).
			pair := o.t.memo(ev.clientID, ev.conn.Principal)
			w := store.ConnWrite{ClientID: ev.clientID, Tracked: true, Instance: o.t.instance, Live: conn, Read: !o.isQuiet(ev.clientID, pair, now), Sole: !o.t.opts.Deny}
			if !o.seenFresh(pair, seq, now) {
				w.Seen = conn
			}
			// Not under clientid_conflict deny: there the broker thread
			// wrote the live entry already (the claim), and its end must clear it.
			if !o.t.opts.Deny {
				e, ending := endsOf(batch, &ends)[seq]
				_, listed := o.current[ev.clientID]
				switch {
				case ending && !w.Read && w.Seen == nil:
					if folded == nil {
						folded = map[uint64]bool{}
					}
					folded[seq] = listed
					o.current[ev.clientID] = seq
					at[i] = -1
					continue
				case ending && e.alone && !listed: // foldEnded's conditions 2 and 3
					o.t.foldEnded(&w, &conns[e.at], now)
					if folded == nil {
						folded = map[uint64]bool{}
					}
					folded[seq] = false // not listed: its end has nothing to unlist
					o.current[ev.clientID] = seq
					at[i] = len(ws)
					ws = append(ws, w)
					continue
				}
			}
			o.current[ev.clientID] = seq
			at[i] = len(ws)
			ws = append(ws, w)
		case evDisconnect:
			left := &conns[i]
			left.DisconnectedMs = now
			seq := ev.conn.Seq
			if listed, ok := folded[seq]; ok {
				if o.current[ev.clientID] == seq {
					delete(o.current, ev.clientID)
					if listed {
						ws = append(ws, store.ConnWrite{ClientID: ev.clientID, Tracked: true, Instance: o.t.instance, Unlist: true})
					}
				}
				continue
			}
			w := store.ConnWrite{ClientID: ev.clientID, Tracked: true, Instance: o.t.instance, Gone: left}
			if o.current[ev.clientID] == seq { // not already replaced by a takeover
				delete(o.current, ev.clientID)
				w.Unlist = true
				// Under clientid_conflict flag the field holds left, or an
				// older connection of this instance (left's write not
				// taken), which has ended too, or nothing (reaped): a plain
				// HDEL. Otherwise a newer connection was recorded there or
				// folded away (then the field may still hold left): the
				// compare-and-delete, as under deny.
				w.Sole = !o.t.opts.Deny
			}
			// The end of one that lasted seenRefresh is written too, as
			// the worker now does (a hostile tester: otherwise lost).
			if o.seen[o.t.memo(ev.clientID, ev.conn.Principal)].seq == seq || now-ev.conn.ConnectedMs >= seenRefresh.Milliseconds() {
				w.Left = left
			}
			ws = append(ws, w)
		}
	}
	return ws, at
}

// checkMemos checks what the memos keep in step: listed counts the
// entries listing a connection, owed holds a number for each split entry
// and for nothing else, and no pair has a seen mark both in its entry and
// in others.
func checkMemos(t *testing.T, tr *Tracker) {
	t.Helper()
	listed, split := 0, 0
	for id, p := range tr.ids.All() {
		e := tr.unpack(id, p)
		if e.cur != 0 {
			listed++
		}
		if p.tag&modeMask == modeSplit {
			split++
			require.NotZero(t, tr.owed[id])
			require.NotEqual(t, e.cur, e.seenSeq)
		}
		if e.seenAt != 0 {
			_, both := tr.others[pairKey{id, e.who}]
			require.False(t, both, "a pair's seen mark in its entry and in others")
		}
	}
	require.Equal(t, listed, tr.listed)
	require.Len(t, tr.owed, split)
}

// capStore is a memStore that keeps the last writes it took and the
// states it read back.
type capStore struct {
	*memStore
	ws     []store.ConnWrite
	states []store.State
}

// WriteConns keeps deep copies: the worker reuses a batch's arrays for
// the next batch once WriteConns has returned (Tracker.sc).
func (c *capStore) WriteConns(ctx context.Context, ws []store.ConnWrite, window time.Duration) ([]store.State, error) {
	st, err := c.memStore.WriteConns(ctx, ws, window)
	c.ws, c.states = deepWrites(ws), st
	return st, err
}

// withReadLive is a reference's writes ws as the worker writes them now: a
// connect's write that skips its read reads the live hash (ReadLive, since
// atk47; the references predate it).
func withReadLive(ws []store.ConnWrite) []store.ConnWrite {
	for i := range ws {
		ws[i].ReadLive = ws[i].Live != nil && !ws[i].Read && !ws[i].Ended
	}
	return ws
}

// deepWrites copies ws and the connections it points to.
func deepWrites(ws []store.ConnWrite) []store.ConnWrite {
	out := slices.Clone(ws)
	cp := func(c *store.Conn) *store.Conn {
		if c == nil {
			return nil
		}
		d := *c
		return &d
	}
	for i := range out {
		out[i].Live, out[i].Gone, out[i].Seen, out[i].Left = cp(out[i].Live), cp(out[i].Gone), cp(out[i].Seen), cp(out[i].Left)
		// Check asks the store for what it read (checkEnds), and writes
		// nothing: the references predate it.
		out[i].Check = false
	}
	return out
}

// The one entry per client ID changes none of the worker's writes: random
// runs of connects, takeovers (by the same principal and by others),
// disconnects in and out of order, folded and not, reads showing a peer
// broker's connections and other principals, sweeps, and the clock moving
// by whole seconds across quietFor, seenRefresh and the window (the
// stamps' second changes nothing then; a window without writes expires the
// seen hashes, as Redis's TTL does, so that a read may show one principal
// where the memos hold another's mark), each batch's writes (live, seen, read, unlist,
// end, fold) are those of the three maps before, under
// clientid_conflict flag and deny.
func TestMemosAsBefore(t *testing.T) {
	steps := []time.Duration{0, 0, time.Second, 5 * time.Second, 9 * time.Second, quietFor, 11 * time.Second,
		seenRefresh - time.Second, seenRefresh, seenRefresh + time.Second, time.Hour, 3 * time.Hour}
	ids := []string{"d0", "d1", "d2", "d3"}
	principals := []string{"alice", "bob", "carol"}
	for _, deny := range []bool{false, true} {
		for seed := uint64(1); seed <= 300; seed++ {
			rng := rand.New(rand.NewPCG(seed, 12))
			mem := newMemStore()
			cs := &capStore{memStore: mem}
			opts := testOptions()
			opts.Deny, opts.Window = deny, 2*time.Hour
			clk := newClock()
			tr := New(opts, Deps{Store: cs, Now: clk.now})
			peer := New(opts, Deps{Store: mem, Now: clk.now})
			tr.live.Store(&map[string]bool{tr.instance: true, peer.instance: true})
			ref := newOldMemos(tr)
			type open struct {
				id string
				c  Conn
			}
			var live []open
			latest := map[string]*Conn{}
			ctx := context.Background()
			for round := 0; round < 40; round++ {
				step := steps[rng.IntN(len(steps))]
				clk.advance(step)
				if step >= opts.Window { // nothing written for a window: the seen hashes expire
					mem.mu.Lock()
					for _, st := range mem.states {
						st.Seen = nil
					}
					mem.mu.Unlock()
				}
				now := clk.now().UnixMilli()
				if rng.IntN(6) == 0 {
					tr.sweep(now)
					ref.sweepQuiet(now)
				}
				if rng.IntN(5) == 0 { // a peer broker's connection, sometimes still live
					id := ids[rng.IntN(len(ids))]
					pc := peer.NewConn(principals[rng.IntN(len(principals))], "198.51.100.1", clk.now())
					evs := []event{{kind: evConnect, clientID: id, conn: pc}}
					if rng.IntN(2) == 0 {
						evs = append(evs, event{kind: evDisconnect, clientID: id, conn: pc})
					}
					require.NoError(t, peer.handle(ctx, evs))
				}
				var batch []event
				for k := 1 + rng.IntN(8); k > 0; k-- {
					if len(live) > 0 && rng.IntN(5) < 2 {
						j := rng.IntN(len(live))
						o := live[j]
						live = append(live[:j], live[j+1:]...)
						batch = append(batch, event{kind: evDisconnect, clientID: o.id, conn: o.c})
						continue
					}
					id := ids[rng.IntN(len(ids))]
					c := tr.NewConn(principals[min(rng.IntN(len(principals)+2), len(principals)-1)], "192.0.2.1", clk.now())
					batch = append(batch, event{kind: evConnect, clientID: id, conn: c, other: latest[id]})
					latest[id] = &c
					live = append(live, open{id, c})
				}
				conns := slices.Clone(tr.storeConns(batch)) // the worker's scratch is its own
				want, at := ref.writes(batch, conns, now)
				want = withReadLive(deepWrites(want))
				require.NoError(t, tr.handle(ctx, batch))
				require.Equal(t, want, cs.ws, "seed %d deny %v round %d: %s", seed, deny, round, fmt.Sprint(batch))
				for i, ev := range batch {
					if ev.kind == evConnect && at[i] >= 0 && want[at[i]].Read {
						ref.noteQuiet(ev, &cs.states[at[i]], tr.view(now), now)
					}
				}
				checkMemos(t, tr)
			}
		}
	}
}
