package conflicts

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Events for one client ID within one batch see each other, in order.
func TestBatchSeesEarlierEvents(t *testing.T) {
	mem := newMemStore()
	c, clk, _ := tracker(t, mem, testOptions())
	alice := c.NewConn("alice", "192.0.2.1", clk.now())
	bob := c.NewConn("bob", "192.0.2.2", clk.now())
	require.NoError(t, c.handle(context.Background(), []event{
		{kind: evConnect, clientID: "dev", conn: alice},
		{kind: evDisconnect, clientID: "dev", conn: alice},
		{kind: evConnect, clientID: "dev", conn: bob},
		{kind: evConnect, clientID: "other", conn: c.NewConn("carol", "192.0.2.3", clk.now())},
	}))
	require.Len(t, mem.findings, 1)
	assert.Equal(t, []string{"alice", "bob"}, mem.findings[0].Principals)
	assert.NotZero(t, mem.findings[0].DisplacedDisconnectedMs, "alice's disconnect, from earlier in the batch")
	st := mem.states["dev"]
	require.Len(t, st.Live, 1)
	assert.Equal(t, c.StoreConn(bob).ID, st.Live[0].ID)
}

// Two brokers' workers recording the same client IDs for two principals at
// the same moment: each connect's read comes from the step that records it,
// so for every client ID one of the two sees the other, however the
// batches interleave.
func TestBatchesOfTwoBrokersSeeEachOther(t *testing.T) {
	mem := newMemStore()
	var ws []*Tracker
	for i := 0; i < 2; i++ {
		w, _, _ := tracker(t, mem, testOptions())
		ws = append(ws, w)
	}
	const n = 200
	var wg sync.WaitGroup
	for side, w := range ws {
		wg.Add(1)
		go func(side int, w *Tracker) {
			defer wg.Done()
			p := []string{"alice", "bob"}[side]
			for i := 0; i < n; i++ { // one event per batch, as under light load
				ev := event{kind: evConnect, clientID: "dev-" + strconv.Itoa(i), conn: w.NewConn(p, "192.0.2.1", w.now())}
				assert.NoError(t, w.handle(context.Background(), []event{ev}))
			}
		}(side, w)
	}
	wg.Wait()
	flagged := map[string]bool{}
	for _, f := range mem.findings {
		assert.Equal(t, []string{"alice", "bob"}, f.Principals)
		flagged[f.ClientID] = true
	}
	assert.Len(t, flagged, n)
}

// A client ID read back quiet is not read again on its next connect, but a
// local takeover is still counted.
func TestQuietTakeoverCounted(t *testing.T) {
	mem := newMemStore()
	c, clk, _ := tracker(t, mem, testOptions())
	x1 := c.NewConn("alice", "192.0.2.1", clk.now())
	require.NoError(t, c.handle(context.Background(), []event{{kind: evConnect, clientID: "dev", conn: x1}}))
	x2 := c.NewConn("alice", "192.0.2.2", clk.now())
	require.True(t, c.isQuiet("dev", x2.Principal, clk.now().UnixMilli()))
	require.NoError(t, c.handle(context.Background(), []event{{kind: evConnect, clientID: "dev", conn: x2, other: &x1}}))
	assert.EqualValues(t, 1, mem.takeover["dev"])
}

// A quiet client ID is read again once quietFor has passed, and a read that
// shows another principal ends its quiet at once.
func TestQuietExpires(t *testing.T) {
	mem := newMemStore()
	c, clk, _ := tracker(t, mem, testOptions())
	ctx := context.Background()
	x := c.NewConn("alice", "192.0.2.1", clk.now())
	require.NoError(t, c.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: x}}))
	assert.True(t, c.isQuiet("dev", "alice", clk.now().UnixMilli()))
	assert.False(t, c.isQuiet("dev", "bob", clk.now().UnixMilli()), "quiet for its principal only")
	clk.advance(quietFor)
	assert.False(t, c.isQuiet("dev", "alice", clk.now().UnixMilli()))

	y := c.NewConn("bob", "192.0.2.2", clk.now())
	require.NoError(t, c.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: y}}))
	require.Len(t, mem.findings, 1, "bob's read sees alice")
	z := c.NewConn("alice", "192.0.2.1", clk.now())
	require.NoError(t, c.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: z}}))
	assert.False(t, c.isQuiet("dev", z.Principal, clk.now().UnixMilli()), "two principals: never quiet")
}

