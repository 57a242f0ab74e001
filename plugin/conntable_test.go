package plugin

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// g.conns against a Go map, under random insertions, replacements and
// deletions, with walks opened and closed among them: get and len agree
// with the map, and every walk yields every record that was in the table
// from its opening to its end (connTable's rule), through tombstones,
// growths and shrinkings of the table meanwhile.
func TestConnTableModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, 34))
	tab := newConnTable()
	model := map[uintptr]*liveConn{}
	type walk struct {
		w       *connWalk
		present map[uintptr]*liveConn // there since the walk opened
		seen    map[*liveConn]bool
	}
	var walks []*walk
	closeWalk := func(i int) {
		wk := walks[i]
		for lc := wk.w.next(); lc != nil; lc = wk.w.next() {
			wk.seen[lc] = true
		}
		wk.w.done()
		for h, lc := range wk.present {
			require.True(t, wk.seen[lc], "a walk missed handle %#x, there all through it", h)
		}
		walks = append(walks[:i], walks[i+1:]...)
	}
	handle := func() uintptr { return uintptr(0x7f0000001000 + 0x400*rng.IntN(3000)) }
	sizes := map[int]bool{}
	for step := 0; step < 200_000; step++ {
		// Phases: fill to a few thousand, then empty to a few, so that the
		// table grows and shrinks while walks are open.
		ins := 60
		if (step/20_000)%2 == 1 {
			ins = 20
		}
		switch op := rng.IntN(100); {
		case op < ins:
			lc := &liveConn{handle: handle()}
			tab.put(lc)
			model[lc.handle] = lc
			for _, wk := range walks { // replaced: no longer there all through
				delete(wk.present, lc.handle)
			}
		case op < 90:
			h := handle()
			tab.del(h)
			delete(model, h)
			for _, wk := range walks {
				delete(wk.present, h)
			}
		case op < 95 && len(walks) < 3:
			wk := &walk{w: tab.walk(), present: map[uintptr]*liveConn{}, seen: map[*liveConn]bool{}}
			for h, lc := range model {
				wk.present[h] = lc
			}
			walks = append(walks, wk)
		case len(walks) > 0 && op < 97:
			closeWalk(rng.IntN(len(walks)))
		default:
			for _, wk := range walks { // a batch of a scan
				for k := 0; k < 16; k++ {
					if lc := wk.w.next(); lc != nil {
						wk.seen[lc] = true
					}
				}
			}
		}
		sizes[len(tab.slots)] = true
		if step%997 == 0 {
			require.Equal(t, len(model), tab.len())
			for h, lc := range model {
				require.Same(t, lc, tab.get(h))
			}
			n := 0
			for lc := range tab.all() {
				require.Same(t, model[lc.handle], lc)
				n++
			}
			require.Equal(t, len(model), n)
		}
	}
	for len(walks) > 0 {
		closeWalk(0)
	}
	assert.Zero(t, tab.walks)
	assert.Greater(t, len(sizes), 3, "the table grew and shrank: %v", sizes)
	assert.Nil(t, tab.get(1))
}

// Issue 12: g.conns takes 8 bytes a slot, its slots at most twice its
// records after a growth (TestConnTableModel checks the rest): at 8 000
// records, 16 384 slots, 16 bytes a connection (a Go map took ~36).
func TestConnTableBytes(t *testing.T) {
	tab := newConnTable()
	for i := 0; i < 8000; i++ {
		tab.put(&liveConn{handle: uintptr(0x7f0000001000 + 0x400*i)})
	}
	assert.Equal(t, 16384, len(tab.slots))
	assert.Equal(t, uintptr(8), unsafe.Sizeof(tab.slots[0]))
	// A walk leaves tombstones; a fleet that leaves after it still
	// leaves its table (a scan reads at most 8 slots a record).
	w := tab.walk()
	for i := 0; i < 100; i++ {
		tab.del(uintptr(0x7f0000001000 + 0x400*i))
	}
	w.done()
	assert.Equal(t, 100, tab.gone)
	for i := 100; i < 7990; i++ {
		tab.del(uintptr(0x7f0000001000 + 0x400*i))
	}
	assert.Equal(t, connTableMin, len(tab.slots))
	assert.Zero(t, tab.gone)
	assert.Equal(t, 10, tab.len())
}

// A ban's scan, paused while it kicks (g.mu released): meanwhile devices
// leave (those it kicked, and others), many more connect (the table grows,
// twice), and some leave again (tombstones in the new table). Every device connected all through the
// scan and under the ban is kicked: a scan that missed one would leave a
// banned client connected. With backward-shift deletions during the scan,
// or the scan reading the grown table from its old position, it misses
// some.
func TestBanScanVisitsEveryConnectionThroughGrowth(t *testing.T) {
	var kr kickRecorder
	g := kickGuard(t, map[string]string{"backend": "defer"}, Output{Log: func(Level, string) {}, Kick: kr.kick})
	const held = 3000
	ip := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}) }
	admit := func(i int, id string) {
		a := ip(i)
		g.admit(&Client{Handle: uintptr(0x7f0000001000 + 0x400*i), ClientID: id, Username: "fleet", HasUsername: true, Address: a.String()}, a, false, false)
	}
	for i := 0; i < held; i++ {
		admit(i, fmt.Sprint("dev-", i))
	}
	left := map[int]bool{}
	pauses := 0
	rng := rand.New(rand.NewPCG(1, 2))
	dev := map[string]int{}
	for i := 0; i < held; i++ {
		dev[fmt.Sprint("dev-", i)] = i
	}
	g.recs.pause = func() {
		pauses++
		if pauses > 4 {
			return
		}
		// Devices leave: those kicked so far (the slots just behind the
		// scan among them, whose runs reach past it), and others anywhere.
		for _, id := range kr.all() {
			if i, ok := dev[id]; ok && !left[i] {
				left[i] = true
				g.Disconnected(uintptr(0x7f0000001000 + 0x400*i))
			}
		}
		for k := 0; k < 300; k++ {
			i := rng.IntN(held)
			left[i] = true
			g.Disconnected(uintptr(0x7f0000001000 + 0x400*i))
		}
		if pauses == 1 {
			return // the scan goes on in the same table, tombstones in it
		}
		for k := 0; k < 3000; k++ { // new ones: the table grows
			admit(held+(pauses-1)*3000+k, fmt.Sprint("new-", pauses, "-", k))
		}
		for k := 0; k < 500; k++ { // and some of them leave
			g.Disconnected(uintptr(0x7f0000001000 + 0x400*(held+(pauses-1)*3000+k)))
		}
	}
	g.mu.Lock()
	size := len(g.conns.slots)
	g.mu.Unlock()
	ban(t, g, keys.CIDR, "10.0.0.0/8")
	require.GreaterOrEqual(t, pauses, 4)
	g.mu.Lock()
	assert.Greater(t, len(g.conns.slots), 2*size, "the table grew during the scan")
	assert.Zero(t, g.conns.walks)
	g.mu.Unlock()
	kicked := map[string]bool{}
	for _, id := range kr.all() {
		kicked[id] = true
	}
	var missed []string
	for i := 0; i < held; i++ {
		if id := fmt.Sprint("dev-", i); !left[i] && !kicked[id] {
			missed = append(missed, id)
		}
	}
	assert.Empty(t, missed, "devices connected all through a ban's scan and not kicked")
}
