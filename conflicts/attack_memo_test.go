package conflicts

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// What Redis must say after every batch, whatever the memos spared: no
// connection of this broker that ended is listed live, and a principal's
// seen record that names a connection of this broker that ended carries
// its end (DisconnectedMs), from which the conflict window is reckoned.
// The memos may only spare commands that change neither. checkRedis
// returns the first breach.
func checkRedis(mem *memStore, instance string, ended map[string]bool) string {
	mem.mu.Lock()
	defer mem.mu.Unlock()
	for id, st := range mem.states {
		for _, c := range st.Live {
			if c.Instance == instance && ended[c.ID] {
				return fmt.Sprintf("client ID %s: ended connection %s still live", id, c.ID)
			}
		}
		for _, c := range st.Seen {
			if c.Instance == instance && ended[c.ID] && c.DisconnectedMs == 0 {
				return fmt.Sprintf("client ID %s: principal %s's seen record names ended connection %s without its end", id, c.Principal, c.ID)
			}
		}
	}
	return ""
}

// attackRun drives a tracker with random batches as Mosquitto makes them
// (a client ID open at most once on this broker: a new connect takes the
// open one over, whose disconnect follows, in the same batch or a later
// one), with the clock moving by milliseconds, by seconds, across the
// seconds stamps' boundaries, and back, sweeps between batches, and a peer
// broker; it returns the first breach of checkRedis.
func attackRun(t *testing.T, seed uint64, deny bool, steps []time.Duration) string {
	rng := rand.New(rand.NewPCG(seed, 7))
	mem := newMemStore()
	opts := testOptions()
	opts.Deny, opts.Window = deny, 2*time.Hour
	clk := newClock()
	clk.advance(time.Duration(rng.IntN(1000)) * time.Millisecond)
	tr := New(opts, Deps{Store: mem, Now: clk.now})
	peer := New(opts, Deps{Store: mem, Now: clk.now})
	tr.live.Store(&map[string]bool{tr.instance: true, peer.instance: true})
	ids, principals := attackIDs, attackPrincipals
	open := map[string]*Conn{} // client ID: its open connection here
	var pending []event        // disconnects of taken-over connections, not yet sent
	ended := map[string]bool{}
	ctx := context.Background()
	for round := 0; round < 60; round++ {
		clk.advance(steps[rng.IntN(len(steps))])
		now := clk.now().UnixMilli()
		if rng.IntN(4) == 0 {
			sweepMemos(tr, now)
		}
		if rng.IntN(5) == 0 {
			id := ids[rng.IntN(len(ids))]
			pc := peer.NewConn(principals[rng.IntN(len(principals))], "198.51.100.1", clk.now())
			evs := []event{{kind: evConnect, clientID: id, conn: pc}, {kind: evDisconnect, clientID: id, conn: pc}}
			require.NoError(t, peer.handle(ctx, evs[:1+rng.IntN(2)]))
		}
		var batch []event
		var done []Conn
		for k := 1 + rng.IntN(6); k > 0; k-- {
			if len(pending) > 0 && rng.IntN(3) == 0 {
				batch = append(batch, pending[0])
				done = append(done, pending[0].conn)
				pending = pending[1:]
				continue
			}
			id := ids[rng.IntN(len(ids))]
			if o := open[id]; o != nil && rng.IntN(2) == 0 {
				batch = append(batch, event{kind: evDisconnect, clientID: id, conn: *o})
				done = append(done, *o)
				delete(open, id)
				continue
			}
			var c Conn
			if deny {
				p := principals[rng.IntN(len(principals))]
				_, _, err := tr.Claim(id, p, "192.0.2.1", clk.now())
				require.NoError(t, err)
				c = tr.NewConn(p, "192.0.2.1", clk.now()) // the claimed one, as the plugin takes it
			} else {
				c = tr.NewConn(principals[rng.IntN(len(principals))], "192.0.2.1", clk.now())
			}
			ev := event{kind: evConnect, clientID: id, conn: c, other: open[id]}
			batch = append(batch, ev)
			if o := open[id]; o != nil { // taken over: Mosquitto ends it
				d := event{kind: evDisconnect, clientID: id, conn: *o}
				if rng.IntN(2) == 0 {
					batch = append(batch, d)
					done = append(done, *o)
				} else {
					pending = append(pending, d)
				}
			}
			cc := c
			open[id] = &cc
		}
		if attackDebug {
			t.Logf("round %d now %d: %v", round, now, batch)
		}
		require.NoError(t, tr.handle(ctx, batch))
		for _, c := range done {
			ended[tr.StoreConn(c).ID] = true
		}
		if breach := checkRedis(mem, tr.instance, ended); breach != "" {
			return fmt.Sprintf("seed %d deny %v round %d: %s", seed, deny, round, breach)
		}
	}
	return ""
}