// A device reconnecting in a loop, its client ID read quiet and its use
// recorded fresh, costs Redis nothing: each connection that starts and ends
// within a batch is folded away (make bench: tracking took (b) from 1.01 to
// 0.58 of a0 when every reconnect ran two scripts and two set commands).
// A connection still open at the batch's end is written, and a takeover
// between two folded connections is still counted.
func TestQuietReconnectsFolded(t *testing.T) {
	mem := newMemStore()
	c, clk, _ := tracker(t, mem, testOptions())
	ctx := context.Background()
	first := c.NewConn("alice", "192.0.2.1", clk.now())
	require.NoError(t, c.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: first}, {kind: evDisconnect, clientID: "dev", conn: first}}))
	before := mem.writes
	var batch []event
	var last Conn
	for i := 0; i < 50; i++ {
		last = c.NewConn("alice", "192.0.2.1", clk.now())
		batch = append(batch, event{kind: evConnect, clientID: "dev", conn: last})
		if i < 49 {
			batch = append(batch, event{kind: evDisconnect, clientID: "dev", conn: last})
		}
	}
	require.NoError(t, c.handle(ctx, batch))
	assert.LessOrEqual(t, mem.writes-before, 1, "49 folded pairs, one connection left open")
	st := mem.states["dev"]
	require.Len(t, st.Live, 1)
	assert.Equal(t, c.StoreConn(last).ID, st.Live[0].ID, "the open connection is recorded live")
	require.NoError(t, c.handle(ctx, []event{{kind: evDisconnect, clientID: "dev", conn: last}}))
	assert.Empty(t, mem.states["dev"].Live, "and cleared at its end")
}

// Under clientid_conflict deny nothing is folded: the claim wrote the live
// entry on the broker thread, and only the disconnect's write clears it.
func TestDenyFoldsNothing(t *testing.T) {
	mem := newMemStore()
	opts := testOptions()
	opts.Deny = true
	c, clk, _ := tracker(t, mem, opts)
	ctx := context.Background()
	first := c.NewConn("alice", "192.0.2.1", clk.now())
	require.NoError(t, c.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: first}, {kind: evDisconnect, clientID: "dev", conn: first}}))
	before := mem.writes
	conn, holder, err := c.Claim("dev", "alice", "192.0.2.1", clk.now())
	require.NoError(t, err)
	require.Nil(t, holder)
	require.Equal(t, conn, c.NewConn("alice", "192.0.2.1", clk.now()), "the claimed connection is the one admitted")
	require.Len(t, mem.live("dev"), 1)
	require.NoError(t, c.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: conn}, {kind: evDisconnect, clientID: "dev", conn: conn}}))
	assert.Equal(t, 2, mem.writes-before, "the pair is written")
	assert.Empty(t, mem.live("dev"), "and the claimed live entry cleared")
}

