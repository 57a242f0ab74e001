package offheap

import (
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type key struct{ a, b uint64 }

type val struct {
	s, tag uint64
	x, y   uint32
}

func newKeyed() *Table[key, val] {
	return NewTable[key, val](func(k key) uint64 { return k.b }, key{0, 1})
}

// check requires m to hold exactly model, each entry found by Get and
// yielded once by All, and its counts in step with its slots.
func check(t *testing.T, m *Table[key, val], model map[key]val) {
	t.Helper()
	require.Equal(t, len(model), m.Len())
	for k, v := range model {
		got, ok := m.Get(k)
		require.True(t, ok, "key %v lost", k)
		require.Equal(t, v, got)
	}
	seen := map[key]bool{}
	for k, v := range m.All() {
		require.False(t, seen[k], "key %v yielded twice", k)
		seen[k] = true
		require.Equal(t, model[k], v)
	}
	require.Len(t, seen, len(model))
	live, used := 0, 0
	for _, s := range m.slots {
		if s.key != (key{}) {
			used++
			if s.key != m.tomb {
				live++
			}
		}
	}
	require.Equal(t, m.live, live)
	require.Equal(t, m.used, used)
	if len(m.slots) > 0 {
		require.LessOrEqual(t, used*4, len(m.slots)*3, "over 3/4 of the slots used")
		require.Equal(t, len(m.slots)*40, m.Mapped())
	}
}

// The table against a Go map: random puts, updates and deletes, over few
// probe starts (long runs of neighbours at the last slots, wrapping, with
// tombstones between them) and over many (growth); deletes and updates
// within All; rebuilds; it ends unmapped.
func TestTableModel(t *testing.T) {
	for _, starts := range []uint64{3, 1 << 62} {
		rng := rand.New(rand.NewPCG(1, starts))
		m := newKeyed()
		model := map[key]val{}
		pick := func() key {
			// b picks the probe start; a tells keys of the same b apart
			return key{a: uint64(rng.IntN(2000)) + 1, b: ^uint64(0) - rng.Uint64N(starts)}
		}
		for round := 0; round < 40; round++ {
			for i := 0; i < 500; i++ {
				k := pick()
				if rng.IntN(3) == 0 {
					m.Del(k)
					delete(model, k)
					continue
				}
				v := val{s: rng.Uint64(), tag: rng.Uint64(), x: uint32(i)}
				m.Put(k, v)
				model[k] = v
			}
			check(t, m, model)
			for k, v := range m.All() {
				switch rng.IntN(3) {
				case 0:
					m.Del(k)
					delete(model, k)
				case 1:
					v.y = 7
					m.Put(k, v)
					model[k] = v
				}
			}
			check(t, m, model)
			if round%10 == 9 {
				m.Rehash(m.Len())
				check(t, m, model)
			}
		}
		for k := range model {
			m.Del(k)
		}
		check(t, m, map[key]val{})
		m.Rehash(0)
		assert.Zero(t, m.Mapped(), "an empty table maps nothing")
		m.Put(key{1, 2}, val{s: 3})
		m.Free()
		assert.Zero(t, m.Mapped())
		assert.Nil(t, m.slots, "no slot left that reads the unmapped memory")
		check(t, m, map[key]val{})
	}
}

// A Put that would rebuild the table under All, and a Free there, panic:
// the loop would read a mapping gone.
func TestTableNoRebuildUnderAll(t *testing.T) {
	m := newKeyed()
	for i := uint64(1); i <= 100; i++ {
		m.Put(key{i, i}, val{})
	}
	assert.Panics(t, func() {
		for range m.All() {
			for i := uint64(1000); i < 2000; i++ {
				m.Put(key{i, i}, val{})
			}
		}
	})
	m.iters = 0 // the panic skipped nothing else: the loop's count only
	assert.Panics(t, func() {
		for range m.All() {
			m.Free()
		}
	})
	m.iters = 0
	m.Free()
}

// Keys and values that can hold a pointer, an empty tombstone, and keys
// that mark slots are refused.
func TestTableRefuses(t *testing.T) {
	h := func(k uint64) uint64 { return k }
	assert.Panics(t, func() { NewTable[uint64, *int](h, 1) })
	assert.Panics(t, func() { NewTable[uint64, string](h, 1) })
	assert.Panics(t, func() { NewTable[uint64, struct{ b []byte }](h, 1) })
	assert.Panics(t, func() { NewTable[uint64, [2]uint32](h, 0) })
	m := NewTable[uint64, [2]uint32](h, 1)
	assert.Panics(t, func() { m.Put(0, [2]uint32{}) })
	assert.Panics(t, func() { m.Put(1, [2]uint32{}) })
	assert.Zero(t, m.Mapped())
}

// The table is mapped off the Go heap: 100 000 entries take no live heap,
// and Free gives the mapping back.
func TestTableOffHeap(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes what the heap holds")
	}
	live := func() int64 {
		var s runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&s)
		return int64(s.HeapAlloc)
	}
	m := newKeyed()
	before := live()
	for i := uint64(1); i <= 100000; i++ {
		m.Put(key{i, i * 0x9e3779b97f4a7c15}, val{s: i})
	}
	assert.Less(t, live()-before, int64(4096), "the entries are on the Go heap")
	assert.LessOrEqual(t, m.Mapped(), 100000*40*8/3, "more than 8/3 slots an entry")
	m.Free()
	assert.Zero(t, m.Mapped())
	runtime.KeepAlive(m)
}

// A Slice keeps its elements through Grow, maps what it is told, and
// refuses elements that can hold a pointer.
func TestSlice(t *testing.T) {
	assert.Panics(t, func() { NewSlice[string]() })
	s := NewSlice[val]()
	assert.Zero(t, s.Mapped())
	for i := range 1000 {
		if len(s.S) == cap(s.S) {
			s.Grow(max(16, 2*cap(s.S)))
		}
		s.S = append(s.S, val{s: uint64(i)})
	}
	require.Len(t, s.S, 1000)
	for i, v := range s.S {
		require.Equal(t, uint64(i), v.s)
	}
	assert.Equal(t, 1024*24, s.Mapped()) // val: 24 bytes
	s.Grow(0)                            // to fit
	assert.Equal(t, 1000*24, s.Mapped())
	assert.Equal(t, uint64(999), s.S[999].s)
	s.Free()
	assert.Zero(t, s.Mapped())
	assert.Nil(t, s.S)
}
