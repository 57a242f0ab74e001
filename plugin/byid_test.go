package plugin

import (
	"math/rand/v2"
	"runtime"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// g.byID against a Go map: random sets (new client IDs, and a newer record
// of one there), deletes and lookups, through growth, runs of neighbours
// wrapping at the table's end, deletions that move entries back, and
// shrinking once emptied.
func TestIDIndexModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	x := newIDIndex()
	model := map[string]*liveConn{}
	check := func() {
		t.Helper()
		require.Equal(t, len(model), x.len())
		for id, lc := range model {
			require.Same(t, lc, x.get(id), "client ID %q", id)
		}
		n := 0
		for id, lc := range x.all() {
			require.Same(t, model[id], lc)
			n++
		}
		require.Equal(t, len(model), n)
		if len(x.slots) > 0 {
			require.LessOrEqual(t, x.live*4, len(x.slots)*3)
		}
	}
	for round := 0; round < 30; round++ {
		ids := 50 + round*200 // the table grows, then shrinks below
		if round >= 20 {
			ids = 40
		}
		for i := 0; i < 2000; i++ {
			id := "dev-" + strconv.Itoa(rng.IntN(ids))
			switch rng.IntN(4) {
			case 0:
				x.del(id)
				delete(model, id)
			case 1:
				require.Same(t, model[id], x.get(id))
			default:
				lc := &liveConn{clientID: id}
				x.set(lc)
				model[id] = lc
			}
		}
		check()
		if round >= 20 { // the fleet gone: what is left of it goes too
			for id := range model {
				if rng.IntN(2) == 0 {
					x.del(id)
					delete(model, id)
				}
			}
			check()
		}
	}
	assert.LessOrEqual(t, len(x.slots), 128, "the table shrank with its entries")
	for id := range model {
		x.del(id)
		delete(model, id)
	}
	check()
	assert.Len(t, x.slots, idIndexMin, "an empty index keeps its smallest table")
	assert.Nil(t, x.get("dev-1"))
}

// Issue 12: a client ID's entry costs at most 24 bytes of heap (16.4 at
// 8 000, the table just grown), where a Go map's took about 58.
func TestIDIndexBytes(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes what the heap holds")
	}
	const n = 8000
	recs := make([]*liveConn, n)
	for i := range recs {
		recs[i] = &liveConn{clientID: "held-" + strconv.Itoa(i)}
	}
	x := newIDIndex()
	before := liveHeap()
	for _, lc := range recs {
		x.set(lc)
	}
	per := float64(liveHeap()-before) / n
	t.Logf("%.1f bytes per entry", per)
	assert.LessOrEqual(t, per, 24.0)
	require.Equal(t, n, x.len())
	runtime.KeepAlive(recs)
	runtime.KeepAlive(&x)
}
