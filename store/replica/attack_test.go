package replica

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

	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// Issue 12 attack: the lookup shortcuts (counts per list and scope, lists
// skipped when empty) must never hide a ban. These tests compare every
// lookup with a brute-force answer over the keys the replica was given
// (a model kept beside it, no replica code involved): for each candidate
// key of the client, as store.candidates lists them, is it held and live.
// Unlike TestExactCountsFollowTheKeys, the answer does not come from the
// replica's own lookup with the counts forced up, and the run generates
// what that test does not: ranges of every length (including /0 and the
// single address), both families, empty claims, claims that are hashed
// forms, keys refused by Put (non-canonical, other prefixes, unknown
// scopes), user and throttle keys beside the lists, re-puts of a key with
// another expiry, expiries already past, sweeps concurrent with the
// changes, and lookups concurrent with all of it (run with -race).

// model is the set of keys Put accepted, as Redis would hold them.
type model map[string]slot

func (m model) live(key string, now int64) (slot, bool) {
	e, ok := m[key]
	return e, ok && e.live(now)
}

// oracle answers q from m by trying every candidate key.
func (m model) oracle(q store.Query, now int64) store.Answer {
	var a store.Answer
	var allows, blocks []*store.Match
	for _, kind := range []keys.Kind{keys.Allow, keys.Block} {
		var found []*store.Match
		try := func(scope keys.Scope, value string) bool {
			k := kb.List(kind, scope, value)
			if e, ok := m.live(k, now); ok {
				found = append(found, match(kind, scope, value, k, e, now))
				return true
			}
			return false
		}
		// A claim's tracking form: block keys only (automatic bans are
		// written so); allow keys match the value exactly (atk48).
		claim := func(scope keys.Scope, value string) {
			if !try(scope, value) && kind == keys.Block {
				if t := keys.Tracking(value); t != value {
					try(scope, t)
				}
			}
		}
		claim(keys.ClientID, q.ClientID)
		if q.HasUsername {
			claim(keys.Username, q.Username)
		}
		if keys.IsCertID(q.Cert) {
			try(keys.Cert, q.Cert)
		}
		if q.IP.IsValid() {
			try(keys.IP, q.IP.String())
			for _, p := range keys.Prefixes(q.IP) {
				if try(keys.CIDR, p.String()) {
					break // the narrowest range only
				}
			}
		}
		if kind == keys.Allow {
			allows = found
		} else {
			blocks = found
		}
	}
	a.Allow, a.Block = store.Resolve(allows, blocks)
	return a
}

// attackPools are the values the random runs draw from.
type attackPools struct {
	claims  []string
	certs   []string
	ips     []string
	cidrs   []string
	refused []string // keys Put must refuse or ignore as list keys
	others  []string // user and throttle keys: held, but no list key
}

func newAttackPools() attackPools {
	long := strings.Repeat("L", 300)
	return attackPools{
		claims: []string{"", "d1", "d2", "alice", long, keys.Tracking(long), "sha256:x", "a:b", strings.Repeat("x", 256)},
		certs:  []string{fmt.Sprintf("%064x", 7), fmt.Sprintf("%064x", 8)},
		ips:    []string{"192.0.2.1", "192.0.2.2", "10.0.0.1", "0.0.0.0", "2001:db8::1", "::1", "::"},
		cidrs: []string{"0.0.0.0/0", "192.0.2.0/24", "192.0.2.0/25", "192.0.2.1/32", "192.0.2.2/31", "10.0.0.0/8",
			"::/0", "2001:db8::/32", "2001:db8::1/128", "::1/128", "::/127"},
		refused: []string{
			"guard:block:ip:2001:DB8::1", "guard:block:ip:::ffff:192.0.2.1", "guard:allow:ip:192.0.2.01",
			"guard:block:cidr:192.0.2.1/24", "guard:block:cidr:::ffff:0.0.0.0/96", "guard:block:cidr:nonsense",
			"guard:block:cert:" + strings.Repeat("A", 64), "guard:allow:cert:short",
			"other:block:ip:192.0.2.1", "guard:blocks:ip:192.0.2.1", "guard:block:IP:192.0.2.1",
			"guard:block:clientid", "guard:block", "guard:offences:ip:192.0.2.1", "guard:fail:ip:192.0.2.1",
		},
		others: []string{"guard:user:alice", "guard:user:d1", "guard:throttle:username:alice", "guard:throttle:username:"},
	}
}

func (p attackPools) key(rng *rand.Rand) string {
	if rng.IntN(10) == 0 {
		if rng.IntN(2) == 0 {
			return p.refused[rng.IntN(len(p.refused))]
		}
		return p.others[rng.IntN(len(p.others))]
	}
	kind := keys.Block
	if rng.IntN(2) == 0 {
		kind = keys.Allow
	}
	switch rng.IntN(5) {
	case 0:
		return kb.List(kind, keys.ClientID, p.claims[rng.IntN(len(p.claims))])
	case 1:
		return kb.List(kind, keys.Username, p.claims[rng.IntN(len(p.claims))])
	case 2:
		return kb.List(kind, keys.Cert, p.certs[rng.IntN(len(p.certs))])
	case 3:
		return kb.List(kind, keys.IP, p.ips[rng.IntN(len(p.ips))])
	}
	return kb.List(kind, keys.CIDR, p.cidrs[rng.IntN(len(p.cidrs))])
}

