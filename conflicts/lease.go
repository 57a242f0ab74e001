package conflicts

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"strconv"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// renewBound bounds a renewal, the reaps it runs included.
const renewBound = 5 * time.Second

// renew extends this broker's lease, learns which brokers are alive, and
// ends the live connections of brokers whose lease ran out (store.Reap).
// The disconnects kept for retry are written first. A lease found lapsed
// (run out or gone, after the first renewal that succeeded) asks for the
// connections this broker holds to be recorded again (Deps.Relist): a
// broker reaped by another while it was paused past its lease came back
// with its clients and no live entry of them (clientid_conflict deny then
// let another principal take their client IDs; atk28), as did every
// broker after Redis was flushed or restarted empty (atk29).
func (t *Tracker) renew() { t.renewLease(false) }

// renewLease is renew; early: asked by RedisLost between two ticks. An
// early renewal may set unseenAll (lapsed, failed) but never clears it:
// the brokers it does not name may not have renewed since the loss yet,
// and only a tick broker_lease/3 after the renewal that set it leaves them
// that time. It reports whether it set it: Run then resets its ticker, so
// that the next tick comes broker_lease/3 later. Only then: early renewals
// that set nothing (a replica session flapping every second) leave the
// ticks regular, and a tick still ends the count. Before, an early renewal
// right after a lapsed tick cleared it at once, before the other broker
// had renewed since the flush: unnamed in the view, its client held
// longer than broker_lease lost its client ID under deny (atk47's
// TestAtk47FlushThenShortPauseDenyLetsIn on e27b97f, which brought the
// early renewal: bob let in 6 of 16 tries).
func (t *Tracker) renewLease(early bool) (suspect bool) {
	ctx, cancel := context.WithTimeout(context.Background(), renewBound)
	defer cancel()
	t.flushRetry(ctx)
	l, err := t.store.RenewLease(ctx, t.instance, t.opts.Lease)
	if err != nil {
		// Redis down: the plugin's health check reports it; live brokers
		// are kept as they were, and the others count whatever the age
		// of their entries (unseenAll): one may have started since, and
		// one seen dead may be back (atk45: named dead, its client's
		// entry was ignored for as long as the renewals failed).
		t.unseenAll.Store(true)
		view := *t.live.Load()
		for _, ok := range view {
			if !ok {
				alive := maps.Clone(view)
				maps.DeleteFunc(alive, func(_ string, ok bool) bool { return !ok })
				t.live.Store(&alive)
				break
			}
		}
		return true
	}
	view := make(map[string]bool, len(l.Live)+len(l.Dead))
	for _, d := range l.Dead {
		view[d] = false
	}
	maps.Copy(view, l.Live)
	// unseenAll is set before the view and cleared after it: a claim on
	// the broker thread in between counts more, never less. A first
	// renewal is lapsed too (its lease was never there): then Redis may
	// also have restarted empty just before this broker started, and the
	// others not renewed since (atk45).
	if l.Lapsed {
		t.unseenAll.Store(true)
	}
	t.aliveBefore = *t.live.Swap(&view)
	if !l.Lapsed && !early {
		t.unseenAll.Store(false)
	}
	if l.Lapsed && t.renewed {
		// Redis may have lost what the marks say it holds (a flush, a
		// restart; or a reap of this broker's connections while it paused).
		t.forgetMarks(t.now().UnixMilli())
	}
	// The clock is read only when needed: a test sets the plugin's clock
	// after the worker's first renewal.
	switch {
	case t.relist == nil:
	case l.Lapsed && t.renewed:
		// The lease had lapsed: other brokers may have reaped this one's
		// live entries, or Redis lost them: the caller hands its
		// connections to Relisted. A reap under way stops at this
		// renewal, but a batch of it past its last look at the lease
		// still writes, within its renewal's renewBound, and may delete
		// what the relist wrote (atk31): once more after that.
		t.relist()
		t.relistAgainAt = t.now().UnixMilli() + (renewBound + time.Second).Milliseconds()
	case t.relistAgainAt != 0 && t.now().UnixMilli() >= t.relistAgainAt:
		t.relistAgainAt = 0
		t.relist()
	}
	t.renewed = true
	if len(l.Dead) == 0 {
		return l.Lapsed
	}
	// The dead brokers' reaps run beside the worker once they take longer
	// than reapInline: a restarted broker's first renewal reaps what its
	// stopped instance left (118 000 connections a stop cut short at its
	// 1.5 s left, 3.6 s: BenchmarkWorkerRestartStorm at 200 000), and
	// that is when its whole fleet reconnects. Run inline, it held the
	// worker for up to renewBound, the fleet's CONNECTs queueing behind
	// it: past the queue's 65 536 they were not tracked at all, and
	// under clientid_conflict deny another principal could take their
	// client IDs for as long as they stayed connected. The reaps write
	// only the dead brokers' entries and their principals' records, as
	// another broker's reap of them would at the same moment (Store.Reap
	// is safe on several brokers at once), and the view already counts
	// none of the dead brokers' entries. One run of them at a time: a
	// renewal that finds the last one still going leaves its dead to it,
	// or to the next renewal, which lists them again.
	if !t.reaping.CompareAndSwap(false, true) {
		return l.Lapsed
	}
	// They stop at this broker's stop, and Run does not wait for them:
	// they may take the renewal's whole bound (a read in flight at a hung
	// Redis ends at its deadline, not at a cancel), and the plugin's
	// cleanup waits 1.5 s for the worker, then skips this broker's own
	// reap (its lease and its live entries then kept broker_lease: a fleet
	// of brokers stopped at once). A reap still running then is another
	// broker's reap of a dead one, safe beside this broker's own.
	deadline, _ := ctx.Deadline()
	reapCtx, cancelReap := context.WithDeadline(context.Background(), deadline)
	stopAfter := func() bool { return false }
	if t.stopped != nil {
		stopAfter = context.AfterFunc(t.stopped, cancelReap)
	}
	done := make(chan struct{})
	t.reaps.Add(1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				t.log(LevelError, fmt.Sprintf("mosquitto-guard: internal error in the reap of a dead broker: %v", r))
			}
			stopAfter()
			cancelReap()
			t.reaping.Store(false)
			close(done)
			t.reaps.Done()
		}()
		t.reapDead(reapCtx, l.Dead)
	}()
	inline := time.NewTimer(reapInline)
	defer inline.Stop()
	select {
	case <-done:
	case <-inline.C:
	}
	return l.Lapsed
}

