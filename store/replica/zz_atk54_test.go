package replica

import (
	"context"
	"fmt"
	"math/rand"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// HOLDS. 70a56d8, store/replica/replica.go (matchOperators and the
// operators filter in matches): "Automatic entries are now skipped in the
// search itself ... store.Lookup reads them all alike". A randomized
// differential test: for each of 600 random sets of entries over one
// client (client ID, username, an IPv4 or IPv6 address, its exact ip key
// and ranges of every family's prefix lengths), block and allow, automatic
// ("auto: ...") or an operator's, live, expiring later or expired (an
// expired key is absent from Redis and put with a past expiry in the
// replica), Redis (store.Lookup) and the replica answer the same block key
// (or none) and the same allow key (or none), with and without
// OperatorsOnly.
func TestAtk54OperatorsOnlyRandomAgreesWithStore(t *testing.T) {
	srv := testenv.StartRedis(t)
	s := store.New(store.Options{Addrs: []string{srv.Addr}, Timeout: time.Second}, kb)
	t.Cleanup(func() { s.Close() })
	rng := rand.New(rand.NewSource(54))
	ips := []netip.Addr{netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("2001:db8:1:2::7")}
	lens := map[bool][]int{true: {0, 8, 16, 24, 28, 31, 32}, false: {0, 16, 32, 48, 56, 64, 96, 120, 128}}
	ctx := context.Background()
	mismatches := 0
	for iter := 0; iter < 600 && mismatches < 5; iter++ {
		ip := ips[rng.Intn(len(ips))]
		var ks []string
		for _, kind := range []string{"block", "allow"} {
			ks = append(ks, "guard:"+kind+":clientid:d", "guard:"+kind+":username:u", "guard:"+kind+":ip:"+ip.String())
			for _, l := range lens[ip.Is4()] {
				p, _ := ip.Prefix(l)
				ks = append(ks, "guard:"+kind+":cidr:"+p.String())
			}
		}
		srv.CLI("FLUSHALL")
		r := New(kb)
		var desc []string
		now := time.Now()
		for _, k := range ks {
			if rng.Intn(3) != 0 {
				continue
			}
			v := "op"
			if rng.Intn(2) == 0 {
				v = "auto: over 1 failed authentications"
			}
			switch rng.Intn(3) {
			case 0: // no expiry
				srv.CLI("SET", k, v)
				require.NoError(t, r.Put(k, v, time.Time{}))
			case 1: // expires later
				srv.CLI("SET", k, v, "PX", "600000")
				require.NoError(t, r.Put(k, v, now.Add(10*time.Minute)))
			case 2: // expired: gone from Redis, still held by the replica
				require.NoError(t, r.Put(k, v, now.Add(-time.Second)))
				v += " (expired)"
			}
			desc = append(desc, k+"="+v)
		}
		for _, ops := range []bool{false, true} {
			q := store.Query{ClientID: "d", Username: "u", HasUsername: true, IP: ip, OperatorsOnly: ops}
			a, err := s.Lookup(ctx, q)
			require.NoError(t, err)
			b := r.Lookup(q, time.Now())
			if keyOf(a.Block) != keyOf(b.Block) || keyOf(a.Allow) != keyOf(b.Allow) {
				mismatches++
				t.Errorf("OperatorsOnly=%v: Redis block %q allow %q, replica block %q allow %q; entries %s",
					ops, keyOf(a.Block), keyOf(a.Allow), keyOf(b.Block), keyOf(b.Allow), fmt.Sprint(desc))
			}
		}
	}
}
