package store

import (
	"context"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

func newStore(t *testing.T, prefix string) (*Store, *testenv.Redis) {
	t.Helper()
	return newStoreWith(t, prefix, Options{})
}

// newStoreWith is newStore with options o (their Addrs and Timeout set).
func newStoreWith(t *testing.T, prefix string, o Options) (*Store, *testenv.Redis) {
	t.Helper()
	r := testenv.StartRedis(t)
	o.Addrs, o.Timeout = []string{r.Addr}, time.Second
	s := New(o, keys.Builder{Prefix: prefix})
	t.Cleanup(func() { s.Close() })
	return s, r
}

func lookup(t *testing.T, s *Store, q Query) Answer {
	t.Helper()
	a, err := s.Lookup(context.Background(), q)
	require.NoError(t, err)
	return a
}

func TestLookupScopesInOrder(t *testing.T) {
	s, r := newStore(t, "guard:")
	q := Query{ClientID: "dev-1", IP: netip.MustParseAddr("203.0.113.9"), Username: "bob", HasUsername: true}
	assert.Nil(t, lookup(t, s, q).Block)

	r.CLI("SET", "guard:block:cidr:203.0.112.0/23", "range")
	a := lookup(t, s, q)
	require.NotNil(t, a.Block)
	assert.Equal(t, keys.CIDR, a.Block.Scope)
	assert.Equal(t, "guard:block:cidr:203.0.112.0/23", a.Block.Key)
	assert.Equal(t, "operator", a.Block.Origin())
	assert.Less(t, a.Block.TTL, time.Duration(0), "no TTL")

	r.CLI("SET", "guard:block:cidr:203.0.113.0/24", "narrower range")
	assert.Equal(t, "guard:block:cidr:203.0.113.0/24", lookup(t, s, q).Block.Key, "most specific range first")
	r.CLI("SET", "guard:block:ip:203.0.113.9", "auto: brute force", "EX", "100")
	a = lookup(t, s, q)
	assert.Equal(t, keys.IP, a.Block.Scope)
	assert.Equal(t, "auto", a.Block.Origin())
	assert.InDelta(t, 100*time.Second, a.Block.TTL, float64(2*time.Second))
	r.CLI("SET", "guard:block:username:bob", "u")
	assert.Equal(t, keys.Username, lookup(t, s, q).Block.Scope)
	r.CLI("SET", "guard:block:clientid:dev-1", "c")
	assert.Equal(t, keys.ClientID, lookup(t, s, q).Block.Scope)

	assert.Nil(t, lookup(t, s, q).Allow)
	r.CLI("SET", "guard:allow:cidr:0.0.0.0/0", "")
	a = lookup(t, s, q)
	require.NotNil(t, a.Allow)
	assert.Equal(t, "guard:allow:cidr:0.0.0.0/0", a.Allow.Key)
}

func TestLookupCert(t *testing.T) {
	s, r := newStore(t, "guard:")
	id := keys.CertID([]byte("device certificate"))
	q := Query{ClientID: "dev-1", IP: netip.MustParseAddr("203.0.113.9"), Username: "bob", HasUsername: true, Cert: id}
	assert.Nil(t, lookup(t, s, q).Block)

	r.CLI("SET", "guard:block:cert:"+id, "revoked", "EX", "100")
	a := lookup(t, s, q)
	require.NotNil(t, a.Block)
	assert.Equal(t, keys.Cert, a.Block.Scope)
	assert.Equal(t, "guard:block:cert:"+id, a.Block.Key)
	assert.Equal(t, "revoked", a.Block.Reason)
	assert.InDelta(t, 100*time.Second, a.Block.TTL, float64(2*time.Second))
	other := q
	other.Cert = keys.CertID([]byte("another certificate"))
	assert.Nil(t, lookup(t, s, other).Block, "another certificate passes")
	none := q
	none.Cert = ""
	assert.Nil(t, lookup(t, s, none).Block, "no certificate passes")

	r.CLI("SET", "guard:allow:clientid:dev-1", "claimed")
	a = lookup(t, s, q)
	require.NotNil(t, a.Block, "a claim's allow does not lift a certificate ban")
	assert.Equal(t, keys.Cert, a.Block.Scope)

	r.CLI("SET", "guard:block:ip:203.0.113.9", "ip ban")
	r.CLI("SET", "guard:allow:cert:"+other.Cert, "trusted device")
	a = lookup(t, s, other)
	assert.Nil(t, a.Block, "an allow on the certificate lifts the ip ban")
	require.NotNil(t, a.Allow)
	assert.Equal(t, "guard:allow:cert:"+other.Cert, a.Allow.Key, "proof preferred to the claim")

	upper := q
	upper.Cert = strings.ToUpper(id)
	r.CLI("SET", "guard:block:cert:"+upper.Cert, "never matches")
	assert.Equal(t, keys.IP, lookup(t, s, upper).Block.Scope, "only a certificate ID in lower case is looked up")
}

func TestLookupUsernameOnlyWhenGiven(t *testing.T) {
	s, r := newStore(t, "guard:")
	r.CLI("SET", "guard:block:username:", "empty username")
	a := lookup(t, s, Query{ClientID: "x"})
	assert.Nil(t, a.Block, "no username given: the username scope is not asked")
}

func TestLookupIPv6AndMapped(t *testing.T) {
	s, r := newStore(t, "guard:")
	r.CLI("SET", "guard:block:cidr:2001:db8::/32", "v6 range")
	a := lookup(t, s, Query{ClientID: "x", IP: netip.MustParseAddr("2001:db8:1:2::5")})
	require.NotNil(t, a.Block)
	assert.Equal(t, "guard:block:cidr:2001:db8::/32", a.Block.Key)

	r.CLI("SET", "guard:block:ip:192.0.2.1", "v4")
	ip, err := keys.NormalizeIP("::ffff:192.0.2.1")
	require.NoError(t, err)
	a = lookup(t, s, Query{ClientID: "x", IP: ip})
	require.NotNil(t, a.Block, "an IPv4-mapped address counts as IPv4")
}

func TestLookupUser(t *testing.T) {
	s, r := newStore(t, "p1:")
	r.CLI("SET", "p1:user:carol", "$7$hash")
	a := lookup(t, s, Query{ClientID: "x", Username: "carol", HasUsername: true, WantUser: true})
	assert.True(t, a.HasUser)
	assert.Equal(t, "$7$hash", a.UserHash)
	a = lookup(t, s, Query{ClientID: "x", Username: "dave", HasUsername: true, WantUser: true})
	assert.False(t, a.HasUser)
}

func TestLookupExactForHostileValues(t *testing.T) {
	s, r := newStore(t, "guard:")
	r.CLI("SET", "guard:block:clientid:a*", "glob")
	for _, id := range []string{"a", "ab", "a\\*", "*"} {
		assert.Nil(t, lookup(t, s, Query{ClientID: id}).Block, id)
	}
	assert.NotNil(t, lookup(t, s, Query{ClientID: "a*"}).Block)
	long := strings.Repeat("z", 20000)
	r.CLI("SET", "guard:block:clientid:"+long, "long")
	assert.NotNil(t, lookup(t, s, Query{ClientID: long}).Block)
	assert.Nil(t, lookup(t, s, Query{ClientID: long[1:]}).Block)
}

func TestLookupFailsFastWhenRedisIsDown(t *testing.T) {
	s, r := newStore(t, "guard:")
	r.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := s.Lookup(ctx, Query{ClientID: "x"})
	assert.Error(t, err)
	assert.Less(t, time.Since(start), time.Second)
}

// Issue 12: a pipeline's connection, which go-redis's pool keeps once
// made, holds 32 KiB buffers each way, not 128 KiB: before, the first
// pipeline of a store kept about 256 KiB more of the Go heap.
func TestPipelineConnectionBuffers(t *testing.T) {
	s, _ := newStore(t, "guard:")
	ctx := context.Background()
	require.NoError(t, s.Ping(ctx)) // the background client's first connection, outside the count
	live := func() uint64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := live()
	pipe := s.Background().Client().Pipeline()
	pipe.Ping(ctx)
	_, err := pipe.Exec(ctx)
	require.NoError(t, err)
	kept := int64(live()) - int64(before)
	t.Logf("a pipeline's connection keeps %d bytes of the Go heap", kept)
	assert.Less(t, kept, int64(2*pipelineBuffer+32<<10), "a pipeline connection's buffers")
}

// A claim with a tracking form (over 256 bytes, or starting with
// "sha256:") is looked up by that form in the block list, where its
// automatic bans are written (keys.FailKey), and not in the allow list:
// allow keys match the value exactly. Before, an allow on "sha256:<hex>"
// lifted the ban of the long client ID it hashes (atk48's
// TestAtk48AllowMatchesExactly, 3 of 3 runs). Matching (guardctl explain)
// reads the same keys.
func TestLookupTrackingFormBlocksOnly(t *testing.T) {
	s, r := newStore(t, "guard:")
	long := strings.Repeat("A", 299) + "x"
	for _, q := range []Query{{ClientID: long}, {ClientID: "dev", Username: long, HasUsername: true}} {
		scope, claim := "clientid", q.ClientID
		if q.HasUsername {
			scope, claim = "username", q.Username
		}
		r.CLI("FLUSHALL")
		r.CLI("SET", "guard:block:"+scope+":"+keys.Tracking(claim), "auto: failed authentication")
		a := lookup(t, s, q)
		require.NotNil(t, a.Block, scope+": the automatic ban by the tracking form")
		assert.Equal(t, "guard:block:"+scope+":"+keys.Tracking(claim), a.Block.Key)

		r.CLI("SET", "guard:allow:"+scope+":"+keys.Tracking(claim), "another device")
		a = lookup(t, s, q)
		assert.Nil(t, a.Allow, scope+": no allow by the tracking form")
		assert.NotNil(t, a.Block, scope+": still banned")
		m, err := s.Matching(context.Background(), q, true)
		require.NoError(t, err)
		assert.Empty(t, m.Allows, scope+": explain reads no allow by the tracking form")
		assert.Len(t, m.Blocks, 1)

		r.CLI("SET", "guard:allow:"+scope+":"+claim, "the device itself")
		a = lookup(t, s, q)
		require.NotNil(t, a.Allow, scope+": an allow by the value")
		assert.Nil(t, a.Block, scope+": lifts the claim's ban")
	}
}

// Lookup with OperatorsOnly (the re-check after a reload) leaves automatic
// bans out and keeps operators' (atk51), as the replica does.
func TestLookupOperatorsOnly(t *testing.T) {
	s, r := newStore(t, "guard:")
	r.CLI("SET", "guard:block:ip:192.0.2.7", "auto: failed authentication")
	q := Query{ClientID: "dev", IP: netip.MustParseAddr("192.0.2.7"), OperatorsOnly: true}
	assert.Nil(t, lookup(t, s, q).Block)
	q.OperatorsOnly = false
	assert.NotNil(t, lookup(t, s, q).Block)
	r.CLI("SET", "guard:block:clientid:dev", "operator")
	q.OperatorsOnly = true
	b := lookup(t, s, q).Block
	require.NotNil(t, b)
	assert.Equal(t, "guard:block:clientid:dev", b.Key)
}
