package plugin

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// rc is a client of kickGuard's tests: handle h, client ID id, username
// user, from 192.0.2.h (h < 256) or 10.h.
func rc(h uintptr, id, user string) Client {
	ip := netip.AddrFrom4([4]byte{192, 0, 2, byte(h)})
	if h > 255 {
		ip = netip.AddrFrom4([4]byte{10, byte(h >> 16), byte(h >> 8), byte(h)})
	}
	return Client{Handle: h, ClientID: id, Username: user, HasUsername: true, Address: ip.String()}
}

func admitRC(g *Guard, c Client, pending bool) *liveConn {
	g.admit(&c, netip.MustParseAddr(c.Address), pending, false)
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.conns.get(c.Handle)
}

// pauseOnce makes g's next scan, while it holds records outside g.mu, run f.
func pauseOnce(g *Guard, f func()) {
	var once sync.Once
	g.recs.pause = func() { once.Do(f) }
}

// Issue 12: a CONNECT let through and its DISCONNECT allocate nothing once
// the guard is warm: the record of a connection that ended is reused.
// Before: 1 object (the record) per CONNECT.
func TestAdmitDisconnectAllocsNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	g, _, _, _ := newGuard(t, map[string]string{"clientid_conflict": "off"})
	c := cl(1, "192.0.2.1", "device-1", "alice", "alice-pw")
	require.Equal(t, Allow, g.Authenticate(c).Result)
	g.Disconnected(c.Handle)
	ip := netip.MustParseAddr(c.Address)
	n := testing.AllocsPerRun(1000, func() {
		g.admit(&c, ip, false, false)
		g.Disconnected(c.Handle)
	})
	assert.Zero(t, n, "objects per admit and Disconnected")
}

// A kick scan reads its candidates outside g.mu. A candidate that ends
// meanwhile while a new client connects at another pointer: the new
// client does not get the candidate's record (it would pass the scan's
// g.conns.get(lc.handle) == lc and be kicked in its place), and the record is
// reused once the scan is over.
func TestKickScanSparesANewClient(t *testing.T) {
	for _, ban := range []struct {
		scope keys.Scope
		value string
	}{{keys.Username, "alice"}, {keys.IP, "192.0.2.1"}, {keys.CIDR, "192.0.2.0/31"}, {keys.ClientID, "dev-a"}} {
		t.Run(string(ban.scope), func(t *testing.T) {
			var kr kickRecorder
			var flagged int
			g := kickGuard(t, map[string]string{"backend": "defer"},
				Output{Log: func(Level, string) {}, Kick: kr.kick, Flagged: func(d int) { flagged += d }})
			a := admitRC(g, rc(1, "dev-a", "alice"), false)
			var b *liveConn
			pauseOnce(g, func() {
				g.Disconnected(1)
				b = admitRC(g, rc(2, "dev-b", "bob"), false)
				assert.Equal(t, "alice", a.username(), "the scan's candidate still names its client")
			})
			key := "guard:block:" + string(ban.scope) + ":" + ban.value
			require.NoError(t, g.replica.Put(key, "", time.Time{}))
			g.kickMatching(key, ban.scope, ban.value)
			assert.NotSame(t, a, b, "a record a scan holds is not reused")
			assert.Empty(t, kr.all(), "the new client is not kicked")
			assert.False(t, g.Flagged(2))
			assert.Zero(t, flagged)
			// The scan is over: the record is reused.
			g.mu.Lock()
			assert.Equal(t, []*liveConn{a}, g.recs.free)
			assert.Empty(t, g.recs.limbo)
			assert.Zero(t, g.recs.scans)
			g.mu.Unlock()
			assert.Equal(t, liveConn{}, *a, "zeroed")
			assert.Same(t, a, admitRC(g, rc(3, "dev-c", "carol"), false))
		})
	}
}

