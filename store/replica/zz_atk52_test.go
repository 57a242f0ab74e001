package replica

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// atk52: white-box tests of 648f3ea (store.Query.OperatorsOnly, the
// broker's re-check after a reload refusing by operators' bans only).

// TestAtk52OperatorsOnlyNestedRangesAgreeWithStore: DEFECT (3 of 3 runs).
// Commit 648f3ea: "store.Query.OperatorsOnly leaves automatic bans out of
// the block entries (store.Lookup and the replica's Lookup alike, before
// Resolve)"; README, Reloads: "The re-check refuses by operators' bans
// only". An IPv6 client under an automatic ban of its /64 (fail_ipv6_prefix,
// "the ban is a guard:block:cidr:<net>/64 key") and an operator's ban of a
// wider range (::/16): with OperatorsOnly, Redis (store.Lookup, used until
// the replica is loaded) answers the operator's ::/16; the replica answers
// nothing. Its matches keeps one range per lookup, the narrowest, and
// OperatorsOnly then drops that one (the automatic /64) instead of falling
// back to the next wider range: the operator's ban is hidden by the
// automatic one. Expected: the replica answers guard:block:cidr:::/16 as
// Redis does. (store/replica/replica.go:525-531 with :598-601.)
func TestAtk52OperatorsOnlyNestedRangesAgreeWithStore(t *testing.T) {
	srv := testenv.StartRedis(t)
	s := store.New(store.Options{Addrs: []string{srv.Addr}, Timeout: time.Second}, kb)
	t.Cleanup(func() { s.Close() })
	entries := map[string]string{
		"guard:block:cidr:::/64": "auto: over 5 failed authentications (5 allowed, refilling 1 per 12s) (offence 1, 10m0s) at 2026-12-04T21:00:00Z",
		"guard:block:cidr:::/16": "operator: compromised range",
	}
	r := New(kb)
	for k, v := range entries {
		srv.CLI("SET", k, v)
		require.NoError(t, r.Put(k, v, time.Time{}))
	}
	q := store.Query{ClientID: "atk52-v6", IP: netip.MustParseAddr("::1"), OperatorsOnly: true}
	fromRedis, err := s.Lookup(context.Background(), q)
	require.NoError(t, err)
	require.NotNil(t, fromRedis.Block, "Redis: the operator's ::/16 refuses the re-check")
	assert.Equal(t, "guard:block:cidr:::/16", fromRedis.Block.Key)
	fromReplica := r.Lookup(q, time.Now())
	if assert.NotNil(t, fromReplica.Block, "the replica answers no block where Redis answers the operator's %s", fromRedis.Block.Key) {
		assert.Equal(t, fromRedis.Block.Key, fromReplica.Block.Key)
	}
}

