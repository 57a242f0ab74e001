package plugin

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store/replica"
)

// Hostile review of record reuse (fdf57db): a model of the broker thread
// (CONNECTs, DISCONNECTs with and without a persistent session, second
// DISCONNECTs, stale pointers, reload walks, deferred clients, takeovers,
// the kick queue through KickDue) runs against a goroutine that sets and
// lifts operator bans and runs kickMatching and recheckConns, with conflict
// tracking on (g.pending) and records recycled at few pointers. After
// every step the guard's tables are checked against the model and the
// records' invariants; every kick must name a client a ban matches; at the
// end every live client a standing ban matches is flagged, and the
// Flagged count is the flagged records' number.
//
// Client IDs fix the client: "bad-k" is username bad from 192.0.2.(200+k),
// "good-k" username good from 198.51.100.k. Every ban matches bad clients
// only, so a kick of a good one is a record mix-up.

type attackKick struct {
	h  uintptr
	id string
}

type attackModel struct {
	id      string
	offline bool
}

func attackClient(h uintptr, id string) Client {
	var k int
	var ip string
	user := "good"
	if n, ok := strings.CutPrefix(id, "bad-"); ok {
		fmt.Sscan(n, &k)
		ip, user = fmt.Sprintf("192.0.2.%d", 200+k), "bad"
	} else {
		fmt.Sscan(strings.TrimPrefix(id, "good-"), &k)
		ip = fmt.Sprintf("198.51.100.%d", k)
	}
	return Client{Handle: h, ClientID: id, Username: user, HasUsername: true, Address: ip}
}

var attackBans = []struct {
	scope keys.Scope
	value string
}{
	{keys.Username, "bad"},
	{keys.IP, "192.0.2.201"},
	{keys.CIDR, "192.0.2.192/26"},
	{keys.ClientID, "bad-3"},
	{keys.ClientID, "bad-0"},
}

func attackBanKey(i int) string {
	return "guard:block:" + string(attackBans[i].scope) + ":" + attackBans[i].value
}

// checkRecordsLocked checks g's tables against the model and the records'
// invariants; g.mu held.
func checkRecordsLocked(t *testing.T, g *Guard, model map[uintptr]*attackModel, step int) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("step %d: "+format, append([]any{step}, args...)...)
	}
	kept := map[*liveConn]string{}
	for _, lc := range g.recs.free {
		kept[lc] = "free"
		if *lc != (liveConn{}) {
			fail("a free record is not zeroed: %+v", *lc)
		}
	}
	for _, lc := range g.recs.limbo {
		if kept[lc] != "" {
			fail("a record is kept twice")
		}
		kept[lc] = "limbo"
	}
	if len(g.recs.free)+len(g.recs.limbo) > recMax {
		fail("%d records kept, bound %d", len(g.recs.free)+len(g.recs.limbo), recMax)
	}
	if g.conns.len() != len(model) {
		fail("conns has %d entries, the model %d", g.conns.len(), len(model))
	}
	offline := 0
	for lc := range g.conns.all() {
		h := lc.handle
		m := model[h]
		switch {
		case m == nil:
			fail("conns[%d] is %q, the model has none", h, lc.clientID)
		case lc.handle != h:
			fail("conns[%d] holds handle %d", h, lc.handle)
		case lc.clientID != m.id || lc.offline != m.offline:
			fail("conns[%d] is %q offline=%v, the model %q offline=%v", h, lc.clientID, lc.offline, m.id, m.offline)
		case kept[lc] != "":
			fail("conns[%d] (%q) is in %s", h, lc.clientID, kept[lc])
		}
		if lc.offline {
			offline++
		}
		if d := g.displacedBy(lc); d != nil && kept[d] != "" {
			fail("conns[%d] (%q) displaced names a record in %s", h, lc.clientID, kept[d])
		}
		if lc.clientID != attackClient(h, lc.clientID).ClientID || lc.username() != attackClient(h, lc.clientID).Username {
			fail("conns[%d] mixes clients: %q user %q", h, lc.clientID, lc.username())
		}
	}
	if offline != g.offline {
		fail("g.offline %d, %d offline entries", g.offline, offline)
	}
	for lc, d := range g.displaced {
		if g.conns.get(lc.handle) != lc || kept[lc] != "" || kept[d] != "" {
			fail("g.displaced holds %q at %d (in conns: %v, %s) -> %q (%s)", lc.clientID, lc.handle, g.conns.get(lc.handle) == lc, kept[lc], d.clientID, kept[d])
		}
	}
	for id, lc := range g.byID.all() {
		if g.conns.get(lc.handle) != lc || lc.offline || lc.clientID != id {
			fail("byID[%q] is %q at %d offline=%v, conns there %p, it %p", id, lc.clientID, lc.handle, lc.offline, g.conns.get(lc.handle), lc)
		}
		if d := g.displacedBy(lc); d != nil && kept[d] != "" {
			fail("byID[%q] displaced names a record in %s", id, kept[d])
		}
	}
	for _, p := range g.pending {
		if lc := p.lc; kept[lc] != "" {
			fail("g.pending holds a record in %s", kept[lc])
		}
	}
}

