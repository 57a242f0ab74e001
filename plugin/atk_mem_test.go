package plugin

// Hostile tests of issue 12's smaller connection records (230b07a,
// f1d7cf1, 28e460e, 52eff01): g.conns as an open-addressing table walked
// with g.mu released, the username kept as a length after the client ID's
// bytes (read with unsafe), the IP kept as 16 bytes, the connection taken
// over in g.displaced.

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// atkProbes is the longest and the mean distance of a record from its
// home slot: what a lookup or an insertion reads on the broker thread.
func atkProbes(t *connTable) (maxP int, mean float64) {
	mask := len(t.slots) - 1
	n, sum := 0, 0
	for s, lc := range t.slots {
		if lc == nil || lc == connGone {
			continue
		}
		d := (s - t.home(lc.handle)) & mask
		maxP = max(maxP, d)
		sum += d
		n++
	}
	if n > 0 {
		mean = float64(sum) / float64(n)
	}
	return maxP, mean
}

// A hostile churn (connections that come and go, 200 000 of them) while a
// long scan keeps a walk open: the tombstones it leaves must not make the
// table grow without bound, nor the probe runs long; the walk opened
// before the churn still yields every record there all through.
func TestAtkMemChurnDuringWalkBounded(t *testing.T) {
	tb := newConnTable()
	const stable = 2000
	recs := map[uintptr]*liveConn{}
	for i := range stable {
		lc := &liveConn{handle: uintptr(0x10000 + 0x40*i)}
		tb.put(lc)
		recs[lc.handle] = lc
	}
	peak := len(tb.slots)
	w := tb.walk()
	rng := rand.New(rand.NewPCG(5, 6))
	var churn []uintptr
	next := uintptr(0x7000000)
	for range 200000 {
		if len(churn) < 500 || rng.IntN(2) == 0 {
			next += 0x40
			tb.put(&liveConn{handle: next})
			churn = append(churn, next)
		} else {
			k := rng.IntN(len(churn))
			tb.del(churn[k])
			churn[k] = churn[len(churn)-1]
			churn = churn[:len(churn)-1]
		}
		peak = max(peak, len(tb.slots))
		require.LessOrEqual(t, (tb.live+tb.gone)*4, len(tb.slots)*3, "load with tombstones over 3/4: a lookup may never meet an empty slot")
	}
	maxP, mean := atkProbes(&tb)
	t.Logf("slots %d (peak %d) live %d tombstones %d; probe max %d mean %.2f", len(tb.slots), peak, tb.live, tb.gone, maxP, mean)
	assert.LessOrEqual(t, peak, 16384, "the table grows with the churn, not with the live records (~3 000)")
	assert.Less(t, mean, 4.0, "mean probe run under tombstones")
	assert.Less(t, maxP, 200, "longest probe run under tombstones")
	seen := map[uintptr]bool{}
	for lc := w.next(); lc != nil; lc = w.next() {
		seen[lc.handle] = true
	}
	w.done()
	for h := range recs {
		require.True(t, seen[h], "record %#x there all through the walk not yielded", h)
	}
	// Walks closed: the next deletions leave a table sized by its records.
	for _, h := range churn {
		tb.del(h)
	}
	for h := range recs {
		tb.del(h)
	}
	assert.Equal(t, connTableMin, len(tb.slots))
	assert.Zero(t, tb.len())
}