// A disconnect Redis did not take is kept and written before the next
// batch: a connection that ended must not stay live (under deny it would
// refuse its device on every other broker).
func TestDisconnectRetried(t *testing.T) {
	mem := newMemStore()
	c, clk, ls := tracker(t, mem, testOptions())
	ctx := context.Background()
	x := c.NewConn("alice", "192.0.2.1", clk.now())
	require.NoError(t, c.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: x}}))
	require.Len(t, mem.live("dev"), 1)

	mem.setDown(true)
	c.handleSafely([]event{{kind: evDisconnect, clientID: "dev", conn: x}})
	assert.Contains(t, ls.all(), "client ID tracking: 1 events not recorded: connection refused")
	assert.Len(t, c.retry, 1)
	assert.False(t, c.retry[0].Sole, "a kept disconnect is compare-and-delete: a newer connection may be recorded by its retry")
	c.renew() // Redis still down: kept
	assert.Len(t, c.retry, 1)

	mem.setDown(false)
	require.NoError(t, c.handle(ctx, []event{{kind: evConnect, clientID: "other", conn: c.NewConn("bob", "192.0.2.2", clk.now())}}))
	assert.Empty(t, c.retry)
	assert.Empty(t, mem.live("dev"), "the disconnect landed with the next batch")
}

// A steady load reuses a batch's arrays and maps for the next batch: a
// batch of a fleet reconnecting (connects and disconnects of known client
// IDs) allocates its IDs' one string and little else. Before, it allocated
// its connections, writes, indexes and two maps afresh: about 1 KB of
// garbage per connection on the broker's core.
func TestBatchReusesScratch(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	clk := newClock()
	tr := New(testOptions(), Deps{Store: &nullStore{}, Now: clk.now})
	ctx := context.Background()
	const n = 500
	batch := make([]event, 0, 2*n)
	for i := 0; i < n; i++ {
		c := tr.NewConn("user-"+strconv.Itoa(i), "192.0.2.7", clk.now())
		id := "device-" + strconv.Itoa(i)
		batch = append(batch, event{kind: evConnect, clientID: id, conn: c}, event{kind: evDisconnect, clientID: id, conn: c})
	}
	require.NoError(t, tr.handle(ctx, batch)) // the memos and the scratch made
	allocs := testing.AllocsPerRun(20, func() { require.NoError(t, tr.handle(ctx, batch)) })
	t.Logf("%.1f allocations per batch of %d events", allocs, len(batch))
	assert.LessOrEqual(t, allocs, 4.0, "the IDs' string, and no array or map of the batch's")
	tr.trimScratch()
	assert.Zero(t, cap(tr.sc.conns), "a burst's arrays given back once idle")
}

// A full queue spills the disconnects of connections whose connects it
// took, and the worker handles them once the queue is drained: none stays
// listed (nor live in Redis). The disconnect of a connect the queue
// dropped is dropped with it. Before, a flood dropped the disconnects: a
// queue's worth of connections stayed live for the broker's life.
func TestFullQueueSpillsDisconnects(t *testing.T) {
	mem := newMemStore()
	clk := newClock()
	tr := New(testOptions(), Deps{Store: mem, Now: clk.now})
	ctx := context.Background()
	conns := make([]Conn, queueSize+10)
	for i := range conns {
		conns[i] = tr.NewConn("alice", "192.0.2.1", clk.now())
		tr.Connected(fmt.Sprintf("flood-%d", i), conns[i], nil)
	}
	require.EqualValues(t, 10, tr.dropped.Load(), "10 connects past the queue dropped")
	for i, c := range conns {
		tr.Disconnected(fmt.Sprintf("flood-%d", i), c)
	}
	require.EqualValues(t, 20, tr.dropped.Load(), "and their disconnects with them")
	tr.spill.Lock()
	require.Len(t, tr.spill.evs, queueSize, "the others spilled")
	tr.spill.Unlock()
	for b := tr.events.Take(); len(b) > 0; b = tr.events.Take() {
		require.NoError(t, tr.handle(ctx, b))
	}
	require.Equal(t, queueSize, tr.listed, "the connects handled: listed")
	tr.drainSpill()
	assert.Zero(t, tr.listed, "the spilled disconnects unlisted every one")
	mem.mu.Lock()
	live := 0
	for _, st := range mem.states {
		live += len(st.Live)
	}
	mem.mu.Unlock()
	assert.Zero(t, live, "nothing live in Redis")
}