// TestAtk52OperatorsOnlyOtherScopesAgreeWithStore: HOLDS. The same
// comparison for every other pairing of an automatic and an operator's ban
// a client can match at once: automatic ip + operator's cidr (IPv4),
// automatic clientid (short, and a long ID's hashed form) + operator's
// exact clientid, automatic username form + operator's username, automatic
// /64 + operator's narrower ::1/128 and ip ::1, an operator's ban of a long
// client ID's hashed form, a certificate ban, and allow keys (ip lifts an
// operator's clientid ban, clientid lifts it but not an ip ban, an allow
// on a hashed form lifts nothing). Redis and the replica answer the same key
// (or none) with OperatorsOnly, and the operator's ban whenever one is not
// lifted.
func TestAtk52OperatorsOnlyOtherScopesAgreeWithStore(t *testing.T) {
	long := make([]byte, 300)
	for i := range long {
		long[i] = 'L'
	}
	longID := string(long)
	auto := "auto: over 1 failed authentications"
	cases := []struct {
		name    string
		entries map[string]string
		q       store.Query
		want    string
	}{
		{"ip auto, cidr operator", map[string]string{"guard:block:ip:192.0.2.7": auto, "guard:block:cidr:192.0.2.0/24": "op"},
			store.Query{ClientID: "d", IP: netip.MustParseAddr("192.0.2.7")}, "guard:block:cidr:192.0.2.0/24"},
		{"clientid auto, ip operator", map[string]string{"guard:block:clientid:d": auto, "guard:block:ip:192.0.2.7": "op"},
			store.Query{ClientID: "d", IP: netip.MustParseAddr("192.0.2.7")}, "guard:block:ip:192.0.2.7"},
		{"long clientid form auto, exact operator", map[string]string{"guard:block:clientid:" + keys.Tracking(longID): auto, "guard:block:clientid:" + longID: "op"},
			store.Query{ClientID: longID}, "guard:block:clientid:" + longID},
		{"long clientid form auto only", map[string]string{"guard:block:clientid:" + keys.Tracking(longID): auto},
			store.Query{ClientID: longID}, ""},
		{"long username form auto, username operator", map[string]string{"guard:block:username:" + keys.Tracking(longID): auto, "guard:block:username:" + longID: "op"},
			store.Query{ClientID: "d", Username: longID, HasUsername: true}, "guard:block:username:" + longID},
		{"v6 /64 auto, ::1/128 operator", map[string]string{"guard:block:cidr:::/64": auto, "guard:block:cidr:::1/128": "op"},
			store.Query{ClientID: "d", IP: netip.MustParseAddr("::1")}, "guard:block:cidr:::1/128"},
		{"v6 /64 auto, ip ::1 operator", map[string]string{"guard:block:cidr:::/64": auto, "guard:block:ip:::1": "op"},
			store.Query{ClientID: "d", IP: netip.MustParseAddr("::1")}, "guard:block:ip:::1"},
		{"allow ip lifts operator clientid", map[string]string{"guard:block:clientid:d": "op", "guard:allow:ip:192.0.2.7": "lab"},
			store.Query{ClientID: "d", IP: netip.MustParseAddr("192.0.2.7")}, ""},
		{"allow clientid keeps operator ip", map[string]string{"guard:block:ip:192.0.2.7": "op", "guard:allow:clientid:d": "gw"},
			store.Query{ClientID: "d", IP: netip.MustParseAddr("192.0.2.7")}, "guard:block:ip:192.0.2.7"},
		{"long clientid form operator", map[string]string{"guard:block:clientid:" + keys.Tracking(longID): "op"},
			store.Query{ClientID: longID}, "guard:block:clientid:" + keys.Tracking(longID)},
		{"allow clientid lifts operator clientid", map[string]string{"guard:block:clientid:d": "op", "guard:allow:clientid:d": "gw"},
			store.Query{ClientID: "d"}, ""},
		{"allow on a form lifts nothing", map[string]string{"guard:block:clientid:" + keys.Tracking(longID): "op", "guard:allow:clientid:" + keys.Tracking(longID): "gw"},
			store.Query{ClientID: longID}, "guard:block:clientid:" + keys.Tracking(longID)},
		{"cert operator", map[string]string{"guard:block:cert:" + certID: "op", "guard:block:ip:192.0.2.7": auto},
			store.Query{ClientID: "d", IP: netip.MustParseAddr("192.0.2.7"), Cert: certID}, "guard:block:cert:" + certID},
	}
	srv := testenv.StartRedis(t)
	s := store.New(store.Options{Addrs: []string{srv.Addr}, Timeout: time.Second}, kb)
	t.Cleanup(func() { s.Close() })
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv.CLI("FLUSHALL")
			r := New(kb)
			for k, v := range c.entries {
				srv.CLI("SET", k, v)
				require.NoError(t, r.Put(k, v, time.Time{}))
			}
			c.q.OperatorsOnly = true
			a, err := s.Lookup(context.Background(), c.q)
			require.NoError(t, err)
			b := r.Lookup(c.q, time.Now())
			assert.Equal(t, c.want, keyOf(a.Block), "Redis")
			assert.Equal(t, c.want, keyOf(b.Block), "replica")
		})
	}
}

const certID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func keyOf(m *store.Match) string {
	if m == nil {
		return ""
	}
	return m.Key
}
