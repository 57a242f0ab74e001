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

// Issue 12: what the worker remembers of a client ID (current, seen,
// quiet) costs at most 210 bytes, while it is connected and once it has
// left alike (a map keeps its table when entries go), whatever its length:
// no string is kept but the client ID of a connection still open, which
// the broker's side holds anyway. Before: 249 bytes connected (the
// connection's ID string, built on the broker thread, not counted) and 305
// once it left (that ID string in seen, and the client ID and principal
// strings seen and quiet kept alive after the connection ended).
func TestTrackerBytesPerClientID(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes what the heap holds")
	}
	const n = 20000
	clk := newClock()
	tr := New(testOptions(), Deps{Store: &nullStore{}, Now: clk.now})
	ctx := context.Background()
	run := func(evs []event) {
		for i := 0; i < len(evs); i += batchMax {
			require.NoError(t, tr.handle(ctx, evs[i:min(i+batchMax, len(evs))]))
		}
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
	connected := float64(liveHeap()-before) / n
	require.Len(t, tr.current, n)
	require.Len(t, tr.seen, n)
	require.Len(t, tr.quiet, n)
	runtime.KeepAlive(connects)
	// Once the connections ended, the broker side forgets them: what is
	// left is the tracker's.
	clk.advance(time.Second)
	run(disconnects)
	require.Empty(t, tr.current)
	connects, disconnects = nil, nil
	left := float64(liveHeap()-empty) / n
	t.Logf("%.0f bytes per client ID connected, %.0f once it left", connected, left)
	assert.LessOrEqual(t, connected, 210.0)
	assert.LessOrEqual(t, left, 210.0)

	// quietFor later the sweep forgets the quiet marks, and their memory.
	clk.advance(quietFor)
	tr.sweepQuiet(clk.now().UnixMilli())
	swept := float64(liveHeap()-empty) / n
	t.Logf("%.0f bytes per client ID after the quiet marks' sweep", swept)
	assert.Empty(t, tr.quiet)
	assert.LessOrEqual(t, swept, left-40, "the sweep gave back the quiet marks' memory")
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