func (p attackPools) query(rng *rand.Rand) store.Query {
	qq := store.Query{ClientID: p.claims[rng.IntN(len(p.claims))]}
	if rng.IntN(4) > 0 {
		qq.Username, qq.HasUsername = p.claims[rng.IntN(len(p.claims))], true
	}
	if rng.IntN(3) == 0 {
		qq.Cert = p.certs[rng.IntN(len(p.certs))]
	}
	if rng.IntN(6) > 0 {
		qq.IP = netip.MustParseAddr(p.ips[rng.IntN(len(p.ips))])
	}
	return qq
}

// isListKey says whether key is an allow or block key Put stores.
func isListKey(key string) bool {
	_, _, _, ok := kb.Split(key)
	return ok
}

// sameAnswer compares the list part of two answers (the throttles and
// users are not counted, and not under attack here).
func sameAnswer(t *testing.T, want, got store.Answer, msg string, args ...any) {
	t.Helper()
	require.Equal(t, want.Allow, got.Allow, "allow: "+fmt.Sprintf(msg, args...))
	require.Equal(t, want.Block, got.Block, "block: "+fmt.Sprintf(msg, args...))
}

// Every lookup of a random run answers as the brute-force oracle over the
// keys Put accepted, with sweeps running concurrently and lookups hammering
// from other goroutines (go test -race).
func TestLookupAnswersAsBruteForce(t *testing.T) {
	for seed := uint64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { attackRun(t, seed, 4000) })
	}
}

func attackRun(t *testing.T, seed uint64, steps int) {
	rng := rand.New(rand.NewPCG(seed, 99))
	pools := newAttackPools()
	base := time.UnixMilli(1_700_000_000_000)
	var nowMs atomic.Int64
	nowMs.Store(base.UnixMilli())
	now := func() time.Time { return time.UnixMilli(nowMs.Load()) }

	r := New(kb)
	m := model{}
	put := func(r *Replica, m model, key string) {
		var exp time.Time
		switch rng.IntN(4) {
		case 0:
			exp = now().Add(time.Duration(1+rng.IntN(30_000)) * time.Millisecond)
		case 1:
			exp = now().Add(-time.Duration(rng.IntN(1000)) * time.Millisecond) // already past (or now)
		}
		val := fmt.Sprintf("v%d", rng.IntN(3))
		err := r.Put(key, val, exp)
		if err == nil && isListKey(key) {
			m[key] = toSlot(val, exp)
		}
		if isListKey(key) && (exp.IsZero() || exp.After(now())) {
			// A list key is either stored or refused with an error (one
			// already expired may be swept at once).
			_, held := r.Get(key)
			require.Equal(t, err == nil, held, "%s: %v", key, err)
		}
	}

	// Lookups from other goroutines while the run changes the replica.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < 2; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			lr := rand.New(rand.NewPCG(seed, uint64(g)))
			for {
				select {
				case <-stop:
					return
				default:
				}
				_ = r.Lookup(pools.query(lr), now())
				_, _ = r.Lists()
				time.Sleep(time.Microsecond)
			}
		}(g)
	}
	// Sweeps concurrent with the changes: they drop only what is expired
	// at a time no later than the lookups', so no answer may change.
	var sweepMs atomic.Int64
	sweepMs.Store(nowMs.Load())
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			r.Sweep(time.UnixMilli(sweepMs.Load()))
			time.Sleep(20 * time.Microsecond)
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	for step := 0; step < steps; step++ {
		var op string
		switch x := rng.IntN(100); {
		case x < 45:
			op = "put"
			put(r, m, pools.key(rng))
		case x < 50:
			op = "re-put a held key"
			for k := range m {
				put(r, m, k)
				break
			}
		case x < 75:
			op = "delete"
			k := pools.key(rng)
			r.Delete(k)
			delete(m, k)
		case x < 80:
			op = "delete a held key"
			for k := range m {
				r.Delete(k)
				delete(m, k)
				break
			}
		case x < 92:
			op = "time passes"
			nowMs.Add(int64(rng.IntN(5000)))
			sweepMs.Store(nowMs.Load())
		case x < 96:
			op = "sweep"
			r.Sweep(now())
		default:
			op = "swap (a reload)"
			fresh, fm := New(kb), model{}
			for i := rng.IntN(15); i > 0; i-- {
				put(fresh, fm, pools.key(rng))
			}
			r.swap(fresh)
			m = fm
		}
		for i := 0; i < 6; i++ {
			qq := pools.query(rng)
			t0 := nowMs.Load()
			sameAnswer(t, m.oracle(qq, t0), r.Lookup(qq, time.UnixMilli(t0)), "seed %d step %d (%s): %+v", seed, step, op, qq)
		}
	}
	// Every ban the model holds is seen by a client that carries exactly it.
	t0 := nowMs.Load()
	for k := range m {
		kind, scope, value, _ := kb.Split(k)
		if _, ok := m.live(k, t0); !ok || kind != keys.Block {
			continue
		}
		var qq store.Query
		switch scope {
		case keys.ClientID:
			qq.ClientID = value
		case keys.Username:
			qq.Username, qq.HasUsername = value, true
		case keys.Cert:
			qq.Cert = value
		case keys.IP:
			qq.IP = netip.MustParseAddr(value)
		case keys.CIDR:
			qq.IP = netip.MustParsePrefix(value).Addr()
		}
		sameAnswer(t, m.oracle(qq, t0), r.Lookup(qq, time.UnixMilli(t0)), "final: %s", k)
	}
}
