package conflicts

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// nullStore takes every write and reads back nothing: each client ID is
// read quiet, so the worker remembers all it can of it.
type nullStore struct{ memStore }

func (*nullStore) WriteConns(_ context.Context, ws []store.ConnWrite, _ time.Duration) ([]store.State, error) {
	return make([]store.State, len(ws)), nil
}

// liveHeap is the heap in use after a full collection.
func liveHeap() int64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// isQuiet reports whether clientID read back quiet less than quietFor ago
// for principal: whether its next connect skips its read (writes).
func (t *Tracker) isQuiet(clientID, principal string, now int64) bool {
	e, ok := t.lookMemo(t.idKey(clientID))
	return ok && e.who == t.whoTag(principal) && e.quietLive(now)
}

// quietMarks counts the quiet marks the worker keeps.
func (t *Tracker) quietMarks() int {
	n := 0
	for _, e := range t.ids.All() {
		if e.quietAt != 0 {
			n++
		}
	}
	return n
}

// Issue 12: what the worker remembers of a client ID (one entry: the
// connection listed live, its principal's seen mark and its quiet mark)
// takes no Go heap (at most 4 bytes a client ID: the memos are mapped off
// it, offheap.Table) and at most 110 bytes of mapping while it is connected
// (82 at 8 000, 66 at 20 000), whatever its length; no string is kept.
// Before, in a Go map: 98 bytes of live heap at 8 000 and 79 at 20 000,
// which the collector's headroom doubles in RSS at GOGC 100; in three maps
// (current, seen, quiet) before that: 235 bytes at 8 000 and 188 at
// 20 000. Once the client IDs have left and seenRefresh has passed, the
// sweep forgets them and unmaps their memory.
func TestTrackerBytesPerClientID(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes what the heap holds")
	}
	for _, n := range []int{8000, 20000} {
		t.Run(strconv.Itoa(n), func(t *testing.T) { trackerBytes(t, n) })
	}
}

func trackerBytes(t *testing.T, n int) {
	clk := newClock()
	tr := New(testOptions(), Deps{Store: &nullStore{}, Now: clk.now})
	ctx := context.Background()
	run := func(evs []event) {
		for i := 0; i < len(evs); i += batchMax {
			require.NoError(t, tr.handle(ctx, evs[i:min(i+batchMax, len(evs))]))
		}
		tr.trimScratch() // as Run does once idle: the batches' arrays are not the client IDs'
	}
	empty := liveHeap()
	// The broker side's: client IDs, principals and connections, built
	// first, each string of its own, as the broker's are.
	connects, disconnects := make([]event, n), make([]event, n)
	for i := range connects {
		id := fmt.Sprintf("device-%08d", i)
		c := tr.NewConn(fmt.Sprintf("user-%08d", i), "192.0.2.7", clk.now())
		connects[i] = event{kind: evConnect, clientID: id, conn: c}
		disconnects[i] = event{kind: evDisconnect, clientID: id, conn: c}
	}
	before := liveHeap()
	run(connects)
	connected := float64(liveHeap()-before) / float64(n)
	require.Equal(t, n, tr.ids.Len())
	require.Equal(t, n, tr.listed)
	require.Equal(t, n, tr.quietMarks())
	require.Empty(t, tr.others)
	require.Empty(t, tr.owed)
	runtime.KeepAlive(connects)
	mapped := float64(tr.ids.Mapped()) / float64(n)
	t.Logf("%d client IDs: %.0f bytes of heap and %.0f mapped per client ID connected", n, connected, mapped)
	assert.LessOrEqual(t, connected, 4.0)
	assert.LessOrEqual(t, mapped, 110.0)

	// Once the connections ended, the broker side forgets them: what is
	// left is the tracker's, until the sweep finds its marks past counting.
	clk.advance(time.Second)
	run(disconnects)
	require.Zero(t, tr.listed)
	connects, disconnects = nil, nil
	left := float64(liveHeap()-empty) / float64(n)
	t.Logf("%.0f bytes of heap per client ID once it left", left)
	assert.LessOrEqual(t, left, 4.0)
	assert.LessOrEqual(t, float64(tr.ids.Mapped())/float64(n), 110.0)
	tr.sweep(clk.now().UnixMilli())
	require.Equal(t, n, tr.ids.Len(), "its seen marks count for seenRefresh")
	clk.advance(seenRefresh)
	tr.sweep(clk.now().UnixMilli())
	swept := float64(liveHeap()-empty) / float64(n)
	t.Logf("%.0f bytes of heap per client ID after the sweep", swept)
	assert.Zero(t, tr.ids.Len())
	assert.LessOrEqual(t, swept, 4.0)
	assert.Zero(t, tr.ids.Mapped(), "the sweep gave back the entries' memory")
	runtime.KeepAlive(tr)
}

