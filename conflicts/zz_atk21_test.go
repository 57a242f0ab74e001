package conflicts

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// parentWrites is Tracker.writes as it was at 4d0f9dd, before pairBatch:
// the batch's ends in Go maps (endsOf, endsmodel_test.go: every disconnect
// of the batch by number, wherever it stands, the last one of a number
// winning), the memo probed by lookMemo and putMemo. The reference that
// TestAtk21WritesAsParent holds writes to, on a twin tracker.
func parentWrites(t *Tracker, batch []event, conns []store.Conn, now int64) ([]store.ConnWrite, []int) {
	ws := make([]store.ConnWrite, 0, len(batch))
	at := make([]int, len(batch))
	var ends map[uint64]end
	var folded map[uint64]bool
	for i, ev := range batch {
		switch ev.kind {
		case evConnect:
			conn := &conns[i]
			seq := ev.conn.Seq
			id, who := t.idKey(ev.clientID), t.whoTag(ev.conn.Principal)
			e, _ := t.lookMemo(id)
			w := store.ConnWrite{ClientID: ev.clientID, Tracked: true, Instance: t.instance, Live: conn, Read: !(e.who == who && e.quietLive(now)), Sole: !t.opts.Deny}
			if !t.seenFresh(id, &e, who, seq, now) {
				w.Seen = conn
			}
			listed := e.cur != 0
			t.list(&e, seq)
			t.putMemo(id, e)
			if !t.opts.Deny {
				e, ending := endsOf(batch, &ends)[seq]
				switch {
				case ending && !w.Read && w.Seen == nil:
					if folded == nil {
						folded = map[uint64]bool{}
					}
					folded[seq] = listed
					at[i] = -1
					continue
				case ending && e.alone && !listed:
					t.foldEnded(&w, &conns[e.at], now)
					if folded == nil {
						folded = map[uint64]bool{}
					}
					folded[seq] = false
					at[i] = len(ws)
					ws = append(ws, w)
					continue
				}
			}
			at[i] = len(ws)
			ws = append(ws, w)
		case evDisconnect:
			left := &conns[i]
			left.DisconnectedMs = now
			seq := ev.conn.Seq
			id := t.idKey(ev.clientID)
			e, ok := t.lookMemo(id)
			unlist := e.cur == seq
			if unlist && seq != 0 {
				e.cur = 0
				t.listed--
			}
			ownsSeen := t.endSeen(id, &e, t.whoTag(ev.conn.Principal), seq)
			if ok {
				t.putMemo(id, e)
			}
			if listed, ok := folded[seq]; ok {
				if unlist && listed {
					ws = append(ws, store.ConnWrite{ClientID: ev.clientID, Tracked: true, Instance: t.instance, Unlist: true})
				}
				continue
			}
			w := store.ConnWrite{ClientID: ev.clientID, Tracked: true, Instance: t.instance, Gone: left}
			if unlist {
				w.Unlist = true
				w.Sole = !t.opts.Deny
			}
			if ownsSeen || now-ev.conn.ConnectedMs >= seenRefresh.Milliseconds() {
				w.Left = left
			}
			ws = append(ws, w)
		}
	}
	return ws, at
}

// atk21Gen says which event orders a run makes.
type atk21Gen struct {
	ids        int  // client IDs
	maxBatch   int  // events per batch, at most
	dupDisc    bool // a connection's disconnect queued twice
	discFirst  bool // a connection's disconnect queued before its connect, in one batch (the deferred confirmation's race)
	bigBatches bool // now and then a batch of batchMax, and trimScratch between
	refused    bool // refused events among them
	wrap       bool // the tables' generation wraps mid-run
	seq0       bool // now and then a connection numbered 0 (NewConn makes none; one at a time)
	prefill    int  // unlisted entries in both memos first: seenMemoMax-prefill new client IDs prune them (storeMemo)
}

// memoDump is a tracker's memos, comparable between twins of one seed.
func memoDump(tr *Tracker) (map[memoKey]idMemo, map[pairKey]seenMark, int) {
	m := map[memoKey]idMemo{}
	for id, p := range tr.ids.All() {
		e := tr.unpack(id, p)
		e.curSkipped = false // not kept by the parent (since atk42); readAt's alone
		m[id] = e
	}
	o := map[pairKey]seenMark{}
	for k, v := range tr.others {
		o[k] = v
	}
	return m, o, tr.listed
}

