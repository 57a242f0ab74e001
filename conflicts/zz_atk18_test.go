package conflicts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// atk18Store is a real store that can refuse the worker's writes (Redis
// down, for the retry path) and keeps the findings the worker adds, their
// connections as the worker built them.
type atk18Store struct {
	*store.Store
	mu       sync.Mutex
	down     bool
	findings []store.Finding
	dups     map[string]int // client ID: duplicate candidates counted (CountTakeovers)
}

func (s *atk18Store) CountTakeovers(ctx context.Context, ts []store.Takeover, window time.Duration, limit int) ([]int64, error) {
	s.mu.Lock()
	if s.dups == nil {
		s.dups = map[string]int{}
	}
	for _, tk := range ts {
		s.dups[tk.Tracked]++
	}
	s.mu.Unlock()
	return s.Store.CountTakeovers(ctx, ts, window, limit)
}

func (s *atk18Store) WriteConns(ctx context.Context, ws []store.ConnWrite, window time.Duration) ([]store.State, error) {
	s.mu.Lock()
	down := s.down
	s.mu.Unlock()
	if down {
		return nil, errors.New("atk18: redis down")
	}
	return s.Store.WriteConns(ctx, ws, window)
}

func (s *atk18Store) AddFinding(ctx context.Context, f *store.Finding, period, ttl time.Duration, max int64) (bool, error) {
	s.mu.Lock()
	c := *f
	c.Connections = append([]store.Conn(nil), f.Connections...)
	s.findings = append(s.findings, c)
	s.mu.Unlock()
	return s.Store.AddFinding(ctx, f, period, ttl, max)
}