// Handles that all share one home slot, the last one (probe runs wrap
// around the slice's end), under insertions, deletions with and without
// walks, nested walks across growth and an attempted shrink: get agrees
// with a map, and each walk yields every record there all through it.
func TestAtkMemCollidingHandlesNestedWalks(t *testing.T) {
	tb := newConnTable()
	tb.put(&liveConn{handle: 1})
	tb.del(1) // slots made: home() has its shift
	last := len(tb.slots) - 1
	var hs []uintptr
	for h := uintptr(0x1000); len(hs) < 40; h += 8 {
		if tb.home(h) == last {
			hs = append(hs, h)
		}
	}
	model := map[uintptr]*liveConn{}
	put := func(h uintptr) { lc := &liveConn{handle: h}; tb.put(lc); model[h] = lc }
	del := func(h uintptr) { tb.del(h); delete(model, h) }
	check := func(step string) {
		require.Equal(t, len(model), tb.len(), step)
		for h, lc := range model {
			require.Same(t, lc, tb.get(h), "%s: %#x", step, h)
		}
	}
	for _, h := range hs[:20] {
		put(h)
	}
	check("colliding puts")
	for _, h := range hs[:20] {
		if h%16 == 0 {
			del(h) // backward shifts across the wrap
		}
	}
	check("shifted deletions")
	stable := map[uintptr]bool{}
	for h := range model {
		stable[h] = true
	}
	w1 := tb.walk()
	first := w1.next() // w1 has read one record
	require.NotNil(t, first)
	for _, h := range hs[20:] {
		put(h) // collide with the walked run
	}
	// Many others: the table grows while w1 reads its old slice.
	for i := range 3000 {
		put(uintptr(0x900000 + 0x40*i))
	}
	w2 := tb.walk()
	for i := range 2900 {
		del(uintptr(0x900000 + 0x40*i)) // tombstones; no shrink: walks open
	}
	check("deleted during walks")
	seen1 := map[uintptr]bool{first.handle: true}
	for lc := w1.next(); lc != nil; lc = w1.next() {
		seen1[lc.handle] = true
	}
	w1.done()
	for h := range stable {
		require.True(t, seen1[h], "w1 missed %#x", h)
	}
	// w2 still open: deletions keep tombstones and nothing moves.
	for _, h := range hs[20:30] {
		del(h)
	}
	check("deleted after w1")
	seen2 := map[uintptr]bool{}
	for lc := w2.next(); lc != nil; lc = w2.next() {
		seen2[lc.handle] = true
	}
	w2.done()
	for h := range model {
		if h < 0x900000 || h >= 0x900000+0x40*2900 {
			require.True(t, seen2[h], "w2 missed %#x", h)
		}
	}
	for h := range model {
		if h >= 0x900000 {
			del(h)
		}
	}
	check("after walks")
	assert.Equal(t, connTableMin, len(tb.slots), "shrunk once no walk is open")
}

// Two ban scans at once (the second started while the first is paused,
// g.mu released), and meanwhile devices leave, a fleet joins (the table
// grows) and leaves again: every device connected all through is flagged
// by one of them.
func TestAtkMemConcurrentBanScans(t *testing.T) {
	var kr kickRecorder
	g := kickGuard(t, map[string]string{"backend": "defer"}, Output{Log: func(Level, string) {}, Kick: kr.kick})
	const held = 1500
	h := func(i int) uintptr { return uintptr(0x7f0000001000 + 0x400*i) }
	admit := func(i int, id, user string) {
		a := netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)})
		g.admit(&Client{Handle: h(i), ClientID: id, Username: user, HasUsername: true, Address: a.String()}, a, false, false)
	}
	for i := range held {
		admit(i, fmt.Sprint("dev-", i), fmt.Sprint("u", i%2))
	}
	left := map[int]bool{}
	rng := rand.New(rand.NewPCG(7, 8))
	pauses, depth := 0, 0
	g.recs.pause = func() {
		pauses++
		if pauses > 6 || depth > 0 {
			return
		}
		depth++
		defer func() { depth-- }()
		for range 100 {
			i := rng.IntN(held)
			left[i] = true
			g.Disconnected(h(i))
		}
		base := held + pauses*4000
		for k := range 4000 {
			admit(base+k, fmt.Sprint("new-", base+k), "u0")
		}
		if pauses == 1 {
			// A second scan, inside the first's pause: both walks open.
			ban(t, g, keys.Username, "u1")
		}
		for k := range 3900 {
			g.Disconnected(h(base + k))
		}
	}
	ban(t, g, keys.CIDR, "10.2.0.0/16")
	require.GreaterOrEqual(t, pauses, 3)
	g.mu.Lock()
	defer g.mu.Unlock()
	assert.Zero(t, g.conns.walks)
	var missed []int
	for i := range held {
		if left[i] {
			continue
		}
		if lc := g.conns.get(h(i)); lc == nil || !lc.flagged {
			missed = append(missed, i)
		}
	}
	assert.Empty(t, missed, "devices connected all through two ban scans, not flagged")
}