// The same for recheckConns, which reads a chunk of records outside g.mu.
func TestRecheckScanSparesANewClient(t *testing.T) {
	var kr kickRecorder
	g := kickGuard(t, map[string]string{"backend": "defer"}, Output{Log: func(Level, string) {}, Kick: kr.kick})
	a := admitRC(g, rc(1, "dev-a", "alice"), false)
	require.NoError(t, g.replica.Put("guard:block:username:alice", "", time.Time{}))
	var b *liveConn
	pauseOnce(g, func() {
		g.Disconnected(1)
		b = admitRC(g, rc(2, "dev-b", "bob"), false)
		assert.Equal(t, "dev-a", queryOf(a).ClientID, "the chunk's record still names its client")
	})
	g.recheckConns()
	assert.NotSame(t, a, b, "a record a recheck holds is not reused")
	assert.Empty(t, kr.all())
	g.mu.Lock()
	assert.Equal(t, []*liveConn{a}, g.recs.free)
	assert.Zero(t, g.recs.scans)
	g.mu.Unlock()
}

// A connection refused by a later check gives its client ID back to the one
// it took over (displaced), if still there. When that one ended and its
// record went to another client, the client ID is not given to that client.
func TestDisplacedRecordNotGivenBack(t *testing.T) {
	var kr kickRecorder
	g := kickGuard(t, map[string]string{"backend": "defer", "clientid_conflict": "off"}, Output{Log: func(Level, string) {}, Kick: kr.kick})
	a := admitRC(g, rc(1, "dev", "alice"), false)
	newer := admitRC(g, Client{Handle: 2, ClientID: "dev", Address: "192.0.2.2"}, true) // deferred
	g.mu.Lock()
	require.Same(t, a, g.displacedBy(newer))
	g.mu.Unlock()
	g.Disconnected(1)
	x := admitRC(g, rc(3, "other", "carol"), false)
	require.Same(t, a, x, "the record is reused")
	g.Disconnected(2) // refused by the broker
	g.mu.Lock()
	assert.Nil(t, g.byID.get("dev"), "the client ID is no one's")
	assert.Same(t, x, g.byID.get("other"))
	g.mu.Unlock()
	due, wait := g.KickDue(3, "other")
	assert.False(t, due || wait)
}

// A deferred connection, with conflict tracking, stays in g.pending until
// confirmDue passes it: its record is not reused before, whether it ended
// or left an offline session that ended later.
func TestPendingRecordNotReused(t *testing.T) {
	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprint("keep=", keep), func(t *testing.T) {
			cfg, err := config.Parse(map[string]string{"backend": "defer", "clientid_conflict": "flag"})
			require.NoError(t, err)
			g, err := NewWith(cfg, Output{Log: func(Level, string) {}}, Deps{Store: newFakeStore(), Counter: &fakeCounter{}, Conflicts: failingClaims{}})
			require.NoError(t, err)
			t.Cleanup(g.Close)
			var mu sync.Mutex
			now := time.Now().Add(time.Hour) // ahead of confirmLoop's clock: only the test confirms
			g.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
			a := admitRC(g, rc(1, "dev-a", "alice"), true)
			if keep {
				g.DisconnectedKeepSession(1)
				require.True(t, a.offline)
			}
			g.Disconnected(1) // refused; or its offline session ends
			x := admitRC(g, rc(2, "dev-x", "carol"), false)
			assert.NotSame(t, a, x, "a record in g.pending is not reused")
			mu.Lock()
			now = now.Add(2 * confirmDelay)
			mu.Unlock()
			g.confirmDue()
			g.mu.Lock()
			assert.Empty(t, g.pending)
			assert.False(t, x.pending)
			assert.Equal(t, "dev-x", x.clientID)
			g.mu.Unlock()
		})
	}
	// An offline session confirmDue passed is reused once it ends.
	cfg, err := config.Parse(map[string]string{"backend": "defer", "clientid_conflict": "flag"})
	require.NoError(t, err)
	g, err := NewWith(cfg, Output{Log: func(Level, string) {}}, Deps{Store: newFakeStore(), Counter: &fakeCounter{}, Conflicts: failingClaims{}})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	a := admitRC(g, rc(1, "dev-a", "alice"), true)
	g.DisconnectedKeepSession(1)
	g.mu.Lock()
	g.now = func() time.Time { return time.Now().Add(time.Hour) }
	g.mu.Unlock()
	g.confirmDue()
	g.Disconnected(1)
	assert.Same(t, a, admitRC(g, rc(2, "dev-x", "carol"), false))
}

