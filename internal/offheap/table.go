package offheap

import (
	"fmt"
	"iter"
	"reflect"
	"syscall"
	"unsafe"
)

// Table is a hash table of K to V in memory mapped from the system: open
// addressing, linear probing, at most 3/4 of its slots used, at least 3/8
// after a growth (a slot is K and V side by side, with their padding), and
// rebuilt to fit when it grows or is told to (Rehash; an empty table maps
// nothing). K and V hold no pointer (NewTable checks), so nothing in the Go
// heap is reachable from the table, and nothing there refers into it but
// the Table itself. It has no lock: its user serialises every call.
//
// A slot's key says its state: K's zero value an empty slot, tomb a
// deleted entry (a tombstone: skipped by probes, reused by inserts). Its
// user keeps both out of its keys (Put panics at one). The probe starts at
// hash(key): a keyed hash, so that a client cannot choose where its
// entries land.
//
// Free unmaps it; the table is empty after and stays usable (a Put maps
// it again). Its user bounds its entries: the table takes at most 8/3
// slots an entry when it has just grown, 4 once rebuilt by Rehash for its
// entries.
type Table[K comparable, V any] struct {
	mem   []byte       // the mapping; nil when none
	slots []slot[K, V] // mem as slots: len a power of two, or 0
	live  int          // entries
	used  int          // entries and tombstones
	hash  func(K) uint64
	tomb  K
	iters int // All loops under way: no rebuild meanwhile
}

type slot[K comparable, V any] struct {
	key K
	val V
}

// MinSlots is the fewest slots a mapping has.
const MinSlots = 256

// NewTable returns an empty table (nothing mapped) whose probes start at
// hash(key), tomb its tombstone key. It panics if K or V can hold a
// pointer, or if tomb is K's zero value.
func NewTable[K comparable, V any](hash func(K) uint64, tomb K) *Table[K, V] {
	for _, t := range []reflect.Type{reflect.TypeFor[K](), reflect.TypeFor[V]()} {
		if !pointerFree(t) {
			panic(fmt.Sprintf("offheap: %v can hold a pointer", t))
		}
	}
	var zero K
	if tomb == zero {
		panic("offheap: the tombstone key is the empty key")
	}
	return &Table[K, V]{hash: hash, tomb: tomb}
}

// pointerFree reports whether no value of t holds a pointer.
func pointerFree(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128:
		return true
	case reflect.Array:
		return pointerFree(t.Elem())
	case reflect.Struct:
		for i := range t.NumField() {
			if !pointerFree(t.Field(i).Type) {
				return false
			}
		}
		return true
	}
	return false
}

// Len is the number of entries.
func (m *Table[K, V]) Len() int { return m.live }

// Mapped is the bytes mapped: what the table's RSS is at most.
func (m *Table[K, V]) Mapped() int { return len(m.mem) }

// find returns the slot holding k, or -1.
func (m *Table[K, V]) find(k K) int {
	if m.live == 0 {
		return -1
	}
	var empty K
	mask := uint64(len(m.slots) - 1)
	for i := m.hash(k) & mask; ; i = (i + 1) & mask {
		switch s := &m.slots[i]; s.key {
		case k:
			return int(i)
		case empty:
			return -1
		}
	}
}

// Get returns k's entry.
func (m *Table[K, V]) Get(k K) (V, bool) {
	if i := m.find(k); i >= 0 {
		return m.slots[i].val, true
	}
	var none V
	return none, false
}

// Put stores v as k's entry. A new entry that would take the table past
// 3/4 of its slots, tombstones included, first rebuilds it (Rehash).
func (m *Table[K, V]) Put(k K, v V) {
	var empty K
	if k == empty || k == m.tomb {
		panic("offheap: a key that marks a slot")
	}
	if i := m.find(k); i >= 0 {
		m.slots[i].val = v
		return
	}
	if (m.used+1)*4 > len(m.slots)*3 {
		m.Rehash(m.live + 1)
	}
	mask := uint64(len(m.slots) - 1)
	for i := m.hash(k) & mask; ; i = (i + 1) & mask {
		s := &m.slots[i]
		if s.key == empty || s.key == m.tomb {
			if s.key == empty {
				m.used++
			}
			*s = slot[K, V]{key: k, val: v}
			m.live++
			return
		}
	}
}

// Del deletes k's entry, if any.
func (m *Table[K, V]) Del(k K) {
	i := m.find(k)
	if i < 0 {
		return
	}
	m.live--
	var empty K
	mask := len(m.slots) - 1
	if m.slots[(i+1)&mask].key != empty {
		m.slots[i] = slot[K, V]{key: m.tomb}
		return
	}
	// A slot followed by an empty one ends no probe that goes further: it
	// is empty again, and so are the tombstones before it.
	m.slots[i] = slot[K, V]{}
	m.used--
	for j := (i - 1) & mask; m.slots[j].key == m.tomb; j = (j - 1) & mask {
		m.slots[j] = slot[K, V]{}
		m.used--
	}
}