// runAtk21 runs random batches through writes (pairBatch, findMemo and
// storeMemo) and through parentWrites on a twin tracker (same instance,
// same memo seeds, a store of its own), and requires the same writes, the
// same at (what handle evaluates), and the same memos after each batch.
func runAtk21(t *testing.T, g atk21Gen, seeds int) {
	steps := []time.Duration{0, 0, 0, time.Second, 9 * time.Second, quietFor, seenRefresh, seenRefresh + time.Second, time.Hour}
	principals := []string{"alice", "bob", "carol"}
	ctx := context.Background()
	for _, deny := range []bool{false, true} {
		for seed := uint64(1); seed <= uint64(seeds); seed++ {
			rng := rand.New(rand.NewPCG(seed, 21))
			opts := testOptions()
			opts.Deny, opts.Window = deny, 2*time.Hour
			clk := newClock()
			memA, memB := newMemStore(), newMemStore()
			a := New(opts, Deps{Store: memA, Now: clk.now})
			b := New(opts, Deps{Store: memB, Now: clk.now})
			b.instance, b.seeds = a.instance, a.seeds
			if g.prefill > 0 {
				for k := 0; k < seenMemoMax-g.prefill; k++ {
					id := memoKey{rng.Uint64() | 1, rng.Uint64()}
					p := packedMemo{s: uint64(k + 1), tag: a.whoTag("zed") | modeSeen, seenAt: stampOf(clk.now().UnixMilli())}
					a.ids.Put(id, p)
					b.ids.Put(id, p)
				}
				a.peak, b.peak = a.ids.Len(), b.ids.Len()
			}
			alive := map[string]bool{a.instance: true}
			a.live.Store(&alive)
			b.live.Store(&alive)
			type open struct {
				id string
				c  Conn
			}
			var live, ended []open
			pruned := false // prefill: the memos were pruned
			latest := map[string]*Conn{}
			defer func() { require.True(t, g.prefill == 0 || pruned, "no prune") }()
			for round := 0; round < 30; round++ {
				clk.advance(steps[rng.IntN(len(steps))])
				now := clk.now().UnixMilli()
				if rng.IntN(8) == 0 {
					a.sweep(now)
					b.sweep(now)
				}
				if g.bigBatches && rng.IntN(4) == 0 {
					a.trimScratch()
				}
				if g.wrap && round%10 == 5 {
					a.sc.bySeq.gen, a.sc.byID.gen = math.MaxUint32-uint32(rng.IntN(2)), math.MaxUint32-uint32(rng.IntN(2))
				}
				seq0 := false // a connection numbered 0 live or in this batch
				n := 1 + rng.IntN(g.maxBatch)
				if g.bigBatches && rng.IntN(6) == 0 {
					n = batchMax
				}
				var batch []event
				for len(batch) < n {
					r := rng.IntN(10)
					switch {
					case g.refused && r == 9:
						id := fmt.Sprintf("d%d", rng.IntN(g.ids))
						h := store.Conn{ID: "other-1", Instance: "other", Principal: "mallory", IP: "203.0.113.9", ConnectedMs: now}
						batch = append(batch, event{kind: evRefused, clientID: id, conn: a.NewConn("eve", "192.0.2.9", clk.now()), holder: &h})
					case g.dupDisc && len(ended) > 0 && r == 0:
						o := ended[rng.IntN(len(ended))]
						batch = append(batch, event{kind: evDisconnect, clientID: o.id, conn: o.c})
					case len(live) > 0 && r < 4:
						j := rng.IntN(len(live))
						o := live[j]
						live = slices.Delete(live, j, j+1)
						ended = append(ended, o)
						batch = append(batch, event{kind: evDisconnect, clientID: o.id, conn: o.c})
					default:
						id := fmt.Sprintf("d%d", rng.IntN(g.ids))
						c := a.NewConn(principals[min(rng.IntN(len(principals)+2), len(principals)-1)], "192.0.2.1", clk.now())
						if g.seq0 && !seq0 && rng.IntN(4) == 0 && !slices.ContainsFunc(live, func(o open) bool { return o.c.Seq == 0 }) {
							c.Seq, seq0 = 0, true
						}
						ev := event{kind: evConnect, clientID: id, conn: c, other: latest[id]}
						latest[id] = &c
						if g.discFirst && rng.IntN(4) == 0 && len(batch)+2 <= n {
							batch = append(batch, event{kind: evDisconnect, clientID: id, conn: c}, ev)
							ended = append(ended, open{id, c})
							continue
						}
						batch = append(batch, ev)
						live = append(live, open{id, c})
					}
				}
				if len(ended) > 64 {
					ended = ended[len(ended)-64:]
				}
				// the twin: the parent's writes
				connsB := b.storeConns(batch)
				wsB, atB := parentWrites(b, batch, connsB, now)
				wantWs := withReadLive(deepWrites(wsB))
				stB, err := memB.WriteConns(ctx, wsB, opts.Window)
				require.NoError(t, err)
				for i, ev := range batch {
					if ev.kind == evConnect && atB[i] >= 0 && wsB[atB[i]].Read {
						b.noteQuiet(ev, &stB[atB[i]], b.view(now), now)
					}
				}
				// the change: handle's own steps but its evaluation
				connsA := a.bareConns(batch)
				wsA, atA := a.writes(batch, connsA, now)
				a.nameConns(batch, connsA, a.sc.named)
				gotWs := deepWrites(wsA)
				gotAt := slices.Clone(atA)
				for i, ev := range batch { // at counts for connects alone (handle)
					if ev.kind != evConnect {
						gotAt[i], atB[i] = 0, 0
					}
				}
				stA, err := memA.WriteConns(ctx, wsA, opts.Window)
				require.NoError(t, err)
				for i, ev := range batch {
					if ev.kind == evConnect && atA[i] >= 0 && wsA[atA[i]].Read {
						a.noteQuiet(ev, &stA[atA[i]], a.view(now), now)
					}
				}
				a.releaseScratch(connsA, wsA, atA)
				msg := fmt.Sprintf("gen %+v seed %d deny %v round %d", g, seed, deny, round)
				if len(batch) <= 16 {
					msg += ": " + fmt.Sprint(batch)
				}
				require.Equal(t, atB, gotAt, msg)
				require.Equal(t, wantWs, gotWs, msg)
				require.Equal(t, b.ids.Len(), a.ids.Len(), msg)
				if a.ids.Len() < 10_000 {
					ma, oa, la := memoDump(a)
					mb, ob, lb := memoDump(b)
					require.Equal(t, mb, ma, msg)
					require.Equal(t, ob, oa, msg)
					require.Equal(t, lb, la, msg)
				}
				if g.prefill > 0 && a.ids.Len() < seenMemoMax/2 {
					pruned = true
				}
				if !g.seq0 { // a connection numbered 0 lists nothing but counts in listed (list), on 4d0f9dd too
					checkMemos(t, a)
				}
			}
		}
	}
}