// The client IDs and principals of attackRun.
var (
	attackIDs        = []string{"d0", "d1", "d2"}
	attackPrincipals = []string{"alice", "bob"}
)

// Sub-second clock steps, steps across quietFor and seenRefresh by a few
// milliseconds, and the clock stepped back: Redis stays right.
func TestAttackMemoRedisStaysRight(t *testing.T) {
	ms := time.Millisecond
	steps := []time.Duration{0, 1 * ms, 400 * ms, 999 * ms, time.Second, quietFor - ms, quietFor + ms,
		seenRefresh - 400*ms, seenRefresh - ms, seenRefresh + ms, 29*time.Second + 700*ms, -2 * time.Second, -40 * time.Second, time.Hour}
	var bad []string
	for _, deny := range []bool{false, true} {
		for seed := uint64(1); seed <= 400; seed++ {
			if b := attackRun(t, seed, deny, steps); b != "" {
				bad = append(bad, b)
			}
		}
	}
	if len(bad) > 0 {
		t.Fatalf("%d runs of 800 left Redis wrong; first: %s", len(bad), bad[0])
	}
}

// A connection's disconnect records its end (Left) in its principal's seen
// record whatever the clock says: a clock in 1970's first second, or
// before 1970 (a host without a real-time clock, or one set wrong), is
// still a time. 7c46b08's seen marks kept the unix ms as they came; the
// seconds stamps take a time before 1970-01-01T00:00:01 for "no mark"
// (stamp 0), so the connection that recorded its principal's use is not
// remembered as its recorder and its end is never written: the record is
// left without DisconnectedMs, and the conflict window is reckoned from
// its start.
func TestAttackMemoEarlyClockEndRecorded(t *testing.T) {
	for _, at := range []time.Time{time.UnixMilli(500), time.UnixMilli(-86_400_000)} {
		mem := newMemStore()
		clk := &clock{t: at}
		tr := New(testOptions(), Deps{Store: mem, Now: clk.now})
		ctx := context.Background()
		c := tr.NewConn("alice", "192.0.2.1", clk.now())
		require.NoError(t, tr.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: c}}))
		clk.advance(200 * time.Millisecond)
		require.NoError(t, tr.handle(ctx, []event{{kind: evDisconnect, clientID: "dev", conn: c}}))
		ended := map[string]bool{tr.StoreConn(c).ID: true}
		require.Empty(t, checkRedis(mem, tr.instance, ended), "clock at %v", at.UTC())
	}
}

// A flood that fills the event queue drops the disconnects of connections
// whose connects were queued: those connections stay listed in the memos
// (never swept, never pruned: "entries of listed connections are bounded
// by the connections", seenMemoMax) and live in Redis (a ghost holding the
// client ID, which clientid_conflict deny refuses to every other principal
// on every other broker) for as long as this broker runs. Nothing
// reconciles them: each flood adds a queue's worth, without bound. The
// same on 7c46b08 (its current map, keyed by the client ID string).
func TestAttackMemoDroppedDisconnectsLeak(t *testing.T) {
	mem := newMemStore()
	clk := newClock()
	tr := New(testOptions(), Deps{Store: mem, Now: clk.now})
	ctx := context.Background()
	conns := make([]Conn, queueSize)
	for i := range conns {
		conns[i] = tr.NewConn("alice", "192.0.2.1", clk.now())
		tr.Connected(fmt.Sprintf("flood-%d", i), conns[i], nil)
	}
	ended := map[string]bool{}
	for i, c := range conns {
		tr.Disconnected(fmt.Sprintf("flood-%d", i), c) // the queue is full: spilled (dropped before)
		ended[tr.StoreConn(c).ID] = true
	}
	require.Zero(t, tr.dropped.Load(), "no disconnect of a queued connect is lost")
	for b := tr.events.Take(); len(b) > 0; b = tr.events.Take() {
		require.NoError(t, tr.handle(ctx, b))
	}
	tr.drainSpill() // as Run does once the queue is drained
	clk.advance(time.Hour)
	sweepMemos(tr, clk.now().UnixMilli())
	assert.Zero(t, memoEntries(tr), "memo entries of connections that ended, with none open")
	assert.Empty(t, checkRedis(mem, tr.instance, ended))
}