// reapInline is how long a renewal waits for its dead brokers' reaps
// before the worker goes back to its events, the reaps going on beside it
// (renewLease). The package's tests lengthen it to renewBound (TestMain),
// so that a test that renews sees the reap done on a busy machine too;
// TestDeadBrokersReapLeavesTheWorkerFree sets reapInlineDefault.
var reapInline = reapInlineDefault

const reapInlineDefault = 250 * time.Millisecond

// reapDead ends the live connections of the dead brokers, until ctx ends.
func (t *Tracker) reapDead(ctx context.Context, dead []string) {
	for _, d := range dead {
		// An error (ErrLeaseRuns: the broker is back) clears nothing to
		// report, nor does a reap that found nothing left: a broker's own
		// stop ends its lease before its reap, which may end every
		// connection before this one reads them.
		n, err := t.store.ReapCount(ctx, d, t.now().UnixMilli(), t.opts.Lease, t.opts.Window)
		if err == nil && n > 0 {
			t.log(LevelNotice, "mosquitto-guard: cleared the live connections of broker instance "+logval.Quote(d)+": its lease ran out ("+strconv.Itoa(n)+" connections)")
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// Close ends this broker's live connections in Redis (store.Reap: each
// one's end written to its principal's seen record, its live entry
// removed): clients still connected at shutdown get no DISCONNECT. Call it
// once Run has returned. ctx bounds it (the plugin's cleanup gives it what
// is left of its 1.5 s), and 2 s. Its lease is ended first: past the
// bound, the rest no longer count at any broker's next renewal, which
// ends them as a dead broker's (this one's next start included). Its own
// lease is not read: this broker knows it stops now.
func (t *Tracker) Close(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, _ = t.store.ReapCount(ctx, t.instance, t.now().UnixMilli(), 0, t.opts.Window)
}

// relistConns writes part, a run of Relisted connections, in one round
// trip: each as its connect writes it (store.ConnWrite Live, not Sole: the
// live script keeps a newer connection of this instance; Seen), and
// lists it in the memo when its client ID lists none (a connect the queue
// dropped: its disconnect then unlists it). Each whose principal's use of
// it Redis did not hold within conflict_window just before the write
// (store.Prior), or whose check is owed (Tracker.unchecked), is read back
// and evaluated against the client ID's connections made since it was,
// live or ended within conflict_window: another principal that took the
// client ID while no connect could see this one (after a flush, before
// the relist; a connect then found nothing) is flagged now (atk30), also
// if it has let go again (atk32). The past users are not evaluated again:
// the connection's connect did that, and a relist is no new use.
func (t *Tracker) relistConns(ctx context.Context, part []event) error {
	conns := t.storeConns(part)
	ws := make([]store.ConnWrite, len(part))
	readAt := make([]int64, len(part))
	for i, ev := range part {
		ws[i] = store.ConnWrite{ClientID: ev.clientID, Tracked: true, Instance: t.instance, Live: &conns[i], Seen: &conns[i], Read: true, Prior: true}
		id := t.idKey(ev.clientID)
		e, was, found := t.findMemo(id)
		readAt[i] = t.readAt(e, ev.conn)
		if e.cur == 0 {
			t.list(&e, ev.conn.Seq)
			t.storeMemo(id, e, was, found)
		}
	}
	states, err := t.store.WriteConns(ctx, ws, t.opts.Window)
	if err != nil {
		// Redis may have taken the writes and not answered in time: the
		// next relist finds these listed, and must check them all the
		// same (unchecked).
		for _, ev := range part {
			t.owe(ev.conn.Seq, false)
		}
		return err
	}
	// The relist read each client ID: a connection whose connect skipped
	// its read is checked from that earlier read once, here, and not at
	// every relist after (atk44: three relists, three reports).
	for i, ev := range part {
		if readAt[i] < conns[i].ConnectedMs {
			t.readDone(ev)
		}
	}
	// The brokers alive at this renewal or the one before: a relist comes
	// at the renewal that found this broker's lease lapsed, which may be
	// before the others' renewals after a flush, and a live entry of a
	// broker dead at both does not count (evaluate, counts).
	now := t.now().UnixMilli()
	alive := t.view(now)
	if len(t.aliveBefore) > 0 {
		alive.alive = maps.Clone(alive.alive)
		for in, ok := range t.aliveBefore {
			if ok {
				alive.alive[in] = true
			}
		}
	}
	for i, ev := range part {
		if i >= len(states) {
			break
		}
		o, owed := t.unchecked[ev.conn.Seq]
		if owed {
			delete(t.unchecked, ev.conn.Seq)
		}
		from, upTo, skip := t.span(states[i].Prior, conns[i].ConnectedMs, readAt[i], o, owed, now)
		if skip {
			continue
		}
		live := between(states[i].Live, from, upTo)
		seen := between(states[i].Seen, from, upTo)
		cross, _ := evaluate(ev.clientID, conns[i], nil, live, seen, alive, now, t.opts.Window)
		if cross != nil {
			ev.long.show(cross)
			t.report(ctx, cross)
		}
	}
	if len(t.unchecked) == 0 {
		t.unchecked = nil // a map does not shrink
	}
	return nil
}

// span is which uses of other principals a relist (or an end: checkEnds)
// checks against a connection that began at from, given what Redis held
// of it before the write (p: store.Prior) and the check it was owed (o,
// if owed): those made from its first to its second result, unless skip.
// Only what a connect may have missed: the uses made while no connect
// could see this connection. The connections made since it, live or ended
// (the principals' seen records, within conflict_window): an older one was
// there at its connect, which evaluated it, or is a ghost a snapshot
// brought back, which its own broker removes (atk31: a connection an hour
// over was flagged). An ended one took the client ID after a flush and let
// go before this relist (atk32: a hit-and-run on another broker escaped).
//
// readAt is when the client ID's state was last read for this connection:
// its connect, or, when that connect skipped its read (the client ID read
// quiet for its principal less than quietFor before: readAt), that read.
// Then the uses made since readAt are checked, its own use held or not: a
// flush between that read and the connect let another principal's connect
// find nothing, and this one looked at nothing (atk41: a device
// reconnecting to its broker after a flush and a hit-and-run, before the
// relist, hid the hit-and-run).
func (t *Tracker) span(p store.Prior, from, readAt int64, o owed, owed bool, now int64) (int64, int64, bool) {
	upTo := int64(math.MaxInt64)
	skipped := readAt < from
	// What the failed write would have left: the live entry and the
	// use, without an end. A reap's end is not it (atk36: taken for
	// it, a later takeover went unflagged).
	taken := p.Listed && p.Seen && p.EndedMs == 0
	switch {
	case owed && o.connect:
		// Its connect's own check: everything, as a connect. If a write
		// of it was taken (its live entry is there: a connect's write
		// need not record the use), a use made after the failure saw
		// this one, and its connect flagged it (atk35, atk38: reported
		// twice).
		from = 0
		if p.Listed {
			upTo = o.at
		}
	case owed && taken:
		// A relist's write that failed was taken, perhaps after a
		// gap: what Redis holds tells nothing of before it. From the
		// read its connect skipped its own for, if it did (atk45: from
		// the connect, a hit-and-run before it went unflagged).
		upTo = o.at
		if skipped {
			from = readAt
		}
	case skipped:
		from = readAt
	case p.Seen:
		// Its principal's use of it was there: every connect within
		// conflict_window of that use's start flagged a conflict with it
		// (atk33, atk34: re-reported); those later did not (atk35).
		// Judged at each connect, not now (atk38: a connect a moment
		// before the use left the window was reported again), and by its
		// start: an end there is a reap's (the connection was still held,
		// or its own end is being written now), written when the reap
		// ran, perhaps long after the end it stamps, and a connect before
		// that write saw the use open (atk40: a takeover between a failed
		// reap and the next went unflagged). A connect flags a use whose
		// last moment is its own less the window or later: made a window
		// and a millisecond after it, it did not (atk39). Not its live
		// entry alone: a connect ignores that of a broker whose lease
		// lapsed (atk35).
		from += t.opts.Window.Milliseconds() + 1
		if from > now {
			return 0, 0, true
		}
	}
	return from, upTo, false
}

// uncheckedMax bounds Tracker.unchecked: 65 536 connections (about 1 MB);
// past it, a connection whose write failed is checked at the next relist
// only if Redis holds nothing of it then.
const uncheckedMax = 1 << 16

// owed is an entry of Tracker.unchecked.
type owed struct {
	connect bool   // a connect's check (everything Redis holds), else a relist's (what was made since it)
	round   uint32 // Tracker.relistRound when it was owed
	at      int64  // unix ms of the latest failed write that owed it
}

// owe records that the check of connection seq is owed to its next relist
// (Tracker.unchecked): connect, a connect's, else a relist's.
func (t *Tracker) owe(seq uint64, connect bool) {
	if len(t.unchecked) >= uncheckedMax {
		return
	}
	if t.unchecked == nil {
		t.unchecked = map[uint64]owed{}
	}
	t.unchecked[seq] = owed{connect: t.unchecked[seq].connect || connect, round: t.relistRound, at: t.now().UnixMilli()}
}

// relistEnded forgets the checks owed to connections a complete relist
// (its RelistDone, maxSeq) did not hand over: it hands over every
// connection held, so those, owed before it began and numbered maxSeq or
// lower, are held no more (their disconnect was dropped, or came in the
// failed batch that owed their check; atk35: a leak that filled the map).
// A check owed during the relist (its write failed) stays for the next.
func (t *Tracker) relistEnded(maxSeq uint64) {
	for seq, o := range t.unchecked {
		if seq <= maxSeq && o.round != t.relistRound {
			delete(t.unchecked, seq)
		}
	}
	if len(t.unchecked) == 0 {
		t.unchecked = nil
	}
	t.relistRound++
}

// between is the connections of cs made at from or later and at upTo or
// earlier, in a new slice.
func between(cs []store.Conn, from, upTo int64) []store.Conn {
	out := cs[:0:0]
	for _, c := range cs {
		if c.ConnectedMs >= from && c.ConnectedMs <= upTo {
			out = append(out, c)
		}
	}
	return out
}

// ghostBudget is how long one removal of ghosts (dropGhosts) runs before
// it stops after a page and queues its continuation: short of its
// part's 5 s bound. Without it, a removal stopped by that bound could be
// told from a failing Redis only by ctx.Err(), and go-redis's connection
// deadline (the same instant) can fail a page a moment before ctx's own
// timer has fired: a full relist was asked for instead of the
// continuation (a CI run of TestAtk31LargeSetGhostNeverRemoved). A var for
// tests.
var ghostBudget = 4 * time.Second

// errGhostBudget is dropGhosts' error when its budget ran out.
var errGhostBudget = errors.New("removal's time budget spent")

// GhostStore is what dropGhosts asks of Redis; *store.Store implements it.
// A Store without it (a test's) removes nothing.
type GhostStore interface {
	Listed(ctx context.Context, instance string, cursor uint64) ([]string, uint64, error)
	DropGhosts(ctx context.Context, instance string, ids []string, maxSeq uint64) (int, error)
}

// dropGhosts removes this broker's live entries that are no connection it
// holds (RelistDone): the client IDs in its brokerconns set whose memo
// lists no connection, their entries numbered maxSeq or lower, from the
// set's cursor (0: its start). Every held connection was relisted before,
// and so is listed in the memo (a connect the queue dropped included); a
// connection admitted since has a higher number, or its connect, queued
// after, writes its entry again. It stops itself once ghostBudget is
// spent (errGhostBudget), after a page of some 500 client IDs, and ctx
// (one part's 5 s) bounds a page Redis is slow to answer; it returns
// how many went, and, with an error, the cursor of the page not done
// (handlePart goes on from it later).
func (t *Tracker) dropGhosts(ctx context.Context, maxSeq, cursor uint64) (int, uint64, error) {
	gs, ok := t.store.(GhostStore)
	if !ok {
		return 0, 0, nil
	}
	stopAt := time.Now().Add(ghostBudget)
	dropped := 0
	for {
		ids, next, err := gs.Listed(ctx, t.instance, cursor)
		if err != nil {
			return dropped, cursor, err
		}
		cands := ids[:0]
		for _, id := range ids {
			if e, ok := t.lookMemo(t.idKey(id)); !ok || e.cur == 0 {
				cands = append(cands, id)
			}
		}
		n, err := gs.DropGhosts(ctx, t.instance, cands, maxSeq)
		dropped += n
		if err != nil {
			return dropped, cursor, err
		}
		if next == 0 {
			return dropped, 0, nil
		}
		cursor = next
		// After a page, never before the first: each part goes on
		// (atk33: a budget spent before its first page queued the same
		// cursor again, for ever).
		if !time.Now().Before(stopAt) {
			return dropped, cursor, errGhostBudget
		}
	}
}

// spent says whether ctx's deadline has passed: also in the moment after
// it when a connection's i/o timeout (go-redis sets ctx's deadline on the
// connection) has failed a command and ctx's own timer has not yet set
// ctx.Err().
func spent(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}

// readDone is told that ev's client ID was read for its connection (a
// relist's write): if the memo lists it as a connection whose connect
// skipped its read, it no longer is (readAt: its connect from now on).
func (t *Tracker) readDone(ev event) {
	id := t.idKey(ev.clientID)
	if e, ok := t.lookMemo(id); ok && e.cur == ev.conn.Seq && e.curSkipped {
		e.curSkipped = false
		t.putMemo(id, e)
	}
}

// readAt is when the client ID's state was last read for conn (span): its
// connect, or the earlier read whose quiet mark let its connect skip its
// own (memo e, as it stands before conn's end or relist changes it). A
// mark of another principal, or one older than quietFor at its connect,
// let it skip nothing. Stamps are whole seconds, so the mark alone does not
// tell a read of the connect's own second from the connect's own read; the
// listed connection's memo says whether its connect skipped its read
// (idMemo.curSkipped): then the start of the mark's second, also within the
// connect's own (atk42: a flush and a hit-and-run between a read and a
// reconnect in the same second went unflagged), else its connect. For a
// connection no longer listed (taken over), a mark of the connect's own
// second is taken for its own read (a CI run of
// TestAtk33PausedBrokerReReportsAtRelist saw its own read's mark taken for
// an earlier one, and a relist after a reap report again).
func (t *Tracker) readAt(e idMemo, conn Conn) int64 {
	if e.quietAt == 0 || e.who != t.whoTag(conn.Principal) || !young(e.quietAt, conn.ConnectedMs, quietFor) {
		return conn.ConnectedMs
	}
	switch {
	case e.cur == conn.Seq && e.cur != 0:
		// The listed connection: its connect said whether it read.
		if !e.curSkipped {
			return conn.ConnectedMs
		}
	case int64(e.quietAt) >= secondOf(conn.ConnectedMs):
		return conn.ConnectedMs
	}
	return min(int64(e.quietAt)*1000, conn.ConnectedMs)
}