// The worker builds the IDs Redis records (instance-seq, as StoreConn
// builds one) for a whole batch in one string: each ID is cut from it at
// its own length, whatever the number of digits, and the batch's
// connections cost two allocations (their array and the IDs).
func TestStoreConnsIDs(t *testing.T) {
	tr, clk, _ := tracker(t, newMemStore(), testOptions())
	var batch []event
	for _, seq := range []uint64{1, 10, 9, 99, 100, 18446744073709551615, 7} {
		c := tr.NewConn("alice", "192.0.2.1", clk.now())
		c.Seq = seq
		batch = append(batch, event{kind: evConnect, clientID: "dev", conn: c})
	}
	conns := tr.storeConns(batch)
	require.Len(t, conns, len(batch))
	for i, ev := range batch {
		assert.Equal(t, tr.StoreConn(ev.conn), conns[i])
		assert.Equal(t, tr.instance+"-"+strconv.FormatUint(ev.conn.Seq, 10), conns[i].ID)
	}
	if !raceEnabled {
		assert.Equal(t, 2.0, testing.AllocsPerRun(100, func() { tr.storeConns(batch) }))
	}
}

// Issue 12: the memos stay bounded under a flood of new client IDs, each
// connecting and leaving: at most seenMemoMax entries of client IDs with
// nothing listed here, whatever the flood; a client ID still connected
// keeps its entry through it (its disconnect still unlists it and records
// its end), and once the flood's marks stop counting the sweep forgets
// them and gives their memory back (the map built again).
func TestMemosBoundedUnderFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("a flood of 200 000 client IDs")
	}
	clk := newClock()
	tr := New(testOptions(), Deps{Store: &nullStore{}, Now: clk.now})
	ctx := context.Background()
	held := tr.NewConn("alice", "192.0.2.1", clk.now())
	require.NoError(t, tr.handle(ctx, []event{{kind: evConnect, clientID: "held", conn: held}}))
	const flood = seenMemoMax + 5000
	most := 0
	for i := 0; i < flood; i += batchMax / 2 {
		var batch []event
		for j := i; j < min(i+batchMax/2, flood); j++ {
			id := "flood-" + strconv.Itoa(j)
			c := tr.NewConn("mallory", "203.0.113.9", clk.now())
			batch = append(batch, event{kind: evConnect, clientID: id, conn: c}, event{kind: evDisconnect, clientID: id, conn: c})
		}
		require.NoError(t, tr.handle(ctx, batch))
		require.LessOrEqual(t, tr.ids.Len()-tr.listed, seenMemoMax)
		most = max(most, tr.ids.Len())
	}
	assert.Greater(t, most, seenMemoMax/2, "the flood filled the memos")
	assert.Equal(t, 1, tr.listed)
	e, ok := tr.lookMemo(tr.idKey("held"))
	require.True(t, ok, "the held client ID's entry outlived the flood")
	assert.Equal(t, held.Seq, e.cur)

	clk.advance(seenRefresh)
	tr.sweep(clk.now().UnixMilli())
	assert.Equal(t, 1, tr.ids.Len(), "the flood's entries forgotten")
	assert.Less(t, tr.peak, memoShrinkMin, "the map built again")
	// The held connection's disconnect unlists it and records its end.
	ws, _ := tr.writes([]event{{kind: evDisconnect, clientID: "held", conn: held}}, tr.storeConns([]event{{kind: evDisconnect, clientID: "held", conn: held}}), clk.now().UnixMilli())
	require.Len(t, ws, 1)
	assert.True(t, ws[0].Unlist)
	assert.NotNil(t, ws[0].Left, "its end recorded")
	assert.Zero(t, tr.listed)
}