// Hostile client IDs and usernames, as cgo makes them (IDs) and not, and
// IDs that are not the two end to end: the record gives back exactly what
// was admitted, also after a collection (the client's own strings gone)
// and when its record is reused by a client with other lengths.
func TestAtkMemIDsHostile(t *testing.T) {
	g, _, _, _ := newGuard(t, map[string]string{"backend": "defer"})
	ip := netip.MustParseAddr("192.0.2.7")
	big := strings.Repeat("A", 65535)
	type idc struct{ id, user, ids string }
	cases := []idc{
		{"", "", ""},
		{"", "bob", "bob"},
		{"dev", "", "dev"},
		{big, "u", big + "u"},
		{"d", big, "d" + big},
		{big, big, big + big},
		{"a\x00b", "\x00", "a\x00b\x00"},
		{"device-alice", "alice", "device-alicealice"}, // the username a suffix of the client ID
		{"alicealice", "alice", ""},
		// IDs that are not the two end to end: ignored, a copy made.
		{"dev", "bob", "devbo"},
		{"dev", "bob", "devbobX"},
		{"dev", "bob", "debbob"},
		{"dev", "bob", "dev" + "bob" + big},
		{"dev", "bob", "bob" + "dev"},
		{"de", "vbob", "devbob"}, // another split of one string: consistent
	}
	check := func(round int) {
		g.mu.Lock()
		defer g.mu.Unlock()
		for i, c := range cases {
			lc := g.conns.get(uintptr(1000*round + i + 1))
			require.NotNil(t, lc, "%d", i)
			require.Equal(t, c.id, lc.clientID, "round %d case %d", round, i)
			require.Equal(t, c.user, lc.username(), "round %d case %d", round, i)
			assert.True(t, matches(lc, keys.Username, c.user, netip.Prefix{}), "%d", i)
			assert.Equal(t, c.id, queryOf(lc).ClientID)
		}
	}
	for round := range 3 {
		for i, c := range cases {
			cli := Client{Handle: uintptr(1000*round + i + 1), ClientID: c.id, Username: c.user, HasUsername: true, IDs: c.ids}
			if c.ids == c.id+c.user && c.ids != "" {
				// as cgo makes them: slices of IDs
				cli.ClientID, cli.Username = c.ids[:len(c.id)], c.ids[len(c.id):]
			}
			g.admit(&cli, ip, false, false)
		}
		runtime.GC()
		check(round)
		// Ended: their records are kept for reuse, and the next round's
		// clients (other lengths, in reverse) take them.
		for i := range cases {
			g.Disconnected(uintptr(1000*round + i + 1))
		}
		g.mu.Lock()
		require.NotEmpty(t, g.recs.free, "records kept for reuse")
		g.mu.Unlock()
		for i, j := 0, len(cases)-1; i < j; i, j = i+1, j-1 {
			cases[i], cases[j] = cases[j], cases[i]
		}
	}
}

// A record reused after a client with a long username must not read past
// a new client's strings: one with no username, one with an empty one, one
// whose IDs ends at the client ID.
func TestAtkMemReusedRecordUsername(t *testing.T) {
	g, _, _, _ := newGuard(t, map[string]string{"backend": "defer"})
	ip := netip.MustParseAddr("192.0.2.8")
	g.admit(new(cl(1, "192.0.2.8", "d", strings.Repeat("x", 4096), "")), ip, false, false)
	g.Disconnected(1)
	for i, c := range []Client{
		{Handle: 2, ClientID: "d2"},
		{Handle: 3, ClientID: "d3", HasUsername: true},
		{Handle: 4, ClientID: "d4", IDs: "d4"},
	} {
		g.admit(&c, ip, false, false)
		g.mu.Lock()
		lc := g.conns.get(c.Handle)
		require.Equal(t, c.ClientID, lc.clientID, "%d", i)
		require.Equal(t, "", lc.username(), "%d", i)
		require.Zero(t, lc.userLen, "%d", i)
		g.mu.Unlock()
	}
}

