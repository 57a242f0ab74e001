package conflicts

import (
	"math/rand/v2"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// checkTable requires m to hold exactly model, each entry found by get and
// yielded once by all, and its counts in step with its slots.
func checkTable(t *testing.T, m *memoTable, model map[memoKey]packedMemo) {
	t.Helper()
	require.Equal(t, len(model), m.len())
	for k, v := range model {
		got, ok := m.get(k)
		require.True(t, ok, "key %v lost", k)
		require.Equal(t, v, got)
	}
	seen := map[memoKey]bool{}
	for k, v := range m.all() {
		require.False(t, seen[k], "key %v yielded twice", k)
		seen[k] = true
		require.Equal(t, model[k], v)
	}
	require.Len(t, seen, len(model))
	live, used := 0, 0
	for _, s := range m.slots {
		if s.key != (memoKey{}) {
			used++
			if s.key != tombstone {
				live++
			}
		}
	}
	require.Equal(t, m.live, live)
	require.Equal(t, m.used, used)
	if len(m.slots) > 0 {
		require.LessOrEqual(t, used*4, len(m.slots)*3, "over 3/4 of the slots used")
		require.Equal(t, len(m.slots)*memoSlotBytes, m.mapped())
	}
}

// The memos' table against a Go map: random puts, updates and deletes,
// over few probe starts (long runs of neighbours, wrapping at the end of
// the slots, tombstones between them) and over many (growth), deletes and
// updates during all as the sweep does them, rebuilds as shrink does
// them; it ends unmapped.
func TestMemoTableModel(t *testing.T) {
	for _, starts := range []uint64{3, 1 << 62} {
		rng := rand.New(rand.NewPCG(1, starts))
		var m memoTable
		model := map[memoKey]packedMemo{}
		key := func() memoKey {
			// b picks the probe start (the last slots: runs wrap); a tells keys of the same b apart
			return memoKey{a: uint64(rng.IntN(2000))<<1 | 1, b: ^uint64(0) - rng.Uint64N(starts)}
		}
		for round := 0; round < 40; round++ {
			for i := 0; i < 500; i++ {
				k := key()
				if rng.IntN(3) == 0 {
					m.del(k)
					delete(model, k)
					continue
				}
				v := packedMemo{s: rng.Uint64(), tag: rng.Uint64(), seenAt: stamp(i)}
				m.put(k, v)
				model[k] = v
			}
			checkTable(t, &m, model)
			for k, v := range m.all() { // the sweep's loop
				switch rng.IntN(3) {
				case 0:
					m.del(k)
					delete(model, k)
				case 1:
					v.quietAt = 7
					m.put(k, v)
					model[k] = v
				}
			}
			checkTable(t, &m, model)
			if round%10 == 9 {
				m.rehash(m.len())
				checkTable(t, &m, model)
			}
		}
		for k := range model {
			m.del(k)
		}
		checkTable(t, &m, map[memoKey]packedMemo{})
		m.rehash(0)
		assert.Zero(t, m.mapped(), "an empty table maps nothing")
		m.put(memoKey{1, 2}, packedMemo{s: 3})
		m.free()
		assert.Zero(t, m.mapped())
		assert.Nil(t, m.slots, "no slot left that reads the unmapped memory")
		checkTable(t, &m, map[memoKey]packedMemo{})
	}
}

// The table is mapped off the Go heap: 100 000 entries take no live heap,
// and free gives the mapping back.
func TestMemoTableOffHeap(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes what the heap holds")
	}
	var m memoTable
	before := liveHeap()
	for i := uint64(1); i <= 100000; i++ {
		m.put(memoKey{i<<1 | 1, i * 0x9e3779b97f4a7c15}, packedMemo{s: i})
	}
	assert.Less(t, liveHeap()-before, int64(4096), "the entries are on the Go heap")
	assert.LessOrEqual(t, m.mapped(), 100000*memoSlotBytes*8/3, "more than 8/3 slots an entry")
	m.free()
	assert.Zero(t, m.mapped())
	runtime.KeepAlive(&m)
}

// A key whose a is 0 would be one of the table's marks: Tracker.memo never
// makes one, and put refuses it.
func TestMemoKeyNeverMark(t *testing.T) {
	tr := New(testOptions(), Deps{Store: &nullStore{}})
	for i := 0; i < 1000; i++ {
		k := tr.memo(string(rune('a'+i%26))+string(rune(i)), "p")
		require.NotZero(t, k.a&1)
	}
	var m memoTable
	assert.Panics(t, func() { m.put(memoKey{0, 5}, packedMemo{}) })
	assert.Zero(t, m.mapped())
}

// The worker unmaps the memos when it returns (the plugin's cleanup stops
// it): nothing of them is left mapped once Run is over.
func TestRunUnmapsMemos(t *testing.T) {
	mem := newMemStore()
	tr := New(testOptions(), Deps{Store: mem})
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { tr.Run(stop); close(done) }()
	for i := range 100 {
		tr.Connected("dev-"+strconv.Itoa(i), tr.NewConn("alice", "192.0.2.1", time.Now()), nil)
	}
	require.Eventually(t, func() bool {
		mem.mu.Lock()
		defer mem.mu.Unlock()
		return mem.writes >= 100
	}, 5*time.Second, 10*time.Millisecond)
	close(stop)
	<-done
	assert.Positive(t, tr.peak, "the worker kept memos")
	assert.Zero(t, tr.ids.mapped(), "the memos are still mapped")
	assert.Nil(t, tr.ids.slots)
}