// Clear deletes every entry and unmaps the table.
func (m *Table[K, V]) Clear() { m.Free() }

// All yields every entry. The loop's body may update or delete entries,
// not add new ones (Put panics if it would rebuild the table meanwhile):
// every entry there from the start to the end of the loop is yielded once.
func (m *Table[K, V]) All() iter.Seq2[K, V] {
	return func(yield func(K, V) bool) {
		m.iters++
		defer func() { m.iters-- }()
		var empty K
		for i := 0; i < len(m.slots); i++ { // m.slots read each time: never a freed mapping's
			s := m.slots[i]
			if s.key == empty || s.key == m.tomb {
				continue
			}
			if !yield(s.key, s.val) {
				return
			}
		}
	}
}

// Rehash rebuilds the table for n entries (at least those it holds): the
// fewest slots, a power of two and at least MinSlots, of which n take at
// most half; no mapping for none. The old mapping is unmapped.
func (m *Table[K, V]) Rehash(n int) {
	if m.iters > 0 {
		panic("offheap: a table rebuilt under its All loop")
	}
	n = max(n, m.live)
	next := Table[K, V]{hash: m.hash, tomb: m.tomb}
	if n > 0 {
		size := MinSlots
		for size < 2*n {
			size *= 2
		}
		bytes := size * int(unsafe.Sizeof(slot[K, V]{}))
		mem, err := syscall.Mmap(-1, 0, bytes, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
		if err != nil { // out of memory, as a Go map's growth would be: the table is as it was
			panic(fmt.Sprintf("offheap: mapping %d bytes: %v", bytes, err))
		}
		next.mem = mem
		next.slots = unsafe.Slice((*slot[K, V])(unsafe.Pointer(&mem[0])), size)
		for k, v := range m.All() {
			next.Put(k, v)
		}
	}
	m.Free()
	*m = next
}

// Free unmaps the table and leaves it empty. Nothing refers to the mapping
// after: its slots are forgotten before it is unmapped.
func (m *Table[K, V]) Free() {
	if m.iters > 0 {
		panic("offheap: a table freed under its All loop")
	}
	mem := m.mem
	m.mem, m.slots, m.live, m.used = nil, nil, 0, 0
	if mem != nil {
		if err := syscall.Munmap(mem); err != nil {
			panic(fmt.Sprintf("offheap: unmapping %d bytes: %v", len(mem), err))
		}
	}
}

// Slice is a slice of pointer-free T in memory mapped from the system: its
// length and capacity as a Go slice's, grown by Grow (never by append: an
// append past its capacity would copy it onto the Go heap). Its user
// serialises every call, and keeps no pointer into it across Grow or Free.
type Slice[T any] struct {
	mem []byte
	S   []T // the elements: S[:len] in use, cap(S) mapped
}

// NewSlice returns an empty Slice (nothing mapped). It panics if T can hold
// a pointer.
func NewSlice[T any]() *Slice[T] {
	if t := reflect.TypeFor[T](); !pointerFree(t) {
		panic(fmt.Sprintf("offheap: %v can hold a pointer", t))
	}
	return &Slice[T]{}
}

// Grow maps room for n elements (at least those in use) and moves them
// there; the old mapping is unmapped, none for n 0.
func (s *Slice[T]) Grow(n int) {
	n = max(n, len(s.S))
	var mem []byte
	var next []T
	if n > 0 {
		bytes := n * int(unsafe.Sizeof(*new(T)))
		var err error
		mem, err = syscall.Mmap(-1, 0, bytes, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
		if err != nil { // out of memory, as an append would be: s is as it was
			panic(fmt.Sprintf("offheap: mapping %d bytes: %v", bytes, err))
		}
		next = unsafe.Slice((*T)(unsafe.Pointer(&mem[0])), n)[:len(s.S)]
		copy(next, s.S)
	}
	s.Free()
	s.mem, s.S = mem, next
}

// Mapped is the bytes mapped.
func (s *Slice[T]) Mapped() int { return len(s.mem) }

// Free unmaps the slice and leaves it empty (nothing refers to the mapping
// after).
func (s *Slice[T]) Free() {
	mem := s.mem
	s.mem, s.S = nil, nil
	if mem != nil {
		if err := syscall.Munmap(mem); err != nil {
			panic(fmt.Sprintf("offheap: unmapping %d bytes: %v", len(mem), err))
		}
	}
}
