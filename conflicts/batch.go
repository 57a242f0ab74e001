package conflicts

import (
	"context"
	"fmt"
	"math/bits"
	"slices"
	"strconv"
	"strings"

	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// handle applies the rules to a batch of events, in order, in one round
// trip. Each connect records its connection (live, and its principal's use)
// and reads the client ID's state right after, per key (a script under
// deny, plain commands in order under flag; only its live connections if
// the client ID is known quiet), so that of two brokers recording one
// client ID at the same moment the second always sees the first; each
// disconnect
// removes its live entry and records its end, if still its own. Redis
// applies a batch's writes to each key in batch order, so each connect's
// read shows the events of the batch before it.
func (t *Tracker) handle(ctx context.Context, batch []event) error {
	now := t.now().UnixMilli()
	if t.lostDue.Swap(false) {
		t.forgetMarks(now)
	}
	t.clockBack(now)
	conns := t.bareConns(batch)
	ws, at := t.writes(batch, conns, now)
	defer t.releaseScratch(conns, ws, at)
	t.nameConns(batch, conns, t.sc.named)
	t.flushRetry(ctx)
	states, err := t.store.WriteConns(ctx, ws, t.opts.Window)
	if err != nil {
		t.keepForRetry(batch, ws)
		return err
	}
	alive := t.view(now)
	var found, dups []*store.Finding
	var takeovers []store.Takeover // each of dups' client ID and connection
	for i, ev := range batch {
		switch ev.kind {
		case evConnect:
			if at[i] < 0 && ev.other == nil {
				continue // folded away, and took nothing over: nothing to evaluate (nor named)
			}
			// A quiet client ID is not read: only its live connections
			// (ReadLive), for a takeover by the principal's own device on
			// another broker; its past users are not (another principal's
			// connect since read this one's).
			var st store.State
			if at[i] >= 0 && at[i] < len(states) {
				switch w := &ws[at[i]]; {
				case w.Read:
					st = states[at[i]]
					t.noteQuiet(ev, &st, alive, now)
				case w.ReadLive:
					st.Live = states[at[i]].Live
				}
			}
			var other *store.Conn
			if ev.other != nil {
				o := t.StoreConn(*ev.other)
				other = &o
			}
			cross, dup := evaluate(ev.clientID, conns[i], other, st.Live, st.Seen, alive, now, t.opts.Window)
			ev.long.show(cross)
			ev.long.show(dup)
			if cross != nil {
				found = append(found, cross)
			}
			if dup != nil {
				dups = append(dups, dup)
				takeovers = append(takeovers, store.Takeover{Tracked: dup.ClientID, ConnID: conns[i].ID})
			}
		case evRefused:
			f := newFinding(store.KindCrossPrincipal, ev.clientID, []store.Conn{conns[i], *ev.holder}, now)
			ev.long.show(f)
			f.Action = "refused"
			found = append(found, f)
		}
	}
	t.checkEnds(ctx, t.endItems(batch, conns, states, now))
	dups, takeovers = t.heldLive(ctx, dups, takeovers, now)
	if len(dups) > 0 {
		// One round trip for the batch's duplicates (a fleet's takeovers
		// at once), not one each. A count that fails loses those counts
		// alone (CountTakeovers gives -1 for each): the batch's
		// connections are written, and its other findings are still
		// reported. (Before, the batch ended here: a takeover by another
		// principal in it went unreported, and the whole batch was logged
		// as not recorded and written again.) Each takeover left uncounted
		// is one less towards takeover_limit in its client ID's
		// takeover_window; the next are counted as before.
		ns, err := t.store.CountTakeovers(ctx, takeovers, t.opts.TakeoverWindow, t.opts.TakeoverLimit)
		if err != nil {
			lost := len(takeovers)
			if len(ns) == len(takeovers) {
				lost = 0
				for _, n := range ns {
					if n < 0 {
						lost++
					}
				}
			}
			t.log(LevelWarning, fmt.Sprintf("mosquitto-guard: client ID tracking: %d takeovers not counted: %v", lost, err))
		}
		for i, d := range dups {
			if i < len(ns) && ns[i] >= int64(t.opts.TakeoverLimit) {
				found = append(found, d)
			}
		}
	}
	for _, f := range found {
		t.report(ctx, f)
	}
	return nil
}

// heldLive keeps of dups (and of ts, beside them) those whose displaced
// connection is this broker's, or on a broker whose lease Redis does not
// hold as ended before now: one more round trip, for a batch with a
// duplicate on another broker. A lease Redis does not hold counts as
// running: after a flush every broker's lease is gone until its next
// renewal, and their connects meanwhile are live ones (unseenAll); a
// reap removes the lease only after the live entries. The lease view is the last renewal's, up to
// broker_lease/3 old: a broker that stopped since ended its lease at its
// stop, and its connections that its stop did not reach stay listed until
// some renewal reaps them. Each device of its fleet reconnecting to
// another broker meanwhile took over its own connection on a broker the
// view still held live, and that counted towards takeover_limit (atk91:
// 10 159 of 19 000 devices, a stop cut short by Redis hung for 2.5 s).
// When the leases cannot be read, every duplicate counts, as before.
func (t *Tracker) heldLive(ctx context.Context, dups []*store.Finding, ts []store.Takeover, now int64) ([]*store.Finding, []store.Takeover) {
	var remote []string
	seen := map[string]bool{}
	for i, d := range dups {
		if in := displaced(d, ts[i]).Instance; in != t.instance && !seen[in] {
			seen[in] = true
			remote = append(remote, in)
		}
	}
	if len(remote) == 0 {
		return dups, ts
	}
	ends, err := t.store.LeaseEnds(ctx, remote)
	if err != nil {
		return dups, ts
	}
	n := 0
	for i, d := range dups {
		if in := displaced(d, ts[i]).Instance; in != t.instance {
			if end, ok := ends[in]; ok && end < now {
				continue // its broker stopped, or its lease ran out
			}
		}
		dups[n], ts[n] = d, ts[i]
		n++
	}
	return dups[:n], ts[:n]
}

// displaced is the connection a duplicate-connection finding d says was
// taken over: the one that is not t's (the new connection's). Its
// connections are newest first, and a remote broker's clock ahead of
// this one's puts the displaced one first.
func displaced(d *store.Finding, t store.Takeover) store.Conn {
	for _, c := range d.Connections {
		if c.ID != t.ConnID {
			return c
		}
	}
	return store.Conn{}
}

// scratch is a batch's working arrays and maps, kept by the worker for
// the next batch (Tracker.sc). Nothing outside a batch's handling holds
// them: WriteConns returns before handle does, kept retries copy what they
// keep (keepForRetry), findings copy their connections; the connections'
// ID strings are the batch's own, never reused.
type scratch struct {
	conns []store.Conn
	text  []byte // the batch's IDs and formatted IPs, before their one string (nameConns)
	ipEnd []int  // where each connection's text ends in it
	named []bool // the connections a write or a finding may show: named (nameConns)
	ws    []store.ConnWrite
	at    []int
	ids   []memoKey // each connect's and disconnect's idKey (pairBatch)
	mate  []int32   // a connect's disconnect in the batch, and back; -1 none (pairBatch)
	mark  []uint8   // a connect's marks: markAlone, markFolded, markListed
	bySeq batchTable
	byID  batchTable
	ends  []endCheck // the disconnects whose write tells whether their end is checked (checkEnds)
}

// trimScratch gives back a burst's arrays and maps: those of more than
// trimAbove entries. Worker goroutine only, between batches.
func (t *Tracker) trimScratch() {
	if cap(t.sc.conns) > trimAbove || cap(t.sc.ends) > trimAbove || cap(t.sc.ipEnd) > trimAbove || cap(t.sc.named) > trimAbove || cap(t.sc.ws) > trimAbove || cap(t.sc.ids) > trimAbove || t.sc.bySeq.big() || t.sc.byID.big() {
		t.sc = scratch{}
	}
}

// releaseScratch keeps a handled batch's arrays for the next one, with no
// string or pointer of the batch left in them.
func (t *Tracker) releaseScratch(conns []store.Conn, ws []store.ConnWrite, at []int) {
	clear(conns)
	clear(ws)
	t.sc.conns, t.sc.ws, t.sc.at = conns[:0], ws[:0], at[:0]
}

// storeConns is the batch's connections as Redis records them, every one
// named (bareConns, then nameConns).
func (t *Tracker) storeConns(batch []event) []store.Conn {
	conns := t.bareConns(batch)
	t.nameConns(batch, conns, nil)
	return conns
}

// bareConns is the batch's connections as Redis records them, but for the
// strings the worker formats: their IDs, and the IP texts of those
// described by their 16 bytes (Conn.Addr: a DISCONNECT's). writes decides
// which of them a write or a finding may show; nameConns formats those
// alone. A device reconnecting in a loop, its pair folded away (writes),
// needs neither: formatting them was a third of the worker's time per
// reconnect (issue 12, BenchmarkWorkerReconnects).
func (t *Tracker) bareConns(batch []event) []store.Conn {
	conns := slices.Grow(t.sc.conns[:0], len(batch))[:len(batch)]
	for i := range batch {
		c := &batch[i].conn
		ip := c.IP
		if c.ipFormatted() {
			ip = ""
		}
		conns[i] = t.storeConn(*c, "", ip)
	}
	return conns
}

// nameConns gives the batch's connections named[i] (all, with nil named)
// their IDs and formatted IP texts. These are cut from one string built
// for the batch, of their exact length (written first in the worker's
// scratch buffer): one allocation for all, none when none is named.
func (t *Tracker) nameConns(batch []event, conns []store.Conn, named []bool) {
	b := t.sc.text[:0]
	ipEnd := slices.Grow(t.sc.ipEnd[:0], len(batch))[:len(batch)]
	for i := range batch {
		if named != nil && !named[i] {
			ipEnd[i] = len(b)
			continue
		}
		c := &batch[i].conn
		b = strconv.AppendUint(append(append(b, t.instance...), '-'), c.Seq, 10)
		if c.ipFormatted() {
			b = c.appendIP(b)
		}
		ipEnd[i] = len(b)
	}
	t.sc.text, t.sc.ipEnd = b[:0], ipEnd[:0]
	if len(b) == 0 {
		return
	}
	s := string(b)
	start := 0
	for i := range batch {
		if named != nil && !named[i] {
			continue
		}
		c := &batch[i].conn
		n := start + len(t.instance) + 1 + digits(c.Seq)
		conns[i].ID = s[start:n]
		if c.ipFormatted() {
			conns[i].IP = s[n:ipEnd[i]]
		}
		start = ipEnd[i]
	}
}

// digits is the length of n in decimal.
func digits(n uint64) int {
	d := 1
	for ; n >= 10; n /= 10 {
		d++
	}
	return d
}

// writes turns a batch into its writes, and the index of each connect's
// write in them (-1: folded away); conns are the batch's connections
// (bareConns), which the writes point to. It marks in the scratch's named
// those a write points to or a finding may show (nameConns names them
// before the writes go): not the connections of a pair folded away, unless
// its connect took one over here (a duplicate finding shows it).
//
// A connection that starts and ends within this batch, of a client ID read
// quiet less than quietFor ago (its principal alone on it, here) and whose
// principal's use is recorded fresh, leaves nothing for Redis to know: the
// pair is folded away (a device reconnecting in a loop costs no Redis
// command), and only its local takeover, if any, is evaluated. folded: the
// connections folded, and whether the client ID was listed live for this
// broker before (then the pair's end must unlist it).
//
// Under clientid_conflict flag, a connection that starts and ends within
// this batch and still needs its read or its principal's use recorded (a
// new or not quiet client ID) is written once, as ended (store.ConnWrite
// Ended): the live hash read as it is, the principal's use recorded with
// the connection's final record (DisconnectedMs set) and read back; no live
// field, no brokerconns member, no compare-and-set at its end (5 commands
// instead of 12 for a new client ID). See foldEnded for when, and why it is
// the same as writing the pair.
func (t *Tracker) writes(batch []event, conns []store.Conn, now int64) ([]store.ConnWrite, []int) {
	ws := slices.Grow(t.sc.ws[:0], len(batch))
	at := slices.Grow(t.sc.at[:0], len(batch))[:len(batch)]
	named := slices.Grow(t.sc.named[:0], len(batch))[:len(batch)] // what nameConns names
	clear(named)
	t.sc.named = named
	t.sc.ends = t.sc.ends[:0]
	ids, mate, mark := t.pairBatch(batch)
	for i, ev := range batch {
		switch ev.kind {
		case evConnect:
			conn := &conns[i]
			seq := ev.conn.Seq
			id, who := ids[i], t.whoTag(ev.conn.Principal)
			e, was, found := t.findMemo(id)
			// Sole under clientid_conflict flag: this worker alone writes this
			// instance's live field, in event order (see store.ConnWrite.Sole).
			w := store.ConnWrite{ClientID: ev.clientID, Tracked: true, Instance: t.instance, Live: conn, Read: !(e.who == who && t.fresh(e.quietAt, now, quietFor)), Sole: !t.opts.Deny}
			// A skipped read still reads the live hash: its own principal's
			// device live on another broker is a takeover (atk47).
			w.ReadLive = !w.Read
			if !t.seenFresh(id, &e, who, seq, now) {
				w.Seen = conn
			}
			listed := e.cur != 0
			t.list(&e, seq)
			e.curSkipped = !w.Read
			t.storeMemo(id, e, was, found)
			// Not under clientid_conflict deny: there the broker thread
			// wrote the live entry already (the claim), and its end must clear it.
			if end := mate[i]; !t.opts.Deny && end >= 0 {
				switch {
				case !w.Read && w.Seen == nil:
					mark[i] |= markFolded
					if listed {
						mark[i] |= markListed
					}
					at[i] = -1
					named[i] = ev.other != nil // a local takeover is still evaluated
					continue
				case mark[i]&markAlone != 0 && !listed: // foldEnded's conditions 2 and 3
					t.foldEnded(&w, &conns[end], now)
					mark[i] |= markFolded // not listed: its end has nothing to unlist
					at[i] = len(ws)
					named[i], named[end] = true, true // the write records its end's record
					ws = append(ws, w)
					continue
				}
			}
			at[i] = len(ws)
			named[i] = true
			ws = append(ws, w)
		case evDisconnect:
			left := &conns[i]
			left.DisconnectedMs = now
			seq := ev.conn.Seq
			o, owed := t.unchecked[seq]
			if owed {
				delete(t.unchecked, seq)
			}
			id := ids[i]
			e, was, ok := t.findMemo(id)
			readAt := t.readAt(e, ev.conn)
			unlist := e.cur == seq // not already replaced by a takeover
			if unlist && seq != 0 {
				e.cur = 0
				t.listed--
			}
			// Asked of a folded connection too: the answer is not used then,
			// but the mark forgets the number of a connection that ended.
			ownsSeen := t.endSeen(id, &e, t.whoTag(ev.conn.Principal), seq)
			if ok {
				t.storeMemo(id, e, was, true)
			}
			if c := mate[i]; c >= 0 && mark[c]&markFolded != 0 {
				if unlist && mark[c]&markListed != 0 {
					ws = append(ws, store.ConnWrite{ClientID: ev.clientID, Tracked: true, Instance: t.instance, Unlist: true})
				}
				continue
			}
			w := store.ConnWrite{ClientID: ev.clientID, Tracked: true, Instance: t.instance, Gone: left}
			if unlist {
				w.Unlist = true
				// Under clientid_conflict flag the field holds left, or an
				// older connection of this instance (left's write not
				// taken), which has ended too, or nothing (reaped): a plain
				// HDEL. Otherwise a newer connection was recorded there or
				// folded away (then the field may still hold left): the
				// compare-and-delete, as under deny.
				w.Sole = !t.opts.Deny
			}
			// Its end is its principal's latest use: written when it
			// recorded that use, and when it lasted seenRefresh or more
			// without recording it (it found the use freshly recorded by
			// the connection before it): else that record, of an end
			// before it began, would stand for as long as it lasted. A
			// shorter one leaves the record at most 2 * seenRefresh older
			// than its end.
			if ownsSeen || now-ev.conn.ConnectedMs >= seenRefresh.Milliseconds() {
				w.Left = left
			}
			// Whether its end is checked (checkEnds): its write's replies
			// tell, when the field was its own or its check is owed.
			if unlist || owed {
				w.Check = true
				if owed {
					// Compare-and-delete: its removal then tells its own
					// entry (span: a connect's write that was taken).
					w.Sole = false
				}
				t.sc.ends = append(t.sc.ends, endCheck{ev: i, w: len(ws), o: o, owed: owed, long: ev.long, readAt: readAt})
			}
			named[i] = true
			ws = append(ws, w)
		default: // refused: its finding shows it
			named[i] = true
		}
	}
	return ws, at
}

// foldEnded makes w, the write of a connect whose disconnect, left (its
// connection as that disconnect records it), is in this batch too, the one
// write of the pair (store.ConnWrite Ended): the client ID's live hash read
// without recording this connection there, its principal's use (if w
// records it) recorded with its final record. writes calls it only when
// the following hold, each needed for the pair's writes to be the same:
//
//  1. clientid_conflict flag, not deny: under deny the broker thread's
//     claim wrote the live field already, and only the disconnect's own
//     write clears it.
//  2. This instance holds no live field of the client ID before the connect
//     (its memo lists none: idMemo.cur): otherwise an older connection of
//     this instance may be recorded and listed there, and only the pair's
//     writes (the HSET over it, then the HDEL and SREM) remove it.
//  3. The disconnect that follows in the batch is this connection's own,
//     with no other connect of the client ID on this instance between the
//     two (a takeover, end.alone): otherwise the other connection's writes
//     and reads come between, and the field and the seen record must be as
//     the pair leaves them at that point; that is today's path.
//  4. The seen record. Written as a pair, the connect's HSET records the
//     connection unconditionally, and the disconnect's compare-and-set
//     sets DisconnectedMs only if the principal's field still holds this
//     connection (its seen mark still names it: w.Seen is set, and no other
//     connect of the pair comes between, by 3). Folded, one HSET records
//     the final record: the outcome of the pair when nothing of another
//     broker runs between its two writes, an order Redis may take for the
//     pair anyway. Another broker recording a newer use of the same
//     principal between the two keeps its record with the pair (the CAS
//     does nothing), and with the fold when its HSET runs after ours; when
//     it runs before ours, ours overwrites it, as the pair's connect HSET
//     does when it lands after theirs: an outcome the pair has too, in
//     that order. The record is the bytes the CAS would have stored (left,
//     DisconnectedMs now, the batch's now as the disconnect's). Were the seen mark
//     reset between the two (seenMemoMax), the pair would leave the
//     record without its end; the fold records it: the truer record.
//
// Evaluation is unchanged: the read shows the live hash without this
// instance's field, and the seen hash with this connection's record ended;
// evaluate skips live entries of this instance (c.Instance != me.Instance;
// the local takeover comes from the event) and seen entries of this
// connection (c.ID != me.ID), and noteQuiet skips both likewise, so the
// State it gets for this connect counts the same connections. Another
// broker will not see this connection live: as a pair it was live in Redis
// only between the HSET and the HDEL of one pipeline, after the connection
// had ended already, so a read there saw a connection that was over; it
// sees the principal's use in the seen hash, recorded before this write's
// read of it (and within the window: DisconnectedMs is now), so of two
// brokers' short connections of two principals the one read last still
// sees the other. A batch Redis does not take leaves nothing live to clear:
// no write of the pair is kept for a retry.
func (t *Tracker) foldEnded(w *store.ConnWrite, left *store.Conn, now int64) {
	left.DisconnectedMs = now // as the disconnect sets it
	if w.Seen != nil {
		w.Seen = left
	}
	w.Ended = true
	w.ReadLive = false // nothing of it is live to be displaced
}

// A connect's marks (scratch.mark): markAlone, its disconnect follows in
// the batch with no other connect of its client ID between (foldEnded's
// condition 3); markFolded, writes folded the pair (away, or into one
// write); markListed, folded away while the client ID was listed live for
// this broker (its end must unlist it).
const (
	markAlone uint8 = 1 << iota
	markFolded
	markListed
)

// pairBatch returns, for each event of batch, its client ID's idKey (a
// connect's and a disconnect's), and, under clientid_conflict flag, the
// index of the other end of each connection that starts and ends in it
// (mate: the connect's disconnect, the disconnect's connect; -1: none) with
// its connect's markAlone; marks are otherwise clear. The arrays are the
// worker's scratch. Two tables over scratch arrays find the pairs: the
// batch's connects by number, and by client ID its latest connect. They
// replace three Go maps (one keyed by the client ID's bytes, hashed again
// after idKey) and their clearing per batch: about 0.9 k instructions per
// reconnect, a fifth of the worker's (issue 12).
//
// The client ID table keys by idKey's first 64 bits: two client IDs that
// share them (2^-64 a pair, a seeded hash) look like one client ID there,
// which can only take markAlone from a connection that has it (a connect of
// the other between its two ends), never give it: the pair is then written
// as a pair, which is always right.
//
// The pairs are those the three maps found, in any order the queue holds:
// a connection's disconnect queued before its connect (plugin's
// confirmDue tells the tracker of a deferred connection after releasing
// g.mu, so the connection's end may be queued first) pairs with it, never
// alone: the connect is folded away (nothing written for a connection that
// ended) if its client ID is quiet and its use fresh, else written as any
// connect, after its disconnect's writes; of a connection's disconnects
// queued twice, the last is its mate, and not alone (TestAtk21...). Two
// connects of one number would pair otherwise than in the maps: NewConn
// makes none.
func (t *Tracker) pairBatch(batch []event) (ids []memoKey, mate []int32, mark []uint8) {
	n := len(batch)
	ids = slices.Grow(t.sc.ids[:0], n)[:n]
	mate = slices.Grow(t.sc.mate[:0], n)[:n]
	mark = slices.Grow(t.sc.mark[:0], n)[:n]
	t.sc.ids, t.sc.mate, t.sc.mark = ids, mate, mark
	clear(mark)
	for i := range mate {
		mate[i] = -1
	}
	pair := !t.opts.Deny
	if pair {
		t.sc.bySeq.reset(n)
		t.sc.byID.reset(n)
	}
	for i := range batch {
		ev := &batch[i]
		if ev.kind != evConnect && ev.kind != evDisconnect {
			continue
		}
		ids[i] = t.idKey(ev.clientID)
		if !pair {
			continue
		}
		s := t.sc.bySeq.slot(ev.conn.Seq)
		live := s.gen == t.sc.bySeq.gen
		if ev.kind == evConnect {
			if live && s.val < 0 { // its disconnect came first: paired, never alone
				d := ^s.val
				mate[i], mate[d] = d, int32(i)
			}
			*s = batchSlot{key: ev.conn.Seq, val: int32(i), gen: t.sc.bySeq.gen}
			t.sc.byID.put(ids[i].a, int32(i))
			continue
		}
		if !live || s.val < 0 {
			// Its connect is in an earlier batch, or later in this one
			// (^i: the connect pairs with it).
			*s = batchSlot{key: ev.conn.Seq, val: ^int32(i), gen: t.sc.bySeq.gen}
			continue
		}
		c := s.val
		mate[c], mate[i] = int32(i), c // a second disconnect of c: the last one
		mark[c] &^= markAlone
		if o := t.sc.byID.slot(ids[i].a); o.gen == t.sc.byID.gen && o.val == c { // no connect of its client ID since
			mark[c] |= markAlone
			o.val = -1 // a second disconnect of c is not alone
		}
	}
	return ids, mate, mark
}

// batchTable maps uint64 keys to a batch's event indexes: open addressing
// over a slot array that stays from batch to batch. A slot counts only if
// its gen is the table's, so emptying it for the next batch (reset) is one
// increment, not a clear.
type batchTable struct {
	slots []batchSlot
	gen   uint32
	shift uint8 // 64 - log2(len(slots))
}

type batchSlot struct {
	key uint64
	val int32
	gen uint32
}

// reset empties the table for at most n keys: at least 2n slots, so a
// probe always meets an empty one.
func (b *batchTable) reset(n int) {
	if len(b.slots) < 2*n || len(b.slots) < 16 {
		size := 16
		for size < 2*n {
			size *= 2
		}
		b.slots = make([]batchSlot, size)
		b.shift = uint8(64 - bits.TrailingZeros(uint(size)))
		b.gen = 0
	}
	b.gen++
	if b.gen == 0 { // wrapped: old slots would count again
		clear(b.slots)
		b.gen = 1
	}
}

// big reports whether a burst grew the table beyond trimAbove keys.
func (b *batchTable) big() bool { return len(b.slots) > 2*trimAbove }

// slot is key's slot, or the empty one where it would go.
func (b *batchTable) slot(key uint64) *batchSlot {
	mask := uint64(len(b.slots) - 1)
	for i := (key * 0x9e3779b97f4a7c15) >> b.shift; ; i = (i + 1) & mask {
		s := &b.slots[i]
		if s.gen != b.gen || s.key == key {
			return s
		}
	}
}

func (b *batchTable) get(key uint64) (int32, bool) {
	s := b.slot(key)
	return s.val, s.gen == b.gen
}

func (b *batchTable) put(key uint64, v int32) {
	*b.slot(key) = batchSlot{key: key, val: v, gen: b.gen}
}

// keepForRetry keeps the disconnect writes of a batch Redis did not take:
// a connection that ended must not stay "live" in guard:conn while this
// broker's lease runs (clientid_conflict deny would refuse its device on
// every other broker). They are final-state and compare-and-delete (not
// Sole any more), so writing them late is safe. At most queueSize are kept; the oldest go
// first.
func (t *Tracker) keepForRetry(batch []event, ws []store.ConnWrite) {
	ends := t.sc.ends
	for i, w := range ws {
		// The end check this write carries (writes lists them in ws's order).
		var ec endCheck
		for len(ends) > 0 && ends[0].w < i {
			ends = ends[1:]
		}
		if len(ends) > 0 && ends[0].w == i {
			ec = ends[0]
			ec.clientID = strings.Clone(batch[ec.ev].clientID)
		}
		if w.Gone != nil {
			// Copies of their own: w points into its batch's array, and
			// its ID (and its IP, when formatted from Conn.Addr) into the
			// batch's string, which a kept write must not hold on to.
			gone := *w.Gone
			gone.ID, gone.IP = strings.Clone(gone.ID), strings.Clone(gone.IP)
			if w.Left == w.Gone {
				w.Left = &gone
			} else if w.Left != nil {
				left := *w.Left
				left.ID, left.IP = strings.Clone(left.ID), strings.Clone(left.IP)
				w.Left = &left
			}
			w.Gone = &gone
			// Compare-and-delete when retried: a newer connection of the
			// client ID may be recorded by then.
			w.Sole = false
			t.retry = append(t.retry, w)
			t.retryEnds = append(t.retryEnds, ec)
		}
	}
	if over := len(t.retry) - queueSize; over > 0 {
		t.retry = append(t.retry[:0], t.retry[over:]...)
		t.retryEnds = append(t.retryEnds[:0], t.retryEnds[over:]...)
		t.dropped.Add(int64(over))
	}
}

// flushRetry writes the kept disconnects, before a batch and at each lease
// renewal, until Redis takes them, and checks the ends they carry
// (checkEnds), with the end checks whose read failed before.
//
// A kept end's write may have been taken by Redis already (its answer
// came too late), so what its retry reads is partly its own doing: its
// removal finds nothing (Missing), and its principal's use may be its own
// record, ended by that first write. So its use is not taken for one that
// other connects saw (Seen is ignored): an end whose entry is found
// missing, or whose check was owed, is checked from its connect (atk38:
// before, a failed end's write carried no check, and the check it owed,
// or the loss its removal would have found, went unchecked).
func (t *Tracker) flushRetry(ctx context.Context) {
	if len(t.retry) == 0 {
		if len(t.pendingEnds) > 0 {
			t.checkEnds(ctx, nil)
		}
		return
	}
	states, err := t.store.WriteConns(ctx, t.retry, t.opts.Window)
	if err != nil {
		return
	}
	now := t.now().UnixMilli()
	var items []endItem
	for i, w := range t.retry {
		ec := t.retryEnds[i]
		if !w.Check || i >= len(states) || ec.clientID == "" {
			continue
		}
		p := states[i].Prior
		p.Seen, p.EndedMs = false, 0
		if it, ok := t.endItem(ec, p, ec.clientID, *w.Gone, now); ok {
			items = append(items, it)
		}
	}
	clear(t.retry)
	clear(t.retryEnds)
	t.retry, t.retryEnds = t.retry[:0], t.retryEnds[:0]
	t.checkEnds(ctx, items)
}

// endCheck is a disconnect of a batch whose end may need checking
// (checkEnds): its event's index, its write's, the check its connection
// was owed (Tracker.unchecked), if any, and its client ID's long form; and,
// once kept for a retry (keepForRetry), its client ID, a copy.
type endCheck struct {
	ev, w    int
	o        owed
	owed     bool
	long     *longID
	clientID string
	readAt   int64 // span's
}

// endItem is an ended connection's check, decided (span) and not yet made:
// the uses of other principals made from from to upTo.
type endItem struct {
	clientID   string
	long       *longID
	conn       store.Conn
	from, upTo int64
	at         int64 // when it was decided (unix ms): the window is judged from then
}

// endsPendingMax bounds Tracker.pendingEnds: 4 096 end checks (about
// 1 MB) whose read failed, made again before the next batch; past it, the
// oldest are dropped, logged.
const endsPendingMax = 4096

// endItems is the checks of a batch's disconnects that no connect may
// have seen (span), from their writes' states: those whose live entry Redis
// no longer held at their end (a flush, or a Redis restarted empty, before
// their broker's relist; a reap while their broker paused), unless their
// principal's use of them was there and began less than conflict_window
// ago (and their connect read what Redis held: span), and
// those whose own check was owed (a connect or relist write that failed,
// never checked since). Another principal's use made since such a
// connection began and up to its end is a conflict that no connect
// evaluated: before, a holder that left before its broker noticed a flush
// was checked by nobody, and another principal that took its client ID
// meanwhile was never flagged (atk37). The writes' own replies tell which
// (store.ConnWrite.Check: no command more).
func (t *Tracker) endItems(batch []event, conns []store.Conn, states []store.State, now int64) []endItem {
	var items []endItem
	for _, c := range t.sc.ends {
		if c.w >= len(states) {
			continue
		}
		if it, ok := t.endItem(c, states[c.w].Prior, batch[c.ev].clientID, conns[c.ev], now); ok {
			items = append(items, it)
		}
	}
	return items
}

// endItem is the check of ended connection conn (endItems), if it needs one.
func (t *Tracker) endItem(c endCheck, p store.Prior, clientID string, conn store.Conn, now int64) (endItem, bool) {
	if !p.Missing && !c.owed {
		return endItem{}, false // live in Redis all along: every connect since saw it
	}
	from, upTo, skip := t.span(p, conn.ConnectedMs, c.readAt, c.o, c.owed, now)
	if skip {
		return endItem{}, false
	}
	return endItem{clientID: clientID, long: c.long, conn: conn, from: from, upTo: min(upTo, conn.DisconnectedMs), at: now}, true
}

// checkEnds makes the end checks items, and those whose read failed
// before (Tracker.pendingEnds): the client IDs' live and seen hashes read
// in one round trip (store.ConnWrite.Peek), within the part's bound, and
// evaluated as a relist would evaluate them. A read that fails keeps them
// for the next batch or renewal (at most endsPendingMax, the oldest dropped
// past it, logged; their strings copied once: a batch's are its own).
func (t *Tracker) checkEnds(ctx context.Context, items []endItem) {
	kept := len(t.pendingEnds) // their strings are copies already
	if kept > 0 {
		items = append(t.pendingEnds, items...)
		t.pendingEnds = nil
	}
	if len(items) == 0 {
		return
	}
	peek := make([]store.ConnWrite, len(items))
	for k, it := range items {
		peek[k] = store.ConnWrite{ClientID: it.clientID, Tracked: true, Instance: t.instance, Peek: true}
	}
	states, err := t.store.WriteConns(ctx, peek, t.opts.Window)
	if err != nil {
		if over := len(items) - endsPendingMax; over > 0 {
			items = items[over:]
			kept = max(kept-over, 0)
			t.log(LevelWarning, fmt.Sprintf("mosquitto-guard: client ID tracking: %d ended connections that redis had lost not checked (more than %d waiting)", over, endsPendingMax))
		}
		for k := kept; k < len(items); k++ {
			it := &items[k]
			it.clientID = strings.Clone(it.clientID)
			it.conn.ID, it.conn.IP = strings.Clone(it.conn.ID), strings.Clone(it.conn.IP)
		}
		t.pendingEnds = items
		return
	}
	alive := t.view(t.now().UnixMilli())
	for k, it := range items {
		if k >= len(states) {
			break
		}
		// Judged as at its decision: one kept while Redis stayed down
		// still flags a use that was within the window then (atk39).
		live := between(states[k].Live, it.from, it.upTo)
		seen := between(states[k].Seen, it.from, it.upTo)
		if cross, _ := evaluate(it.clientID, it.conn, nil, live, seen, alive, it.at, t.opts.Window); cross != nil {
			it.long.show(cross)
			t.report(ctx, cross)
		}
	}
}