// Takeover chains: a client ID taken over again and again, the old
// connections leaving with their sessions kept (offline), or dropped by the
// broker later, or never told: g.displaced holds at most the newest
// takeover, and never names a record out of g.conns or kept for reuse.
func TestAtkMemDisplacedBounded(t *testing.T) {
	g, _, _, _ := newGuard(t, map[string]string{"backend": "defer"})
	ip := netip.MustParseAddr("192.0.2.9")
	rng := rand.New(rand.NewPCG(9, 10))
	alive, offline := []uintptr{}, []uintptr{}
	check := func(step int) {
		g.mu.Lock()
		defer g.mu.Unlock()
		require.LessOrEqual(t, len(g.displaced), 8, "step %d: g.displaced grows", step)
		free := map[*liveConn]bool{}
		for _, lc := range g.recs.free {
			free[lc] = true
		}
		for k, v := range g.displaced {
			require.Same(t, k, g.conns.get(k.handle), "step %d: a key out of g.conns", step)
			require.False(t, free[k] || free[v], "step %d: names a record kept for reuse", step)
			require.Same(t, v, g.conns.get(v.handle), "step %d: a value out of g.conns", step)
		}
	}
	for step := range 3000 {
		id := fmt.Sprint("chain-", rng.IntN(4))
		h := uintptr(0x5000 + 0x10*step)
		if rng.IntN(5) == 0 && len(offline) > 0 {
			k := rng.IntN(len(offline)) // the broker reuses a pointer of a session it freed silently
			h = offline[k]
			offline[k] = offline[len(offline)-1]
			offline = offline[:len(offline)-1]
		}
		g.admit(new(cl(h, "192.0.2.9", id, "u", "")), ip, false, false)
		alive = append(alive, h)
		for len(alive) > 0 && rng.IntN(3) > 0 {
			k := rng.IntN(len(alive))
			switch rng.IntN(3) {
			case 0:
				g.Disconnected(alive[k])
			case 1:
				g.DisconnectedKeepSession(alive[k])
				offline = append(offline, alive[k])
			default:
				g.DisconnectedKeepSession(alive[k])
				g.Disconnected(alive[k]) // the session dropped too
			}
			alive[k] = alive[len(alive)-1]
			alive = alive[:len(alive)-1]
		}
		check(step)
	}
}

// Every form of IP comes back as it was admitted, and a ban by ip or cidr
// matches the record as it matches the address itself.
func TestAtkMemIPFormsMatch(t *testing.T) {
	g, _, _, _ := newGuard(t, map[string]string{"backend": "defer"})
	forms := []string{"192.0.2.1", "0.0.0.0", "255.255.255.255", "2001:db8::1", "::", "::1",
		"::ffff:192.0.2.1", "::ffff:0:0", "::192.0.2.1", "64:ff9b::192.0.2.1", "fe80::1%eth0", "fe80::1%1",
		"::ffff:192.0.2.1%eth0", "ff02::1"}
	prefixes := []string{"192.0.2.0/24", "0.0.0.0/0", "::/0", "::ffff:0:0/96", "2001:db8::/32", "fe80::/10", "::/96"}
	for i, f := range forms {
		ip := netip.MustParseAddr(f)
		hd := uintptr(7000 + i)
		g.admit(&Client{Handle: hd, ClientID: f, Address: f}, ip, false, false)
		g.mu.Lock()
		lc := g.conns.get(hd)
		g.mu.Unlock()
		require.Equal(t, ip, lc.ipAddr(), f)
		require.Equal(t, ip.Zone(), lc.ipAddr().Zone(), f)
		require.Equal(t, ip.Is4In6(), lc.ipAddr().Is4In6(), f)
		assert.True(t, matches(lc, keys.IP, ip.String(), netip.Prefix{}), f)
		for _, p := range prefixes {
			pp := netip.MustParsePrefix(p)
			assert.Equal(t, pp.Contains(ip), matches(lc, keys.CIDR, p, pp), "%s in %s", f, p)
		}
	}
	g.admit(&Client{Handle: 7999, ClientID: "unix", Address: "/run/mosquitto.sock"}, netip.Addr{}, false, false)
	g.mu.Lock()
	lc := g.conns.get(7999)
	g.mu.Unlock()
	assert.False(t, lc.ipAddr().IsValid())
	assert.Equal(t, "/run/mosquitto.sock", lc.addr)
	assert.False(t, matches(lc, keys.CIDR, "0.0.0.0/0", netip.MustParsePrefix("0.0.0.0/0")))
	assert.False(t, matches(lc, keys.CIDR, "::/0", netip.MustParsePrefix("::/0")))
}