// A device whose connection ends within seenRefresh of its recorded use
// and which reconnects then (a blip at start-up, a takeover war) is not
// recorded again: its seen mark is fresh. The new connection then stays,
// longer than conflict_window, and leaves: its end is never written (it
// is not the mark's recorder), so Redis keeps the first connection's end
// as the principal's last use, and another principal taking the client ID
// a second after the device left is not flagged: the window is reckoned
// from an end hours old. The same on 7c46b08 (its seen map); not the memo
// table's doing.
func TestAttackMemoQuickReconnectEndLost(t *testing.T) {
	mem := newMemStore()
	clk := newClock()
	opts := testOptions()
	opts.Window = time.Hour
	tr := New(opts, Deps{Store: mem, Now: clk.now})
	tr.live.Store(&map[string]bool{tr.instance: true})
	ctx := context.Background()
	step := func(d time.Duration, ev event) {
		clk.advance(d)
		require.NoError(t, tr.handle(ctx, []event{ev}))
	}
	a := tr.NewConn("alice", "192.0.2.1", clk.now())
	step(0, event{kind: evConnect, clientID: "dev", conn: a})
	step(5*time.Second, event{kind: evDisconnect, clientID: "dev", conn: a})
	b := tr.NewConn("alice", "192.0.2.1", clk.now().Add(5*time.Second))
	step(5*time.Second, event{kind: evConnect, clientID: "dev", conn: b})
	step(2*time.Hour, event{kind: evDisconnect, clientID: "dev", conn: b})
	left := clk.now().UnixMilli()
	mem.mu.Lock()
	var rec store.Conn
	for _, c := range mem.states["dev"].Seen {
		if c.Principal == "alice" {
			rec = c
		}
	}
	mem.mu.Unlock()
	assert.Equal(t, left, rec.DisconnectedMs, "alice's last use in Redis is her first connection's end, 2 h before her last")
	c := tr.NewConn("bob", "198.51.100.7", clk.now().Add(time.Second))
	step(time.Second, event{kind: evConnect, clientID: "dev", conn: c})
	mem.mu.Lock()
	defer mem.mu.Unlock()
	assert.Len(t, mem.findings, 1, "bob took the client ID a second after alice left: not flagged")
}

// A flood of new client IDs past seenMemoMax (one principal's, connecting
// and leaving) drops the entries of unlisted client IDs only: held
// connections, one of them taken over within seenRefresh (its end owed in
// owed), keep what their disconnects need, and their ends are recorded.
// 7c46b08 dropped its whole seen map at seenMemoMax, and with it the ends
// owed to held connections (this test fails there).
func TestAttackMemoFloodKeepsHeldEnds(t *testing.T) {
	mem := newMemStore()
	clk := newClock()
	tr := New(testOptions(), Deps{Store: mem, Now: clk.now})
	ctx := context.Background()
	a := tr.NewConn("alice", "192.0.2.1", clk.now())
	b1 := tr.NewConn("alice", "192.0.2.2", clk.now())
	require.NoError(t, tr.handle(ctx, []event{{kind: evConnect, clientID: "dev-a", conn: a}, {kind: evConnect, clientID: "dev-b", conn: b1}}))
	clk.advance(time.Second)
	b2 := tr.NewConn("alice", "192.0.2.2", clk.now())
	require.NoError(t, tr.handle(ctx, []event{{kind: evConnect, clientID: "dev-b", conn: b2, other: &b1}}))
	var batch []event
	for i := 0; i < seenMemoMax+10_000; i++ {
		id := fmt.Sprintf("flood-%d", i)
		c := tr.NewConn("mallory", "203.0.113.1", clk.now())
		batch = append(batch, event{kind: evConnect, clientID: id, conn: c}, event{kind: evDisconnect, clientID: id, conn: c})
		if len(batch) >= batchMax {
			require.NoError(t, tr.handle(ctx, batch))
			batch = batch[:0]
		}
	}
	require.NoError(t, tr.handle(ctx, batch))
	clk.advance(time.Second)
	require.NoError(t, tr.handle(ctx, []event{{kind: evDisconnect, clientID: "dev-b", conn: b1}}))
	clk.advance(time.Minute)
	require.NoError(t, tr.handle(ctx, []event{{kind: evDisconnect, clientID: "dev-a", conn: a}, {kind: evDisconnect, clientID: "dev-b", conn: b2}}))
	ended := map[string]bool{}
	for _, c := range []Conn{a, b1, b2} {
		ended[tr.StoreConn(c).ID] = true
	}
	assert.Empty(t, checkRedis(mem, tr.instance, ended)) // the held ones only: the flood's are not asked about
}
