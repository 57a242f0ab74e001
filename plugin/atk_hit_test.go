package plugin

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// A hostile tester's attacks on issue 12's cache-hit cuts (branch atk-hit).

// The hash-sum memo (sumLocked, 7308f7c) against the collector reusing a
// dropped stored hash's memory for a new hash of the same length: each
// round stores a new hash (same length, other bytes) for a new password,
// drops the old string, pushes the memo's slots out with other strings so
// that the old one is freed, and collects. Whenever a new hash lands at an
// address an earlier one had, the memo must still give the new string's
// own sum, and the old password must miss.
func TestAtkHitMemoAddressReuse(t *testing.T) {
	c := newVerifyCache(1000)
	const rounds = 4000
	const hashLen = 112
	seen := map[uintptr]int{} // address -> round of the hash there
	reused, reusedSameSlot := 0, 0
	prevPW := []byte("pw-start")
	c.add("alice", prevPW, strings.Repeat("s", hashLen))
	var filler []string
	for r := 0; r < rounds; r++ {
		b := make([]byte, hashLen)
		copy(b, fmt.Sprintf("$7$101$%08d$", r))
		for i := 16; i < hashLen; i++ {
			b[i] = byte('A' + (r+i)%26)
		}
		h := string(b)
		p := uintptr(unsafe.Pointer(unsafe.StringData(h)))
		if _, ok := seen[p]; ok {
			reused++
			c.mu.Lock()
			if m := &c.sums[(p>>4)&(sumMemoSlots-1)]; len(m.s) == hashLen {
				reusedSameSlot++
			}
			c.mu.Unlock()
		}
		seen[p] = r
		pw := []byte(fmt.Sprintf("pw-%d", r))
		require.False(t, c.hit("alice", prevPW, h), "round %d: the old password hit the new hash", r)
		c.add("alice", pw, h)
		require.True(t, c.hit("alice", pw, h))
		c.mu.Lock()
		require.Equal(t, c.hashSum(h), c.sumLocked(h), "round %d: the memo's sum is another string's", r)
		c.mu.Unlock()
		prevPW = pw
		// Push other strings through the memo so that old hashes leave it.
		filler = filler[:0]
		for i := 0; i < 64; i++ {
			f := strings.Repeat(string(rune('a'+i%26)), hashLen)
			filler = append(filler, f)
			c.mu.Lock()
			c.sumLocked(f)
			c.mu.Unlock()
		}
		if r%8 == 7 {
			runtime.GC()
		}
	}
	t.Logf("%d rounds: %d new hashes at an address an earlier one had (%d with a %d-byte string in that memo slot); no stale sum, no old password hit", rounds, reused, reusedSameSlot, hashLen)
	require.NotZero(t, reused, "the collector never reused an address: the attack did not get its chance")
}

// The client-ID index (bf4bc4b) with hostile client IDs: 64 KiB, NUL
// bytes, invalid UTF-8, one a prefix of another, IDs that differ in their
// last byte only; lookup/putAt/delAt as admit and DISCONNECT use them,
// with the index growing and shrinking between, against a map.
func TestAtkHitIDIndexHostileIDs(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, 7))
	big := strings.Repeat("x", 64<<10)
	base := []string{"", "\x00", "\x00\x00", "a\x00b", "\xff\xfe", "\xc3", "\xc3\xa9", big, big + "y", big[:len(big)-1],
		big[:len(big)-1] + "\x00", "dev", "dev\x00", "de", "Dev"}
	ids := append([]string(nil), base...)
	for i := 0; i < 3000; i++ {
		ids = append(ids, fmt.Sprintf("fleet-%d\xff", i))
	}
	x := newIDIndex()
	model := map[string]*liveConn{}
	for step := 0; step < 60000; step++ {
		id := ids[rng.IntN(len(ids))]
		if step > 40000 && rng.IntN(4) != 0 { // the fleet leaves: shrink
			id = ids[rng.IntN(len(base))]
		}
		switch rng.IntN(3) {
		case 0: // admit: lookup then putAt
			lc := &liveConn{clientID: strings.Clone(id)}
			prev, at := x.lookup(lc.clientID)
			require.Same(t, model[id], prev)
			x.putAt(at, lc)
			model[id] = lc
		case 1: // DISCONNECT: lookup then delAt
			h, at := x.lookup(id)
			require.Same(t, model[id], h)
			if at.ok {
				x.delAt(at)
				delete(model, id)
			}
		default:
			for id := range model {
				if rng.IntN(3) == 0 {
					x.del(id)
					delete(model, id)
				}
				break
			}
		}
		if step%5000 == 0 || step == 59999 {
			require.Equal(t, len(model), x.len())
			for id, lc := range model {
				require.Same(t, lc, x.get(id), "client ID of %d bytes", len(id))
			}
		}
	}
	t.Logf("60 000 steps over %d client IDs (64 KiB, NUL, invalid UTF-8, prefixes): the index agrees with a map; %d slots at the end", len(ids), len(x.slots))
}

