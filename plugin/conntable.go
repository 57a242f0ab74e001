package plugin

import (
	"hash/maphash"
	"iter"
	"math/bits"
)

// connTable is g.conns: the guard's records by their broker pointer
// (handle). A Go map[uintptr]*liveConn took about 36 bytes a connection at
// 8 000 (issue 12); here a slot is the record's pointer alone, its key the
// record's own handle: 8 bytes, in a table at most 3/4 used (linear
// probing), at least 3/8 after a growth, and rebuilt smaller once under
// 1/8 full: 11 to 21 bytes a connection. g.mu guards it.
//
// The scans (scanConns, recheckConns) walk it with g.mu released every few
// hundred entries, and must still visit every record that is in it all
// through the walk: a ban scan that missed one would leave a banned client
// connected. A Go map guarantees that; this table does so by these rules:
//   - while any walk is open (cursor .. done), a deletion leaves a
//     tombstone (connGone) where the record was, and moves nothing: every
//     record stays at its slot as long as that table is the current one;
//   - an insertion fills an empty slot or a tombstone and moves nothing;
//   - a rebuild (growth, shrinking, clearing tombstones) makes a new slice
//     and leaves the old one as it was: a walk keeps reading the slice it
//     started on, which still holds every record that was there when it
//     started and was not deleted before the rebuild.
//
// So a walk may also yield records deleted since it started (it did so
// with the map too, for those deleted after it read them): the scans check
// g.conns.get(lc.handle) == lc before they act, and no record is reused
// while a scan runs (records.go). With no walk open, a deletion moves back
// the entries after it in their run (no tombstones), as idIndex does.
type connTable struct {
	slots []*liveConn // nil: empty; connGone: a tombstone; a power of two long, or none
	shift uint        // 64 - log2(len(slots))
	live  int
	gone  int // tombstones
	walks int // walks open
	seed  uint64
}

// connGone marks a slot whose record was deleted while a walk was open.
var connGone = &liveConn{}

// connTableMin is the fewest slots a table has: 512 bytes. It stays once
// made, so that a client connecting and leaving allocates nothing.
const connTableMin = 64

func newConnTable() connTable {
	return connTable{seed: maphash.Comparable(maphash.MakeSeed(), uint64(0))}
}

// home is handle's first slot: a multiplicative hash (keyed per process)
// whose top bits pick the slot, so that aligned pointers spread.
func (t *connTable) home(handle uintptr) int {
	return int((uint64(handle) ^ t.seed) * 0x9e3779b97f4a7c15 >> t.shift)
}

// find returns handle's slot, or -1 when it has none; free is the first
// tombstone or empty slot met (where an insertion goes), -1 without slots.
func (t *connTable) find(handle uintptr) (slot, free int) {
	if len(t.slots) == 0 {
		return -1, -1
	}
	free = -1
	mask := len(t.slots) - 1
	for s := t.home(handle); ; s = (s + 1) & mask {
		switch lc := t.slots[s]; {
		case lc == nil:
			if free < 0 {
				free = s
			}
			return -1, free
		case lc == connGone:
			if free < 0 {
				free = s
			}
		case lc.handle == handle:
			return s, free
		}
	}
}

// get returns handle's record, nil if none.
func (t *connTable) get(handle uintptr) *liveConn {
	if s, _ := t.find(handle); s >= 0 {
		return t.slots[s]
	}
	return nil
}

// put makes lc its handle's record, in place of the one there.
func (t *connTable) put(lc *liveConn) {
	s, free := t.find(lc.handle)
	if s >= 0 {
		t.slots[s] = lc
		return
	}
	if free < 0 || (t.slots[free] == nil && (t.live+t.gone+1)*4 > len(t.slots)*3) {
		t.resize(t.live + 1)
		_, free = t.find(lc.handle)
	}
	if t.slots[free] == connGone {
		t.gone--
	}
	t.slots[free] = lc
	t.live++
}

// del deletes handle's record, if any.
func (t *connTable) del(handle uintptr) {
	hole, _ := t.find(handle)
	if hole < 0 {
		return
	}
	t.live--
	if t.walks > 0 || t.gone > 0 {
		// A walk may be reading this slice: nothing moves. Tombstones
		// already here: backward shifting past them is not worth it; the
		// next rebuild clears them.
		t.slots[hole] = connGone
		t.gone++
		t.shrink()
		return
	}
	mask := len(t.slots) - 1
	for s := (hole + 1) & mask; t.slots[s] != nil; s = (s + 1) & mask {
		h := t.home(t.slots[s].handle)
		// The entry at s stays if its home lies cyclically in (hole, s].
		if (hole < s && hole < h && h <= s) || (s < hole && (hole < h || h <= s)) {
			continue
		}
		t.slots[hole] = t.slots[s]
		hole = s
	}
	t.slots[hole] = nil
	t.shrink()
}

// shrink rebuilds a table under 1/8 full smaller, when no walk is open: a
// fleet gone leaves its table, and a scan reads at most 8 slots a record.
func (t *connTable) shrink() {
	if t.walks == 0 && len(t.slots) > connTableMin && t.live*8 < len(t.slots) {
		t.resize(t.live)
	}
}

// len is the number of records.
func (t *connTable) len() int { return t.live }

// resize rebuilds the table in a new slice for n records: the fewest
// slots, a power of two and at least connTableMin, of which n take at most
// half. The old slice is left as it was (a walk may be reading it).
func (t *connTable) resize(n int) {
	old := t.slots
	size := connTableMin
	for size < 2*max(n, t.live) {
		size *= 2
	}
	t.slots = make([]*liveConn, size)
	t.shift = uint(64 - bits.TrailingZeros(uint(size)))
	t.gone = 0
	for _, lc := range old {
		if lc != nil && lc != connGone {
			_, s := t.find(lc.handle)
			t.slots[s] = lc
		}
	}
}

// connWalk is a walk over the records: open with walk, read with next,
// close with done, all with g.mu held; g.mu may be released between calls
// (see connTable).
type connWalk struct {
	t     *connTable
	slots []*liveConn
	i     int
}

// walk opens a walk.
func (t *connTable) walk() *connWalk {
	t.walks++
	return &connWalk{t: t, slots: t.slots}
}

// next returns the next record, nil at the end.
func (w *connWalk) next() *liveConn {
	for w.i < len(w.slots) {
		lc := w.slots[w.i]
		w.i++
		if lc != nil && lc != connGone {
			return lc
		}
	}
	return nil
}

// done closes the walk; once the last walk is closed, tombstones are
// cleared at the next rebuild, and deletions shift again when none is
// left.
func (w *connWalk) done() {
	if w.t != nil {
		w.t.walks--
		w.t = nil
	}
}

// open reports whether the walk is not closed yet.
func (w *connWalk) open() bool { return w.t != nil }

// all yields every record, g.mu held throughout; the loop's body must not
// change the table (tests).
func (t *connTable) all() iter.Seq[*liveConn] {
	return func(yield func(*liveConn) bool) {
		for _, lc := range t.slots {
			if lc != nil && lc != connGone && !yield(lc) {
				return
			}
		}
	}
}
