package conflicts

import (
	"hash/maphash"
	"math"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// What the worker remembers of each client ID (the worker goroutine's own,
// no lock), to spare Redis commands and to know what a disconnect owes
// Redis. Connections are their numbers (Conn.Seq; 0: none), not their ID
// strings.
//
// One entry per client ID (Tracker.ids, packedMemo) holds what were three map
// entries (issue 12: 235 bytes of a held connection's 647 were those three
// maps' slots): the connection listed live for this instance (current), the
// seen mark of one principal, and the quiet mark. The seen marks of the
// client ID's other principals, a rare case (a client ID shared, or taken
// over by another principal), are in Tracker.others, keyed by the pair.

// Tracker.ids is an offheap.Table (issue 12): a Go map held an entry in
// about 98 bytes of live heap at 8 000 client IDs (its 40-byte slot in
// tables 2.4 times that), and the collector lets the heap grow past what is
// live by GOGC percent, about twice that in the broker's RSS at Go's
// default. The table's slots are the same 40 bytes, in memory mapped from
// the system, at most 3/4 of them used, at least 3/8 after a growth: 53 to
// 107 bytes of RSS an entry, none of it counted toward the collector's goal
// nor scanned. The worker goroutine alone uses it; Run unmaps it when it
// returns. Its entries are bounded by seenMemoMax unlisted, plus one per
// connection listed here (putMemo).

// memoKey names a client ID in the worker's memos: two 64-bit maphash sums
// of it under two seeds of this process's own, never shown, the first's
// low bit set (127 bits). Two client IDs share a key with probability
// 2^-127, about 1.2e-28 for any two of the seenMemoMax+live entries a
// table holds (n²/2^128, n = 1e6: 2.9e-27); an attacker cannot aim at one
// without the seeds. Keyed so, an entry holds no
// string: 16 bytes, whatever the client sends, and it may outlive the
// connection whose client ID string the broker's side holds. This key now
// carries current too, whose mistake would outlast a window (a connection
// that ended left listed live until the client ID connects again on this
// broker, or the broker's lease lapses): a broker taking 10^4 new client
// IDs a second for a century (3e13 keys, each against the map's 1e6)
// meets it with a chance of about 2e-19; the string key it replaces took
// the same 16 bytes of slot.
type memoKey struct{ a, b uint64 }

// idKey is the client ID's memoKey: the worker's key for each event. One
// call of maphash.String per seed: a Hash written three times (as the
// tests' pair keys still are, memokey_test.go)
// copies each part into its 128-byte buffer first, and that was about 580
// of the 8 000 instructions per CONNECT the worker spent on make
// bench-profile's reconnecting devices (issue 12). The client ID alone
// needs no length before it: nothing follows it.
func (t *Tracker) idKey(clientID string) memoKey {
	// a's low bit set: no key is one of ids's marks (a 0: empty, tombstone).
	return memoKey{maphash.String(t.seeds[0], clientID) | 1, maphash.String(t.seeds[1], clientID)}
}

// whoTag names a principal within one client ID's entry: 62 bits of a
// keyed hash of the principal alone (packedMemo keeps its mode in the other
// two). Two principals share a tag with probability 2^-62 a pair (n²/2^63
// among n principals: about 1e-7 at a million), and then for the life of
// the process, on every client ID they share (a hostile tester's reading:
// not for one window, as this said). One is then taken for the other in
// that client ID's entry: a use not recorded for up to seenRefresh, or
// one read skipped within quietFor; the next read sees the other principal
// by its name (noteQuiet and the rules compare principals, not tags) and
// drops the quiet mark, so a conflict between the two is found one read
// later. A disconnect's end (Left) sent or not for the wrong principal
// changes nothing wrong: Redis's leftScript keeps the latest use by the
// records themselves.
func (t *Tracker) whoTag(principal string) uint64 {
	return maphash.String(t.seeds[1], principal) &^ tagMask
}

// stamp is a time in the memos: unix seconds, 0 none (the marks are 4
// bytes, not 8). Seconds, not milliseconds: a mark counts while
// young(stamp, now, d), which holds only if it was made less than d ago in
// milliseconds (both floored to the second, the mark's at most as far from
// now as it was), so a mark stops counting up to a second before d has
// passed, never after. The marks only spare Redis commands (a read, a
// seen record), so the second costs at most one command a mark would have
// spared: it never skips one. A clock before 1970-01-01T00:00:01 (a host
// without a real-time clock, or one set wrong) stamps second 1, so that a
// mark is still a mark (a connection that recorded its principal's use is
// remembered as its recorder, and its end written: a hostile tester found
// stamp 0, none, there); no mark counts as young while the clock is there
// (young), so nothing is spared then. One past 2106 stamps the last second
// uint32 holds.
type stamp uint32

// stampOf is the stamp of now (unix ms).
func stampOf(now int64) stamp {
	s := secondOf(now)
	switch {
	case s < 1:
		return 1
	case s > math.MaxUint32:
		return math.MaxUint32
	}
	return stamp(s)
}

// secondOf is the unix second of now (unix ms), floored.
func secondOf(now int64) int64 {
	s := now / 1000
	if now%1000 < 0 {
		s--
	}
	return s
}

// young reports whether at is a mark made less than d before now (unix
// ms), as stamp states. A mark ahead of now (the clock went back) is young,
// as it was.
func young(at stamp, now int64, d time.Duration) bool {
	// now-at < (its seconds apart + 1) s, whatever the ms in the two seconds;
	// none while the clock is before 1970-01-01T00:00:01 (stampOf)
	return at != 0 && secondOf(now) >= 1 && (secondOf(now)-int64(at)+1)*1000 <= d.Milliseconds()
}

// idMemo is what the worker remembers of one client ID, as the worker
// works on it; ids holds it packed (packedMemo).
type idMemo struct {
	// cur mirrors this instance's field of the client ID's live hash: the
	// connection last written there, until its disconnect (0: none).
	cur uint64
	// curSkipped: cur's connect skipped its read, for the quiet mark
	// (readAt: its relist and its end's check start at that mark's read,
	// also one made within the connect's own second; atk42).
	curSkipped bool
	// who is the principal (whoTag) whose seen and quiet marks these are.
	who uint64
	// The seen mark: seenSeq is the connection that last recorded who's use
	// of the client ID, until it ends (then 0: no later connection has its
	// number, so 0 answers its disconnect's question as well); seenAt when
	// (0: no mark). A device reconnecting all day needs its last
	// use recorded every seenRefresh, not at every reconnect, and the
	// disconnect of the connection that recorded it records its end (Left).
	seenSeq uint64
	seenAt  stamp
	// quietAt: when a read of the client ID last showed only who on it, with
	// no live connection on another broker (0: none). A reconnect
	// within quietFor skips the read. Nothing is lost: a newcomer's own
	// first connect reads, and sees the incumbent.
	quietAt stamp
}

// packedMemo is an idMemo as ids holds it: 24 bytes, its slot 40 with its
// key (where current, seen and quiet took 24, 32 and 40 in three maps). Its
// two connection numbers take one field, s, and the low 2 bits of who
// (whoTag leaves them 0) say how (mode...): a client ID's listed
// connection is, most often, the one that recorded its principal's use,
// or that one has ended (0), or none is listed. Only when both are
// connections, and two (a connection taken over by another of the same
// principal within seenRefresh, still open), is the one owed its end in
// Tracker.owed, until the entry leaves that mode (pack): at most one
// entry there per listed client ID.
type packedMemo struct {
	s       uint64
	tag     uint64 // who | mode | skipBit
	seenAt  stamp
	quietAt stamp
}

// The modes of a packedMemo: what its s is.
const (
	modeBoth  = 0 // cur and seenSeq (0, 0 in the zero packedMemo)
	modeCur   = 1 // cur; seenSeq 0
	modeSeen  = 2 // seenSeq; cur 0
	modeSplit = 3 // cur; seenSeq is owed[id]
	modeMask  = 3
	skipBit   = 4 // idMemo.curSkipped
	tagMask   = modeMask | skipBit
)

// pack is e packed, for id's entry, which was; it keeps owed in step.
func (t *Tracker) pack(id memoKey, e idMemo, was packedMemo) packedMemo {
	p := packedMemo{s: e.cur, tag: e.who, seenAt: e.seenAt, quietAt: e.quietAt}
	if e.curSkipped && e.cur != 0 {
		p.tag |= skipBit
	}
	switch {
	case e.cur == e.seenSeq:
	case e.seenSeq == 0:
		p.tag |= modeCur
	case e.cur == 0:
		p.s, p.tag = e.seenSeq, p.tag|modeSeen
	default:
		p.tag |= modeSplit
		if t.owed == nil {
			t.owed = map[memoKey]uint64{}
		}
		t.owed[id] = e.seenSeq
		return p
	}
	if was.tag&modeMask == modeSplit {
		delete(t.owed, id)
		if len(t.owed) == 0 {
			t.owed = nil // its tables go
		}
	}
	return p
}

// unpack is id's entry p as the worker works on it.
func (t *Tracker) unpack(id memoKey, p packedMemo) idMemo {
	e := idMemo{who: p.tag &^ tagMask, seenAt: p.seenAt, quietAt: p.quietAt}
	switch p.tag & modeMask {
	case modeBoth:
		e.cur, e.seenSeq = p.s, p.s
	case modeCur:
		e.cur = p.s
	case modeSeen:
		e.seenSeq = p.s
	case modeSplit:
		e.cur, e.seenSeq = p.s, t.owed[id]
	}
	e.curSkipped = e.cur != 0 && p.tag&skipBit != 0
	return e
}

// seenMark is a seen mark of a principal not its client ID's who (others).
type seenMark struct {
	seq uint64 // as idMemo.seenSeq
	at  stamp
}

// pairKey names a (client ID, principal) pair in others.
type pairKey struct {
	id  memoKey
	who uint64
}

const (
	quietFor    = 10 * time.Second
	seenRefresh = 30 * time.Second
	// seenMemoMax bounds the entries kept of client IDs with no connection
	// listed here (a flood of new client IDs), and the seen marks of others:
	// reaching it drops them all (those still owed an end do not get it
	// recorded: a seen record left without its DisconnectedMs, its window
	// reckoned from its start). Entries of listed connections are bounded by
	// the connections, whose client IDs the broker's side holds anyway.
	seenMemoMax = 200_000
	// memoShrinkMin: ids is rebuilt when under a quarter of the entries it
	// held at most since it was last built, once that was at least this.
	memoShrinkMin = 1024
)

// lookMemo is id's entry, if there is one.
func (t *Tracker) lookMemo(id memoKey) (idMemo, bool) {
	e, _, ok := t.findMemo(id)
	return e, ok
}

// findMemo is id's entry, if there is one (the zero idMemo if not), with
// what the table holds (was): storeMemo takes both back, and so stores it
// with one probe of the table, not two (writes, per event).
func (t *Tracker) findMemo(id memoKey) (e idMemo, was packedMemo, ok bool) {
	was, ok = t.ids.Get(id)
	if !ok {
		return idMemo{}, was, false
	}
	return t.unpack(id, was), was, true
}

// putMemo stores e as id's entry. A new entry beyond seenMemoMax entries
// of unlisted client IDs first drops those (pruneUnlisted).
func (t *Tracker) putMemo(id memoKey, e idMemo) {
	was, ok := t.ids.Get(id)
	t.storeMemo(id, e, was, ok)
}

// storeMemo is putMemo with id's entry as findMemo found it (was, ok),
// the table unchanged since.
func (t *Tracker) storeMemo(id memoKey, e idMemo, was packedMemo, ok bool) {
	if !ok {
		if t.ids.Len()-t.listed >= seenMemoMax {
			t.pruneUnlisted()
		}
		if t.ids.Len() >= t.peak {
			t.peak = t.ids.Len() + 1
		}
	}
	t.ids.Put(id, t.pack(id, e, was))
}

// list makes seq the connection listed live for id (e, put by the caller).
func (t *Tracker) list(e *idMemo, seq uint64) {
	if e.cur == 0 {
		t.listed++
	}
	e.cur, e.curSkipped = seq, false
}

// quietLive reports whether e's quiet mark is younger than quietFor.
func (e *idMemo) quietLive(now int64) bool {
	return young(e.quietAt, now, quietFor)
}

// seenFresh reports whether principal who had its use of client ID id
// (its entry e, put by the caller) recorded less than seenRefresh ago; if
// not, connection seq records it. The pair's mark is in e when e is who's,
// else in others; a pair new to both takes e when e holds no mark of
// another principal (no seen mark, no quiet mark younger than quietFor:
// an older one is as good as none).
func (t *Tracker) seenFresh(id memoKey, e *idMemo, who, seq uint64, now int64) bool {
	at := stampOf(now)
	if e.who == who && e.seenAt != 0 {
		if t.fresh(e.seenAt, now, seenRefresh) {
			return true
		}
		e.seenSeq, e.seenAt = seq, at
		return false
	}
	pk := pairKey{id, who}
	m, ok := t.others[pk]
	if ok && t.fresh(m.at, now, seenRefresh) {
		return true
	}
	if e.seenAt == 0 && (e.who == who || !e.quietLive(now)) {
		if ok {
			delete(t.others, pk)
		}
		if e.who != who {
			e.quietAt = 0
		}
		e.who, e.seenSeq, e.seenAt = who, seq, at
		return false
	}
	t.putOther(pk, seenMark{seq: seq, at: at})
	return false
}

// endSeen is told that connection seq of principal who and client ID id
// (its entry e, put by the caller if ok) ended: it reports whether the
// pair's seen mark names seq (then its end is recorded, Left), and then
// forgets the number.
func (t *Tracker) endSeen(id memoKey, e *idMemo, who, seq uint64) bool {
	if e.who == who && e.seenAt != 0 {
		if e.seenSeq == seq {
			e.seenSeq = 0
			return true
		}
		return false
	}
	pk := pairKey{id, who}
	if m, ok := t.others[pk]; ok && m.seq == seq {
		m.seq = 0
		t.others[pk] = m
		return true
	}
	return false
}

// putOther records a seen mark in others; reaching seenMemoMax drops them
// all first.
func (t *Tracker) putOther(pk pairKey, m seenMark) {
	if t.others == nil || len(t.others) >= seenMemoMax {
		t.others = map[pairKey]seenMark{}
	}
	t.others[pk] = m
}

// setWho makes who the principal of e, client ID id's entry: the seen mark
// of the principal it was goes to others, and who's, if there, comes back.
func (t *Tracker) setWho(id memoKey, e *idMemo, who uint64) {
	if e.seenAt != 0 {
		t.putOther(pairKey{id, e.who}, seenMark{seq: e.seenSeq, at: e.seenAt})
	}
	e.seenSeq, e.seenAt = 0, 0
	pk := pairKey{id, who}
	if m, ok := t.others[pk]; ok {
		delete(t.others, pk)
		e.seenSeq, e.seenAt = m.seq, m.at
	}
	e.who = who
}

// noteQuiet records whether a read of ev's client ID showed only its
// principal, with no live connection on another broker.
func (t *Tracker) noteQuiet(ev event, st *store.State, alive leaseView, now int64) {
	id := t.idKey(ev.clientID)
	e, ok := t.lookMemo(id)
	quiet := true
	for _, x := range st.Seen {
		if x.Principal != ev.conn.Principal {
			quiet = false
			break
		}
	}
	for _, x := range st.Live {
		if !quiet {
			break
		}
		if x.Instance != t.instance && alive.counts(&x) {
			quiet = false
		}
	}
	if !quiet {
		if ok && e.quietAt != 0 {
			e.quietAt = 0
			t.putMemo(id, e)
		}
		return
	}
	if who := t.whoTag(ev.conn.Principal); e.who != who {
		t.setWho(id, &e, who)
	}
	e.quietAt = stampOf(now)
	t.putMemo(id, e)
}