// In-order batches, as TestMemosAsBefore makes, but with up to 300 events
// of 3 to 60 client IDs, and batches of batchMax with trimScratch between.
func TestAtk21WritesAsParent(t *testing.T) {
	for _, c := range []struct {
		g     atk21Gen
		seeds int
	}{
		{atk21Gen{ids: 3, maxBatch: 8}, 60},
		{atk21Gen{ids: 60, maxBatch: 300}, 8},
		{atk21Gen{ids: 20, maxBatch: 40, bigBatches: true}, 4},
	} {
		runAtk21(t, c.g, c.seeds)
	}
}

// Refused events among them, the tables' generation wrapping mid-run, and
// now and then a connection numbered 0.
func TestAtk21RefusedWrapSeq0(t *testing.T) {
	runAtk21(t, atk21Gen{ids: 4, maxBatch: 12, refused: true, wrap: true, seq0: true, dupDisc: true, discFirst: true}, 150)
}

// The memos at seenMemoMax unlisted entries: a new client ID's connect
// (storeMemo with nothing found) prunes them mid-batch, with split
// entries (owed) listed among the batch's, kept.
func TestAtk21PruneMidBatch(t *testing.T) {
	runAtk21(t, atk21Gen{ids: 200, maxBatch: 40, prefill: 30}, 3)
}

// A disconnect queued twice for one connection.
func TestAtk21DuplicateDisconnect(t *testing.T) {
	runAtk21(t, atk21Gen{ids: 4, maxBatch: 12, dupDisc: true}, 150)
}