// atk18Run is one seeded run of random batches against a real Redis:
// connects of a few client IDs (a long one among them, hashed in its
// tracking form), under two principals, from IPv4, IPv6, unix-socket and no
// addresses; takeovers within a batch and across batches, with and without
// their disconnects; disconnects described by their 16 bytes (Conn.Addr);
// refused connects (deny); batches Redis refuses (kept disconnects,
// retried); spilled disconnects (drainSpill); a batch of batchMax folded
// pairs. After every batch it checks that every connection record in
// guard:conn and guard:seen, and every connection of a finding, carries
// the ID and the IP text of the connection it describes; it returns the
// run's transcript (Redis's keys, findings, log lines, publications).
func atk18Run(t *testing.T, r *testenv.Redis, seed uint64, deny, full bool) string {
	t.Helper()
	r.CLI("FLUSHALL")
	kb := keys.Builder{Prefix: "guard:"}
	st := &atk18Store{Store: store.New(store.Options{Addrs: []string{r.Addr}, Timeout: 5 * time.Second}, kb), dups: map[string]int{}}
	t.Cleanup(func() { st.Close() })
	opts := testOptions()
	opts.Deny = deny
	opts.FindingsTopic = "guard/findings"
	clk, ls := newClock(), &logSink{}
	var pubMu sync.Mutex
	var pubs []string
	tr := New(opts, Deps{Store: st, Log: ls.log, Now: clk.now, Publish: func(topic string, p []byte) {
		pubMu.Lock()
		pubs = append(pubs, topic+" "+string(p))
		pubMu.Unlock()
	}})
	tr.instance = "i1"
	t.Cleanup(tr.ids.Free)
	tr.renew()
	ctx := context.Background()

	rng := rand.New(rand.NewPCG(seed, 18))
	long := strings.Repeat("L", 300)
	ids := []string{"dev-0", "dev-1", "dev-2", "dev-3", long}
	ips := []string{"192.0.2.7", "2001:db8::7", "::ffff:192.0.2.1", "fe80::1:2:3:4", "/run/mosquitto.sock", "", "10.0.0.255"}
	want := map[string]store.Conn{} // ID: the record it must carry (but DisconnectedMs)
	holder := store.Conn{ID: "i2-77", Instance: "i2", Broker: "other", Principal: "mallory", IP: "198.51.100.9", ConnectedMs: 1}
	want[holder.ID] = holder
	live := map[string]Conn{} // client ID: this broker's connection
	newConn := func(principal, ip string) Conn {
		c := tr.NewConn(principal, ip, clk.now())
		want["i1-"+strconv.FormatUint(c.Seq, 10)] = store.Conn{Instance: "i1", Broker: "test", Principal: principal, IP: ip, ConnectedMs: c.ConnectedMs}
		return c
	}
	described := func(c Conn) Conn { // a DISCONNECT's or a taken over connection's description: its 16 bytes, when it has them
		if a, err := netip.ParseAddr(c.IP); err == nil && a.String() == c.IP && rng.IntN(3) > 0 {
			return addrConn(c)
		}
		return c
	}
	principal := func() string {
		if rng.IntN(6) == 0 {
			return "bob"
		}
		return "alice"
	}
	ev := func(kind eventKind, id string, c Conn) event {
		tid, l := tracked(id)
		if kind == evDisconnect {
			return event{kind: kind, clientID: keys.Tracking(id), conn: described(c)}
		}
		return event{kind: kind, clientID: tid, long: l, conn: c}
	}

	var out strings.Builder
	check := func(step string) {
		t.Helper()
		rec := func(where string, c store.Conn) {
			t.Helper()
			w, ok := want[c.ID]
			require.True(t, ok, "%s %s: a record of no connection: %+v", step, where, c)
			c.DisconnectedMs = 0
			w.ID = c.ID
			require.Equal(t, w, c, "%s %s", step, where)
		}
		rdb := st.Client()
		ks, err := rdb.Keys(ctx, "guard:*").Result()
		require.NoError(t, err)
		for _, k := range ks {
			if !strings.HasPrefix(k, "guard:conn:") && !strings.HasPrefix(k, "guard:seen:") {
				continue
			}
			h, err := rdb.HGetAll(ctx, k).Result()
			require.NoError(t, err)
			for f, v := range h {
				var c store.Conn
				require.NoError(t, json.Unmarshal([]byte(v), &c), "%s %s %s %q", step, k, f, v)
				rec(k, c)
			}
		}
		st.mu.Lock()
		fs := st.findings
		st.findings = nil
		st.mu.Unlock()
		for _, f := range fs {
			for _, c := range f.Connections {
				rec("finding "+f.Kind, c)
			}
			cs := append([]store.Conn(nil), f.Connections...)
			sort.Slice(cs, func(i, j int) bool { return cs[i].ID < cs[j].ID })
			b, _ := json.Marshal(cs)
			fmt.Fprintf(&out, "%s finding %s %s %s %q %v %d %s\n", step, f.Kind, f.Action, f.ClientID, f.ClientIDShown, f.Principals, f.DisplacedDisconnectedMs, b)
		}
		out.WriteString(atk18Dump(t, st, step))
	}

	dups := map[string]int{} // client ID: its connects that took over one of the same principal here
	handle := func(step string, batch []event, checked bool) {
		t.Helper()
		err := tr.handle(ctx, batch)
		st.mu.Lock()
		down := st.down
		st.mu.Unlock()
		if !down {
			require.NoError(t, err, step)
			for _, e := range batch {
				if e.kind == evConnect && e.other != nil && e.other.Principal == e.conn.Principal {
					dups[e.clientID]++ // evaluated (folded or not): a duplicate candidate, counted
				}
			}
			st.mu.Lock()
			require.Equal(t, dups, st.dups, "%s: the takeovers evaluated", step)
			st.mu.Unlock()
		}
		if checked {
			check(step)
		}
	}

	for round := range 60 {
		st.mu.Lock()
		st.down = rng.IntN(8) == 0
		st.mu.Unlock()
		var batch []event
		for range 1 + rng.IntN(14) {
			id := ids[rng.IntN(len(ids))]
			switch k := rng.IntN(10); {
			case k < 4: // a pair: connect and its own disconnect (a folding candidate)
				c := newConn(principal(), ips[rng.IntN(len(ips))])
				e := ev(evConnect, id, c)
				if old, ok := live[id]; ok {
					o := described(old)
					e.other = &o
					delete(live, id)
					if rng.IntN(2) == 0 {
						batch = append(batch, e, ev(evDisconnect, id, old))
					} else {
						batch = append(batch, ev(evDisconnect, id, old), e)
					}
				} else {
					batch = append(batch, e)
				}
				batch = append(batch, ev(evDisconnect, id, c))
			case k < 7: // a connect that stays, taking over this broker's, if any
				c := newConn(principal(), ips[rng.IntN(len(ips))])
				e := ev(evConnect, id, c)
				if old, ok := live[id]; ok {
					o := described(old)
					e.other = &o
					batch = append(batch, e)
					if rng.IntN(3) > 0 {
						batch = append(batch, ev(evDisconnect, id, old)) // the taken over one's end
					}
				} else {
					batch = append(batch, e)
				}
				live[id] = c
			case k < 9: // the live one ends
				if old, ok := live[id]; ok {
					batch = append(batch, ev(evDisconnect, id, old))
					delete(live, id)
				}
			default: // refused under deny (a finding); a connect that stays under flag
				if deny {
					a := newConn(principal(), ips[rng.IntN(len(ips))])
					h := holder
					e := ev(evRefused, id, a)
					e.holder = &h
					batch = append(batch, e)
				}
			}
		}
		if len(batch) > 0 {
			handle(fmt.Sprintf("round %d (down %v)", round, st.down), batch, true)
		}
		clk.advance([]time.Duration{0, 200 * time.Millisecond, 2 * time.Second, quietFor + time.Second, seenRefresh + time.Second}[rng.IntN(5)])
		if rng.IntN(10) == 0 { // the spill: disconnects alone, after the queue
			var spill []event
			for _, id := range ids { // in order: the run is the seed's
				c, ok := live[id]
				if ok && rng.IntN(2) == 0 {
					spill = append(spill, ev(evDisconnect, id, c))
					delete(live, id)
				}
			}
			sort.Slice(spill, func(i, j int) bool { return spill[i].conn.Seq < spill[j].conn.Seq })
			st.mu.Lock()
			st.down = false
			st.mu.Unlock()
			tr.spill.evs = spill
			tr.drainSpill()
			check(fmt.Sprintf("round %d spill", round))
		}
	}
	// A batch of batchMax (full): folded pairs of many devices, warmed
	// first, and among them a few that take over this broker's connection
	// of theirs.
	if full {
		atk18Full(t, st, tr, handle, newConn, ev, described)
	}
	out.WriteString("log:\n" + regexp.MustCompile(`id="?[0-9]+-[0-9]+"?`).ReplaceAllString(ls.all(), "id=X") + "\n")
	pubMu.Lock()
	for _, p := range pubs {
		out.WriteString(regexp.MustCompile(`"(ID|id)":"[0-9]+-[0-9]+"`).ReplaceAllString(p, `"id":"X"`) + "\n")
	}
	pubMu.Unlock()
	return out.String()
}

