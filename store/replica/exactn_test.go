package replica

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// Issue 12: a lookup skips a list that holds no key (lists) and the scopes
// of a list that hold no exact key (exactN). A count one short would hide a
// ban, so after every Put, Delete, Sweep and swap of a random run the
// counts equal a recount of the keys held, and every lookup answers as one
// that reads every list and scope.
func TestExactCountsFollowTheKeys(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, 34))
	cert := fmt.Sprintf("%064x", 7)
	long := string(make([]byte, 300)) // a claim looked up by its tracking form too
	values := map[keys.Scope][]string{
		keys.ClientID: {"d1", "d2", keys.Tracking(long)},
		keys.Username: {"alice", "bob", keys.Tracking(long)},
		keys.Cert:     {cert},
		keys.IP:       {"192.0.2.1", "192.0.2.2", "2001:db8::1"},
		keys.CIDR:     {"192.0.2.0/24", "2001:db8::/32"},
	}
	scopes := []keys.Scope{keys.ClientID, keys.Username, keys.Cert, keys.IP, keys.CIDR}
	randomKey := func() string {
		kind := keys.Block
		if rng.IntN(2) == 0 {
			kind = keys.Allow
		}
		sc := scopes[rng.IntN(len(scopes))]
		vs := values[sc]
		return kb.List(kind, sc, vs[rng.IntN(len(vs))])
	}
	queries := []store.Query{
		q("d1", "192.0.2.1", "alice"), q("d2", "192.0.2.2", "bob"), q(long, "2001:db8::1", long),
		q("zz", "192.0.2.9", ""), q("zz", "", "nobody"),
	}
	queries[0].Cert = cert
	base := time.Now()
	now := base

	recount := func(r *Replica) (n [2][exactScopes]int, lists [2]int) {
		for k := range r.exact {
			kind, sc, _, ok := r.kb.Split(k)
			require.True(t, ok, k)
			n[listIndex(kind)][exactIndex(sc)]++
			lists[listIndex(kind)]++
		}
		for li := range r.ranges {
			for f := range r.ranges[li] {
				for _, m := range r.ranges[li][f].byLen {
					lists[li] += len(m)
				}
			}
		}
		return n, lists
	}
	// every: Lookup with every list and scope read, as before the counts.
	every := func(r *Replica, qq store.Query) store.Answer {
		r.mu.Lock()
		saved, savedLists := r.exactN, r.lists
		for i := range r.exactN {
			r.lists[i] = 1
			for j := range r.exactN[i] {
				r.exactN[i][j] = 1
			}
		}
		r.mu.Unlock()
		a := r.Lookup(qq, now)
		r.mu.Lock()
		r.exactN, r.lists = saved, savedLists
		r.mu.Unlock()
		return a
	}
	check := func(r *Replica, step int, op string) {
		n, lists := recount(r)
		require.Equal(t, n, r.exactN, "step %d (%s)", step, op)
		require.Equal(t, lists, r.lists, "step %d (%s)", step, op)
		for _, qq := range queries {
			require.Equal(t, every(r, qq), r.Lookup(qq, now), "step %d (%s): %+v", step, op, qq)
		}
	}
	fill := func(r *Replica) {
		for i := rng.IntN(12); i > 0; i-- {
			var exp time.Time
			if rng.IntN(3) == 0 {
				exp = now.Add(time.Duration(1+rng.IntN(60)) * time.Second)
			}
			_ = r.Put(randomKey(), "v", exp)
		}
	}

	r := New(kb)
	found := 0
	for step := 0; step < 3000; step++ {
		var op string
		switch x := rng.IntN(20); {
		case x < 9:
			op = "put"
			var exp time.Time
			if rng.IntN(3) == 0 {
				exp = now.Add(time.Duration(1+rng.IntN(60)) * time.Second)
			}
			_ = r.Put(randomKey(), "v", exp)
		case x < 11:
			op = "put an ip key in another form (refused)"
			require.Error(t, r.Put(kb.List(keys.Block, keys.IP, "2001:DB8::1"), "v", time.Time{}))
		case x < 16:
			op = "delete"
			r.Delete(randomKey())
		case x < 18:
			op = "sweep"
			now = now.Add(time.Duration(rng.IntN(30)) * time.Second)
			r.Sweep(now)
		default:
			op = "swap"
			fresh := New(kb)
			fill(fresh)
			r.swap(fresh)
		}
		check(r, step, op)
		for _, qq := range queries {
			if a := r.Lookup(qq, now); a.Block != nil || a.Allow != nil {
				found++
			}
		}
	}
	assert.Greater(t, found, 1000, "lookups that found an entry: the run tests the skip")
}
