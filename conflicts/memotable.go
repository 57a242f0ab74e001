package conflicts

import (
	"fmt"
	"iter"
	"syscall"
	"unsafe"
)

// memoTable is Tracker.ids: the entry of each client ID (packedMemo) by its
// memoKey, in memory mapped from the system (syscall.Mmap), outside the Go
// heap (issue 12). A Go map held an entry in about 98 bytes of live heap at
// 8 000 client IDs (its 40-byte slot in tables 2.4 times that), and the
// collector lets the heap grow past what is live by GOGC percent: about
// twice that in the broker's RSS at Go's default. Here a slot is the same
// 40 bytes (memoSlot), at most 3/4 of them used (linear probing), at
// least 3/8 after a growth: 53 to 107 bytes of RSS an entry, none of it
// counted toward the collector's goal nor scanned.
//
// It holds no Go pointer (a memoKey and a packedMemo are numbers), so
// nothing in the Go heap is reachable from it. The worker goroutine alone
// uses it (no lock). Its size follows its entries, which Tracker bounds
// (seenMemoMax unlisted, plus one per connection listed here): at most
// 8/3 slots an entry when it has just grown, at most 4 when rebuilt (shrink
// sizes it for its entries, and an empty table maps nothing). free unmaps
// it: Run frees it when it returns, and a Tracker collected without
// running (tests) has it freed by a cleanup (New).
//
// A slot's key says its state: {0, 0} empty, {0, 1} a deleted entry
// (tombstone, skipped by probes, reused by inserts). A memoKey's a is
// never 0 (Tracker.memo sets its low bit), so no entry's key is either.
// The probe starts at b, a keyed hash: a client cannot choose where its
// entry lands.
type memoTable struct {
	mem   []byte     // the mapping; nil when none
	slots []memoSlot // mem as slots: len a power of two, or 0
	live  int        // entries
	used  int        // entries and tombstones
}

type memoSlot struct {
	key memoKey
	val packedMemo
}

const (
	memoSlotBytes = int(unsafe.Sizeof(memoSlot{}))
	memoMinSlots  = 256 // the smallest mapping: 10 KiB
)

var tombstone = memoKey{0, 1}

// len is the number of entries.
func (m *memoTable) len() int { return m.live }

// mapped is the bytes mapped (what its RSS is at most).
func (m *memoTable) mapped() int { return len(m.mem) }

// find returns the slot holding k, or -1.
func (m *memoTable) find(k memoKey) int {
	if m.live == 0 {
		return -1
	}
	mask := uint64(len(m.slots) - 1)
	for i := k.b & mask; ; i = (i + 1) & mask {
		switch s := &m.slots[i]; {
		case s.key == k:
			return int(i)
		case s.key == memoKey{}:
			return -1
		}
	}
}

// get returns k's entry.
func (m *memoTable) get(k memoKey) (packedMemo, bool) {
	if i := m.find(k); i >= 0 {
		return m.slots[i].val, true
	}
	return packedMemo{}, false
}

// put stores v as k's entry. A new entry that would take the table past
// 3/4 of its slots, tombstones included, first rebuilds it (rehash).
func (m *memoTable) put(k memoKey, v packedMemo) {
	if k.a == 0 {
		panic("conflicts: a memoKey with a 0")
	}
	if i := m.find(k); i >= 0 {
		m.slots[i].val = v
		return
	}
	if (m.used+1)*4 > len(m.slots)*3 {
		m.rehash(m.live + 1)
	}
	mask := uint64(len(m.slots) - 1)
	for i := k.b & mask; ; i = (i + 1) & mask {
		s := &m.slots[i]
		if s.key == (memoKey{}) || s.key == tombstone {
			if s.key == (memoKey{}) {
				m.used++
			}
			*s = memoSlot{key: k, val: v}
			m.live++
			return
		}
	}
}

// del deletes k's entry, if any.
func (m *memoTable) del(k memoKey) {
	i := m.find(k)
	if i < 0 {
		return
	}
	m.live--
	mask := len(m.slots) - 1
	if m.slots[(i+1)&mask].key != (memoKey{}) {
		m.slots[i] = memoSlot{key: tombstone}
		return
	}
	// A slot followed by an empty one ends no probe that goes further: it
	// is empty again, and so are the tombstones before it.
	m.slots[i] = memoSlot{}
	m.used--
	for j := (i - 1) & mask; m.slots[j].key == tombstone; j = (j - 1) & mask {
		m.slots[j] = memoSlot{}
		m.used--
	}
}

// all yields every entry. The loop's body may update or delete entries (the
// sweep's), not add new ones: the table is not rebuilt meanwhile, so every
// entry there from the start to the end of the loop is yielded once.
func (m *memoTable) all() iter.Seq2[memoKey, packedMemo] {
	return func(yield func(memoKey, packedMemo) bool) {
		for i := 0; i < len(m.slots); i++ { // m.slots read each time: never a freed mapping's
			s := m.slots[i]
			if s.key == (memoKey{}) || s.key == tombstone {
				continue
			}
			if !yield(s.key, s.val) {
				return
			}
		}
	}
}

// rehash rebuilds the table for n entries: the fewest slots, a power of two
// and at least memoMinSlots, of which n take at most half; no mapping for
// none.
func (m *memoTable) rehash(n int) {
	if n < m.live {
		n = m.live
	}
	var next memoTable
	if n > 0 {
		size := memoMinSlots
		for size < 2*n {
			size *= 2
		}
		mem, err := syscall.Mmap(-1, 0, size*memoSlotBytes, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
		if err != nil { // out of memory, as a Go map's growth would be: the table is as it was
			panic(fmt.Sprintf("conflicts: mapping %d bytes for the client-ID memos: %v", size*memoSlotBytes, err))
		}
		next.mem = mem
		next.slots = unsafe.Slice((*memoSlot)(unsafe.Pointer(&mem[0])), size)
		for k, v := range m.all() {
			next.put(k, v)
		}
	}
	m.free()
	*m = next
}

// free unmaps the table and leaves it empty (usable: a put maps it again).
// Nothing refers to the mapping after: its slots are forgotten first.
func (m *memoTable) free() {
	mem := m.mem
	*m = memoTable{}
	if mem != nil {
		if err := syscall.Munmap(mem); err != nil {
			panic(fmt.Sprintf("conflicts: unmapping the client-ID memos: %v", err))
		}
	}
}