// atk18Full is atk18Run's batch of batchMax.
func atk18Full(t *testing.T, st *atk18Store, tr *Tracker, handle func(string, []event, bool), newConn func(string, string) Conn,
	ev func(eventKind, string, Conn) event, described func(Conn) Conn) {
	t.Helper()
	st.mu.Lock()
	st.down = false
	st.mu.Unlock()
	var devs []string
	for i := range batchMax / 2 {
		devs = append(devs, "fleet-"+strconv.Itoa(i))
	}
	for range 2 {
		var warm []event
		for _, d := range devs {
			c := newConn("alice", "192.0.2.50")
			warm = append(warm, ev(evConnect, d, c), ev(evDisconnect, d, c))
		}
		handle("warm", warm, false)
	}
	var big []event
	for i, d := range devs {
		if i%500 == 0 {
			held := newConn("alice", "2001:db8::50")
			handle("held "+d, []event{ev(evConnect, d, held)}, false)
			c := newConn("alice", "192.0.2.51")
			e := ev(evConnect, d, c)
			o := described(held)
			e.other = &o
			big = append(big, e, ev(evDisconnect, d, c), ev(evDisconnect, d, held))
			continue
		}
		c := newConn("alice", "192.0.2.51")
		big = append(big, ev(evConnect, d, c), ev(evDisconnect, d, c))
	}
	big = big[:batchMax]
	handle("batchMax", big, true)
}