// The IPv4 text taken from the broker's (c62ef38) against the forms an
// address may come in: an IPv4-mapped IPv6 address (a dual-stack socket:
// Mosquitto's own listeners set IPV6_V6ONLY, libwebsockets' may not), in
// lower and upper case, and the plain dotted quad. One device is one
// known source and one conflict-tracking address whichever form the broker
// gives, and bans by ip and by cidr refuse every form.
func TestAtkHitIPFormsOneSource(t *testing.T) {
	g, st, _, _ := newGuard(t, nil)
	forms := []string{"192.0.2.7", "::ffff:192.0.2.7", "::FFFF:192.0.2.7", "::ffff:c000:207"}
	for i, a := range forms {
		c := cl(uintptr(0x1000+i), a, fmt.Sprintf("dev-%d", i), "alice", "alice-pw")
		require.Equal(t, Allow, g.Authenticate(c).Result, a)
		require.Equal(t, "192.0.2.7", addrString(&c, mustIP(t, a)), a)
	}
	for _, a := range forms { // the known-source key (succeededFrom's)
		require.Equal(t, "ip:192.0.2.7", string(appendIPText([]byte("ip:"), mustIP(t, a), a)), a)
	}
	for _, key := range []string{"guard:block:ip:192.0.2.7", "guard:block:cidr:192.0.2.0/24"} {
		st.set(key, "atk")
		for i, a := range forms {
			d := g.Authenticate(cl(uintptr(0x2000+i), a, fmt.Sprintf("b-%d", i), "alice", "alice-pw"))
			require.Equal(t, Deny, d.Result, "%s from %s", key, a)
			require.Equal(t, key, d.Rule, a)
		}
		st.mu.Lock()
		delete(st.keys, key)
		st.mu.Unlock()
	}
}

func mustIP(t *testing.T, s string) netip.Addr {
	t.Helper()
	ip, err := keys.NormalizeIP(s)
	require.NoError(t, err)
	return ip
}

// slowStore is a fakeStore whose Lookup takes d on the guard's clock: a
// slow round trip to Redis on the broker thread.
type slowStore struct {
	*fakeStore
	advance func()
}

func (s *slowStore) Lookup(ctx context.Context, q store.Query) (store.Answer, error) {
	s.advance()
	return s.fakeStore.Lookup(ctx, q)
}

// One clock read for a CONNECT's checks (b3ed7a5), against a slow Redis:
// the fail-limit window is judged at the time after the lists' round trip,
// not before it. A source that failed fail_limit+1 times at t0 and comes
// back just before the window ends, through a lookup that takes it past the
// end, has its password checked; the same CONNECT with a fast lookup is
// still refused (the control).
func TestAtkHitClockAfterSlowLookup(t *testing.T) {
	for _, slow := range []bool{false, true} {
		cfg, err := config.Parse(map[string]string{"password_file": passwdFile(t), "fail_limit": "2", "fail_window": "10s"})
		require.NoError(t, err)
		var mu sync.Mutex
		at := time.Unix(1_800_000_000, 0)
		now := func() time.Time { mu.Lock(); defer mu.Unlock(); return at }
		step := func(d time.Duration) { mu.Lock(); at = at.Add(d); mu.Unlock() }
		st := &slowStore{fakeStore: newFakeStore(), advance: func() {}}
		g, err := NewWith(cfg, Output{Log: (&logSink{}).log}, Deps{Store: st, Counter: &fakeCounter{}})
		require.NoError(t, err)
		g.now = now
		for i := 0; i < 3; i++ {
			g.Authenticate(cl(uintptr(i+1), "192.0.2.90", "c", "alice", "guess"))
		}
		require.Equal(t, RuleFailLimit, g.Authenticate(cl(9, "192.0.2.90", "c", "alice", "alice-pw")).Rule, "the limit holds within the window")
		step(9900 * time.Millisecond)
		if slow {
			st.advance = func() { step(300 * time.Millisecond) }
		}
		d := g.Authenticate(cl(10, "192.0.2.90", "c", "alice", "alice-pw"))
		if slow {
			require.Equal(t, Allow, d.Result, "the window ended during the round trip: judged on a stale clock (%s)", d.Rule)
		} else {
			require.Equal(t, RuleFailLimit, d.Rule, "control: still inside the window")
		}
		g.Close()
	}
}

// Issue 12: a cache hit reads the guard's clock once for its checks and
// what it records; a miss reads it again after the password's hash,
// which takes milliseconds, so that what it records is not that much
// older than the admission. Before, the hit read it twice too (a clock
// read is about 0.1 k instructions of the broker thread).
func TestCacheHitReadsClockOnce(t *testing.T) {
	cfg, err := config.Parse(map[string]string{"password_file": passwdFile(t)})
	require.NoError(t, err)
	g, err := NewWith(cfg, Output{Log: (&logSink{}).log}, Deps{Store: newFakeStore(), Counter: &fakeCounter{}})
	require.NoError(t, err)
	defer g.Close()
	var reads atomic.Int64
	base := time.Now()
	g.now = func() time.Time { reads.Add(1); return base }
	connect := func(h uintptr) int64 {
		reads.Store(0)
		d := g.Authenticate(cl(h, "192.0.2.91", "dev-clock", "alice", "alice-pw"))
		require.Equal(t, Allow, d.Result, d.Rule)
		n := reads.Load()
		g.Disconnected(h)
		return n
	}
	// The fake store's lookups are round trips (no replica loaded), after
	// which the clock is read again too: counted alike in both.
	miss := connect(1)
	require.Equal(t, miss-1, connect(2), "a hit: no read after its password check (the miss read %d)", miss)
}