// A deletion just behind a walk's position, of the first record of a run
// whose next record has the same home: that record must still be yielded
// (with a backward shift during the walk it moves behind the position and
// is missed). The model tests did not catch that shift: their random
// tables rarely put a run across a walk's position.
func TestAtkMemWalkDeleteBehindCursor(t *testing.T) {
	tb := newConnTable()
	tb.put(&liveConn{handle: 1})
	tb.del(1)
	home := 10
	var hs []uintptr
	for h := uintptr(0x2000); len(hs) < 3; h += 8 {
		if tb.home(h) == home {
			hs = append(hs, h)
		}
	}
	for _, h := range hs {
		tb.put(&liveConn{handle: h})
	}
	w := tb.walk()
	require.Equal(t, hs[0], w.next().handle)
	tb.del(hs[0])
	var rest []uintptr
	for lc := w.next(); lc != nil; lc = w.next() {
		rest = append(rest, lc.handle)
	}
	w.done()
	assert.ElementsMatch(t, hs[1:], rest, "records there all through the walk")
}

// The same through a ban's scan: the last record of the scan's first
// chunk (kickScan records) leaves while the scan is paused;
// a device that came after it in its run, connected all through, must
// still be kicked.
func TestAtkMemBanScanKickedLeaveBehindCursor(t *testing.T) {
	// The table's hash is keyed per process: a layout where slot p+1 is
	// free (the device lands there, right after the scan's position) is
	// found in a few tries.
	for try := 0; ; try++ {
		require.Less(t, try, 50, "no layout with a free slot after the pause's position")
		if atkBanScanBehindCursor(t) {
			return
		}
	}
}

func atkBanScanBehindCursor(t *testing.T) bool {
	var kr kickRecorder
	g := kickGuard(t, map[string]string{"backend": "defer"}, Output{Log: func(Level, string) {}, Kick: kr.kick})
	ip := netip.MustParseAddr("10.3.0.1")
	admit := func(h uintptr, id string) {
		g.admit(&Client{Handle: h, ClientID: id, Username: "fleet", HasUsername: true, Address: ip.String()}, ip, false, false)
	}
	for i := range 600 {
		admit(uintptr(0x7f0000001000+0x400*i), fmt.Sprint("dev-", i))
	}
	// The kickScan-th record in slot order: where the first pause comes.
	g.mu.Lock()
	n, p := 0, -1
	for s, lc := range g.conns.slots {
		if lc != nil && lc != connGone {
			if n++; n == kickScan {
				p = s
				break
			}
		}
	}
	require.GreaterOrEqual(t, p, 0)
	if p+1 >= len(g.conns.slots) || g.conns.slots[p+1] != nil {
		g.mu.Unlock()
		return false
	}
	atP := g.conns.slots[p].handle
	// A device whose home is p goes to p+1, right after the scan's
	// position at its pause.
	var y uintptr
	for h := uintptr(0x6000000000); ; h += 0x400 {
		if g.conns.home(h) == p {
			y = h
			break
		}
	}
	g.mu.Unlock()
	admit(y, "follower")
	paused := false
	g.recs.pause = func() {
		if !paused {
			paused = true
			g.Disconnected(atP) // the last record the scan read leaves
		}
	}
	ban(t, g, keys.CIDR, "10.3.0.0/16")
	require.True(t, paused)
	assert.Contains(t, kr.all(), "follower", "a device connected all through the ban's scan, not kicked")
	return true
}

// Broker pointers are aligned and often evenly spaced (an allocator's
// size class, pages, mappings): no stride makes them pile up in the
// table.
func TestAtkMemHandleStrides(t *testing.T) {
	for _, stride := range []uintptr{16, 0x400, 0x1000, 1 << 20, 1 << 32, 1<<32 + 16} {
		tb := newConnTable()
		for i := range 20000 {
			tb.put(&liveConn{handle: 0x7f0000000000 + stride*uintptr(i)})
		}
		maxP, mean := atkProbes(&tb)
		t.Logf("stride %#x: slots %d, probe max %d mean %.2f", stride, len(tb.slots), maxP, mean)
		assert.Less(t, mean, 3.0, "stride %#x", stride) // 0x10: ~2 (8 runs)
		assert.Less(t, maxP, 256, "stride %#x", stride) // 1<<32+16: 11 to 95 (8 runs, keyed hash)
	}
}