// atk18Dump is Redis's guard keys, as far as they do not depend on Redis's
// clock: hashes and sets sorted, sorted sets and streams by their length.
func atk18Dump(t *testing.T, st *atk18Store, step string) string {
	t.Helper()
	ctx, rdb := context.Background(), st.Client()
	ks, err := rdb.Keys(ctx, "guard:*").Result()
	require.NoError(t, err)
	sort.Strings(ks)
	var b strings.Builder
	fmt.Fprintf(&b, "%s:\n", step)
	for _, k := range ks {
		typ := rdb.Type(ctx, k).Val()
		v := typ
		switch typ {
		case "hash":
			var fields []string
			for f, x := range rdb.HGetAll(ctx, k).Val() {
				fields = append(fields, f+"="+x)
			}
			sort.Strings(fields)
			v += " " + strings.Join(fields, " ")
		case "set":
			m := rdb.SMembers(ctx, k).Val()
			sort.Strings(m)
			v += " " + strings.Join(m, " ")
		case "zset":
			v += fmt.Sprint(" ", rdb.ZCard(ctx, k).Val())
		case "stream":
			v += fmt.Sprint(" ", rdb.XLen(ctx, k).Val())
		}
		if k == "guard:brokers" {
			continue // the lease: Redis's clock
		}
		fmt.Fprintf(&b, "  %s %s\n", k, v)
	}
	return b.String()
}

// Issue 12's naming of only the connections a write or a finding shows
// (21a8a39), under clientid_conflict flag and deny: every record the worker
// leaves in Redis and every finding's connection carries its connection's
// ID and IP text, across takeovers within a batch, folded pairs, the
// ended fold, refused connects, DISCONNECTs described by their 16 bytes,
// IPv6, unix-socket and empty addresses, a hashed client ID, batches Redis
// refused (their disconnects retried), the spill and a batch of batchMax.
// ATK18_DUMP=file writes the runs' transcripts, to compare two builds.
func TestAtk18RecordsNamed(t *testing.T) {
	r := testenv.StartRedis(t)
	var all strings.Builder
	for _, deny := range []bool{false, true} {
		for seed := range uint64(2) {
			all.WriteString(fmt.Sprintf("== deny %v seed %d\n", deny, seed))
			start := time.Now()
			all.WriteString(atk18Run(t, r, seed, deny, seed == 0))
			t.Logf("deny %v seed %d: %v", deny, seed, time.Since(start))
		}
	}
	if p := os.Getenv("ATK18_DUMP"); p != "" {
		require.NoError(t, os.WriteFile(p, []byte(all.String()), 0o644))
	}
}

// BenchmarkAtk18HandleMem is the worker's own CPU per event, Redis left
// out (the in-memory store, the same in both builds): new client IDs
// (every connection named: bareConns and nameConns's two passes against
// storeConns's one), their DISCONNECTs by their 16 bytes, and reconnecting
// devices (folded pairs: nothing named). For a side-by-side run with the
// parent commit.
func BenchmarkAtk18HandleMem(b *testing.B) {
	for _, kind := range []string{"new", "reconnect"} {
		b.Run(kind, func(b *testing.B) {
			m := newMemStore()
			clk := newClock()
			tr := New(testOptions(), Deps{Store: m, Now: clk.now})
			b.Cleanup(tr.ids.Free)
			ctx := context.Background()
			const size = 256
			n := 0
			mk := func() []event {
				batch := make([]event, 0, size)
				for i := 0; i < size/2; i++ {
					id := "device-" + strconv.Itoa(i%32)
					if kind == "new" {
						id = "device-" + strconv.Itoa(n)
						n++
					}
					c := tr.NewConn("user", "192.0.2.7", clk.now())
					batch = append(batch, event{kind: evConnect, clientID: id, conn: c}, event{kind: evDisconnect, clientID: id, conn: addrConn(c)})
				}
				return batch
			}
			for range 3 {
				if err := tr.handle(ctx, mk()); err != nil {
					b.Fatal(err)
				}
			}
			batches := make([][]event, b.N/size+1)
			for i := range batches {
				batches[i] = mk()
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i += size {
				if err := tr.handle(ctx, batches[i/size]); err != nil {
					b.Fatal(err)
				}
				clk.advance(100 * time.Millisecond)
			}
		})
	}
}