// A disconnect queued before its own connect, in one batch.
func TestAtk21DisconnectBeforeConnect(t *testing.T) {
	runAtk21(t, atk21Gen{ids: 4, maxBatch: 12, discFirst: true}, 150)
}

// The deferred connection's race, against a real Redis: plugin's confirmDue
// tells the tracker of a deferred connection (Connected) after releasing
// g.mu, so the broker thread may queue that connection's Disconnected
// first, and both may land in one batch, the disconnect first. The parent
// (the three maps: endsOf pairs a connect with its batch's disconnect
// wherever it stands) folded such a connect of a quiet client ID away:
// nothing written. 9b91d2d's pairBatch paired only a disconnect after its
// connect, so the connect was written live (HSET of this instance's field)
// after its own end: the client ID stayed live on this broker in Redis
// (until its next connect here, or this broker's lease lapsing), and
// another broker reading it sees alice still on it.
func TestAtk21DisconnectBeforeConnectRedis(t *testing.T) {
	r := testenv.StartRedis(t)
	s := store.New(store.Options{Addrs: []string{r.Addr}, Timeout: 5 * time.Second}, keys.Builder{Prefix: "guard:"})
	t.Cleanup(func() { s.Close() })
	clk := newClock()
	tr := New(testOptions(), Deps{Store: s, Now: clk.now})
	peer := New(testOptions(), Deps{Store: s, Now: clk.now})
	both := map[string]bool{tr.instance: true, peer.instance: true}
	tr.live.Store(&both)
	peer.live.Store(&both)
	ctx := context.Background()

	// alice's device: read quiet, its use recorded fresh.
	a := tr.NewConn("alice", "192.0.2.1", clk.now())
	require.NoError(t, tr.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: a}}))
	require.NoError(t, tr.handle(ctx, []event{{kind: evDisconnect, clientID: "dev", conn: a}}))
	live, err := s.LiveConns(ctx, "dev")
	require.NoError(t, err)
	require.Empty(t, live)

	// A deferred connection of alice's, its end queued before its confirmation.
	clk.advance(time.Second)
	b := tr.NewConn("alice", "192.0.2.1", clk.now())
	require.NoError(t, tr.handle(ctx, []event{{kind: evDisconnect, clientID: "dev", conn: b}, {kind: evConnect, clientID: "dev", conn: b}}))
	live, err = s.LiveConns(ctx, "dev")
	require.NoError(t, err)
	assert.Empty(t, live, "a connection that ended is recorded live")

	// bob takes the client ID on the other broker: alice is gone.
	clk.advance(time.Second)
	c := peer.NewConn("bob", "198.51.100.7", clk.now())
	require.NoError(t, peer.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: c}}))
	live, err = s.LiveConns(ctx, "dev")
	require.NoError(t, err)
	require.Len(t, live, 1)
	assert.Equal(t, peer.StoreConn(c).ID, live[0].ID, "alice's ended connection still live when bob comes")
}

// pairBatch alone, per event, on batches of 800: "pairs", each connect's
// disconnect after it in the batch (the b row's reconnecting devices);
// "cross", connects of new connections and disconnects of the previous
// batch's (connections that outlast a batch: each such disconnect is now
// put in bySeq, for a connect of its number that may follow).
func BenchmarkAtk21PairBatch(b *testing.B) {
	for _, kind := range []string{"pairs", "cross"} {
		b.Run(kind, func(b *testing.B) {
			tr := New(testOptions(), Deps{Store: &nullStore{}})
			const size = 800
			var batches [2][]event
			var prev []Conn
			for k := range batches {
				var cur []Conn
				for i := 0; i < size/2; i++ {
					id := "device-" + strconv.Itoa(i%32)
					c := tr.NewConn("user", "192.0.2.7", time.Now())
					batches[k] = append(batches[k], event{kind: evConnect, clientID: id, conn: c})
					switch {
					case kind == "pairs":
						batches[k] = append(batches[k], event{kind: evDisconnect, clientID: id, conn: c})
					case prev != nil:
						batches[k] = append(batches[k], event{kind: evDisconnect, clientID: id, conn: prev[i]})
					default:
						batches[k] = append(batches[k], event{kind: evDisconnect, clientID: id, conn: tr.NewConn("user", "192.0.2.7", time.Now())})
					}
					cur = append(cur, c)
				}
				prev = cur
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				tr.pairBatch(batches[i&1])
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/size, "ns/event")
		})
	}
}