// The records kept for reuse are at most recMax, free and limbo together,
// through churn, a mass disconnect, and one during a scan.
func TestRecordsBound(t *testing.T) {
	g := kickGuard(t, map[string]string{"backend": "defer", "clientid_conflict": "off"}, Output{Log: func(Level, string) {}})
	check := func(what string) {
		t.Helper()
		g.mu.Lock()
		defer g.mu.Unlock()
		assert.LessOrEqual(t, len(g.recs.free)+len(g.recs.limbo), recMax, what)
		assert.LessOrEqual(t, cap(g.recs.free), recMax, what)
		assert.LessOrEqual(t, cap(g.recs.limbo), recMax, what)
		for _, lc := range g.recs.free {
			assert.Equal(t, liveConn{}, *lc, what)
		}
	}
	for i := range 10000 {
		h := uintptr(1 + i%7)
		admitRC(g, rc(h, fmt.Sprint("churn-", i), "u"), false)
		g.Disconnected(h)
	}
	check("after 10 000 cycles")
	const mass = 5000
	for i := range mass {
		admitRC(g, rc(uintptr(100+i), fmt.Sprint("mass-", i), "u"), false)
	}
	for i := range mass {
		g.Disconnected(uintptr(100 + i))
	}
	check("after a mass disconnect")
	g.mu.Lock()
	assert.Equal(t, recMax, len(g.recs.free))
	g.mu.Unlock()
	// During a scan: into limbo, within the same bound.
	for i := range mass {
		admitRC(g, rc(uintptr(100+i), fmt.Sprint("mass-", i), "u"), false)
	}
	g.mu.Lock()
	g.scanStartLocked(false)
	g.mu.Unlock()
	for i := range mass {
		g.Disconnected(uintptr(100 + i))
	}
	g.mu.Lock()
	assert.Equal(t, recMax, len(g.recs.limbo))
	g.mu.Unlock()
	check("during a scan")
	g.scanDone()
	check("after the scan")
	g.mu.Lock()
	assert.Equal(t, recMax, len(g.recs.free))
	assert.Empty(t, g.recs.limbo)
	g.mu.Unlock()
	assert.Zero(t, g.conns.len())
	assert.Zero(t, g.byID.len())
}

// Scans and kicks running while connections come and go at few pointers
// (each record reused many times): only banned clients are ever kicked,
// and under -race the scans' unlocked reads never meet a reuse's writes.
func TestScansWhileRecordsRecycle(t *testing.T) {
	var kr kickRecorder
	g := kickGuard(t, map[string]string{"backend": "defer", "clientid_conflict": "off"}, Output{Log: func(Level, string) {}, Kick: kr.kick})
	key := "guard:block:username:bad"
	require.NoError(t, g.replica.Put(key, "", time.Time{}))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			g.kickMatching(key, keys.Username, "bad")
			g.recheckConns()
		}
	}()
	for i := range 20000 {
		h := uintptr(1 + i%32)
		user := "good"
		if i%5 == 0 {
			user = "bad"
		}
		admitRC(g, rc(h, fmt.Sprint(user, "-", i), user), false)
		g.Disconnected(h)
	}
	close(stop)
	wg.Wait()
	for _, id := range kr.all() {
		assert.True(t, strings.HasPrefix(id, "bad-"), "kicked %s", id)
	}
}
