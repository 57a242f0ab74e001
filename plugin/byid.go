package plugin

import (
	"hash/maphash"
	"iter"
)

// idIndex is g.byID: each client ID's newest connection here, found by its
// clientID. A Go map[string]*liveConn took about 58 bytes a connection at
// 8 000 (a 24-byte slot, in tables about 2.4 times their slots; issue 12);
// here a slot is the record's pointer alone, its key the record's own
// clientID: 8 bytes, in a table at most 3/4 full (linear probing), at
// least 3/8 after a growth, and rebuilt smaller once under 1/8 full: 11 to
// 21 bytes a connection. Its smallest table (idIndexMin slots) stays once
// made, so that a client connecting and leaving over and over allocates
// nothing (TestBasicAuthHitAllocs). It holds Go pointers, so it is on the Go heap;
// what it saves is its size. The probe starts at a hash of the client ID
// keyed by a seed of this process's own, so no client can aim at a run of
// slots. A deletion moves back the entries after it in its run (no
// tombstones), so nothing may iterate it while it changes (none does: the
// scans walk g.conns, connTable). Its entries are at most g.conns' (each a record
// there): bounded as the connections and offlineMax are. g.mu guards it.
type idIndex struct {
	seed  maphash.Seed
	slots []*liveConn // nil: empty; a power of two long, or none
	live  int
}

// idIndexMin is the fewest slots a table has: 512 bytes.
const idIndexMin = 64

func newIDIndex() idIndex { return idIndex{seed: maphash.MakeSeed()} }

func (x *idIndex) home(id string) int {
	return int(maphash.String(x.seed, id) & uint64(len(x.slots)-1))
}

// find returns the slot of id's entry, or the empty slot where it would go
// (-1 when the table has no slot).
func (x *idIndex) find(id string) (slot int, ok bool) {
	if len(x.slots) == 0 {
		return -1, false
	}
	mask := len(x.slots) - 1
	for s := x.home(id); ; s = (s + 1) & mask {
		switch lc := x.slots[s]; {
		case lc == nil:
			return s, false
		case lc.clientID == id:
			return s, true
		}
	}
}

// get returns id's entry, nil if none.
func (x *idIndex) get(id string) *liveConn {
	if s, ok := x.find(id); ok {
		return x.slots[s]
	}
	return nil
}

// idSlot is where lookup found a client ID's entry, or where it would go.
type idSlot struct {
	s  int
	ok bool
}

// lookup returns id's entry (nil if none) and its slot, for a putAt or
// delAt of id with nothing changing the index meanwhile: one hash of the
// client ID for both (issue 12: admit and DISCONNECT each hashed it twice).
func (x *idIndex) lookup(id string) (*liveConn, idSlot) {
	s, ok := x.find(id)
	if !ok {
		return nil, idSlot{s, false}
	}
	return x.slots[s], idSlot{s, true}
}

// set makes lc its client ID's entry, in place of the one there.
func (x *idIndex) set(lc *liveConn) {
	_, at := x.lookup(lc.clientID)
	x.putAt(at, lc)
}

// putAt is set for lc, whose clientID lookup found at at.
func (x *idIndex) putAt(at idSlot, lc *liveConn) {
	if at.ok {
		x.slots[at.s] = lc
		return
	}
	s := at.s
	if (x.live+1)*4 > len(x.slots)*3 {
		x.resize(x.live + 1)
		s, _ = x.find(lc.clientID)
	}
	x.slots[s] = lc
	x.live++
}

// del deletes id's entry, if any.
func (x *idIndex) del(id string) {
	if _, at := x.lookup(id); at.ok {
		x.delAt(at)
	}
}

// delAt deletes the entry lookup found at at.
func (x *idIndex) delAt(at idSlot) {
	hole := at.s
	mask := len(x.slots) - 1
	for s := (hole + 1) & mask; x.slots[s] != nil; s = (s + 1) & mask {
		h := x.home(x.slots[s].clientID)
		// The entry at s stays if its home lies cyclically in (hole, s].
		if (hole < s && hole < h && h <= s) || (s < hole && (hole < h || h <= s)) {
			continue
		}
		x.slots[hole] = x.slots[s]
		hole = s
	}
	x.slots[hole] = nil
	x.live--
	if len(x.slots) > idIndexMin && x.live*8 < len(x.slots) {
		x.resize(x.live) // a fleet gone leaves its table
	}
}

// len is the number of entries.
func (x *idIndex) len() int { return x.live }

// all yields every entry; the loop's body must not change the index.
func (x *idIndex) all() iter.Seq2[string, *liveConn] {
	return func(yield func(string, *liveConn) bool) {
		for _, lc := range x.slots {
			if lc != nil && !yield(lc.clientID, lc) {
				return
			}
		}
	}
}

// resize rebuilds the table for n entries: the fewest slots, a power of
// two and at least idIndexMin, of which n take at most half.
func (x *idIndex) resize(n int) {
	old := x.slots
	size := idIndexMin
	for size < 2*max(n, x.live) {
		size *= 2
	}
	x.slots = make([]*liveConn, size)
	for _, lc := range old {
		if lc != nil {
			s, _ := x.find(lc.clientID)
			x.slots[s] = lc
		}
	}
}