func TestAttackRecordsModel(t *testing.T) {
	steps := 40000
	if testing.Short() || raceEnabled {
		steps = 15000
	}
	cfg, err := config.Parse(map[string]string{"backend": "defer", "clientid_conflict": "flag"})
	require.NoError(t, err)
	var flaggedSum atomic.Int64
	var kmu sync.Mutex
	var kicks []attackKick
	var wrong []string
	kick := func(h uintptr, id string) {
		kmu.Lock()
		defer kmu.Unlock()
		if !strings.HasPrefix(id, "bad-") {
			wrong = append(wrong, fmt.Sprintf("kick of %q at %d", id, h))
		}
		kicks = append(kicks, attackKick{h, id})
	}
	g, err := NewWith(cfg, Output{Log: func(Level, string) {}, Kick: kick, Flagged: func(d int) { flaggedSum.Add(int64(d)) }},
		Deps{Store: newFakeStore(), Counter: &fakeCounter{}, Conflicts: failingClaims{}})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	g.now = func() time.Time { return time.Unix(0, clock.Load()) }
	g.replica = replica.New(keys.Builder{Prefix: "guard:"})

	// The ban goroutine: sets and lifts bans, and scans, until stop.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	standing := make([]atomic.Bool, len(attackBans))
	wg.Add(1)
	go func() {
		defer wg.Done()
		r := rand.New(rand.NewPCG(2, 3))
		for {
			select {
			case <-stop:
				return
			default:
			}
			i := r.IntN(len(attackBans))
			key := attackBanKey(i)
			switch r.IntN(4) {
			case 0:
				g.replica.Delete(key)
				standing[i].Store(false)
			case 1:
				g.recheckConns()
			default:
				if err := g.replica.Put(key, "operator ban", time.Time{}); err != nil {
					t.Error(err)
					return
				}
				standing[i].Store(true)
				g.kickMatching(key, attackBans[i].scope, attackBans[i].value)
			}
		}
	}()

	r := rand.New(rand.NewPCG(1, 2))
	model := map[uintptr]*attackModel{}
	const handles = 40
	reload := uint64(0)
	reused, dueKicks, limboSeen := 0, 0, 0
	deadline := time.Now().Add(90 * time.Second)
	for step := 0; step < steps && time.Now().Before(deadline); step++ {
		clock.Add(int64(7 * time.Millisecond))
		h := uintptr(1 + r.IntN(handles))
		m := model[h]
		switch op := r.IntN(100); {
		case op < 40 && (m == nil || m.offline): // a CONNECT at h (over a stale offline entry, if any)
			id := fmt.Sprintf("good-%d", r.IntN(8))
			if r.IntN(3) == 0 {
				id = fmt.Sprintf("bad-%d", r.IntN(6))
			}
			if m != nil && r.IntN(2) == 0 {
				// the broker frees the session without a DISCONNECT; a new
				// client at its pointer is authenticated: reauth drops it
				if g.reauth(h) {
					t.Fatalf("step %d: reauth of an offline entry", step)
				}
			}
			g.mu.Lock()
			if len(g.recs.free) > 0 {
				reused++
			}
			g.mu.Unlock()
			c := attackClient(h, id)
			if strings.HasPrefix(id, "bad-") && r.IntN(4) == 0 {
				g.admitFlagged(&c, netip.MustParseAddr(c.Address)) // first sight of a banned certificate
			} else {
				g.admit(&c, netip.MustParseAddr(c.Address), r.IntN(3) == 0, false)
			}
			model[h] = &attackModel{id: id}
		case op < 70 && m != nil && !m.offline: // DISCONNECT, keeping the session or not
			if r.IntN(2) == 0 {
				g.DisconnectedKeepSession(h)
				g.mu.Lock()
				still := g.conns.get(h) != nil
				g.mu.Unlock()
				if still {
					m.offline = true
				} else {
					delete(model, h)
				}
			} else {
				g.Disconnected(h)
				delete(model, h)
			}
		case op < 80 && m != nil && m.offline: // the session ends
			g.Disconnected(h)
			delete(model, h)
		case op < 85: // a reload's walk visits every client once
			reload++
			for hh, mm := range model {
				vc := attackClient(hh, mm.id)
				if !g.ReloadVisit(&vc, reload) {
					t.Fatalf("step %d: reload %d did not know %q at %d", step, reload, mm.id, hh)
				}
				if g.ReloadVisit(&vc, reload) {
					t.Fatalf("step %d: reload %d visited %q at %d twice", step, reload, mm.id, hh)
				}
			}
		case op < 90:
			g.confirmDue()
		default: // the broker runs the queued kicks
			kmu.Lock()
			q := kicks
			kicks = nil
			kmu.Unlock()
			for _, k := range q {
				due, _ := g.KickDue(k.h, k.id)
				if !due {
					continue
				}
				if !strings.HasPrefix(k.id, "bad-") {
					t.Fatalf("step %d: a kick of %q at %d is due", step, k.id, k.h)
				}
				dueKicks++
				g.Disconnected(k.h) // the broker disconnects it
				delete(model, k.h)
			}
		}
		g.mu.Lock()
		checkRecordsLocked(t, g, model, step)
		if len(g.recs.limbo) > 0 {
			limboSeen++
		}
		g.mu.Unlock()
	}
	t.Logf("admits from a kept record: %d; kicks run: %d; steps with records in limbo: %d", reused, dueKicks, limboSeen)
	require.Positive(t, reused, "no record was reused: the attack did not reach the change")
	require.Positive(t, dueKicks, "no kick ran")
	close(stop)
	wg.Wait()
	kmu.Lock()
	require.Empty(t, wrong, "clients no ban matches were kicked")
	kmu.Unlock()

	// Every standing ban once more: every live client one matches is flagged.
	for i := range attackBans {
		if standing[i].Load() {
			g.kickMatching(attackBanKey(i), attackBans[i].scope, attackBans[i].value)
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	require.Zero(t, g.recs.scans, "scans left counted")
	require.Empty(t, g.recs.limbo, "records left in limbo after the scans")
	checkRecordsLocked(t, g, model, steps)
	flagged := 0
	for lc := range g.conns.all() {
		h := lc.handle
		if lc.flagged {
			flagged++
		}
		if lc.offline {
			continue
		}
		c := attackClient(h, lc.clientID)
		ip := netip.MustParseAddr(c.Address)
		for i, b := range attackBans {
			if !standing[i].Load() {
				continue
			}
			var pfx netip.Prefix
			if b.scope == keys.CIDR {
				pfx = netip.MustParsePrefix(b.value)
			}
			probe := liveConn{hasUsername: true, connRare: noRare}
			probe.setIDs(idsOf(&c), len(c.ClientID))
			probe.ip16, _ = packIP(ip)
			if matches(&probe, b.scope, b.value, pfx) && !lc.flagged {
				t.Errorf("%q at %d matches standing ban %s and is not flagged", lc.clientID, h, attackBanKey(i))
			}
		}
	}
	require.EqualValues(t, flagged, flaggedSum.Load(), "Flagged count vs flagged records")
}

// A panic inside a scan (the kick's output, outside g.mu) unwinds through
// scanDone: the count of scans goes back to zero and the records that ended
// meanwhile are reusable; the next scan and the next CONNECT work.
func TestAttackRecordsScanPanic(t *testing.T) {
	var once sync.Once
	g := kickGuard(t, map[string]string{"backend": "defer", "clientid_conflict": "off"}, Output{Log: func(Level, string) {},
		Kick: func(uintptr, string) { once.Do(func() { panic("kick output") }) }})
	a := admitRC(g, rc(1, "dev-a", "alice"), false)
	admitRC(g, rc(2, "dev-b", "bob"), false)
	pauseOnce(g, func() { g.Disconnected(2) })
	require.NoError(t, g.replica.Put("guard:block:username:alice", "", time.Time{}))
	func() {
		defer func() { require.NotNil(t, recover(), "the output's panic") }()
		g.kickMatching("guard:block:username:alice", keys.Username, "alice")
	}()
	locked := make(chan struct{})
	go func() { g.mu.Lock(); close(locked) }()
	select {
	case <-locked:
	case <-time.After(2 * time.Second):
		t.Fatal("g.mu still held after a panic in a scan")
	}
	defer g.mu.Unlock()
	require.Zero(t, g.recs.scans)
	require.Empty(t, g.recs.limbo)
	require.Len(t, g.recs.free, 1, "the record that ended during the scan")
	require.True(t, a.flagged)
}
