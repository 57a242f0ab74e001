package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// listPrefix holds every glob character: SCAN must match it literally.
const listPrefix = `t*[1]?\:`

// listEnds is an expiry end of the list fixture.
var listEnds = time.Now().Add(time.Hour).Truncate(time.Second)

// listFixture stores entries of both lists and keys List must leave out.
func listFixture(t *testing.T, s *Store) {
	t.Helper()
	ctx := context.Background()
	rdb := s.Client()
	set := func(key, value string, at time.Time) {
		require.NoError(t, rdb.Set(ctx, key, value, 0).Err())
		if !at.IsZero() {
			require.NoError(t, rdb.PExpireAt(ctx, key, at).Err())
		}
	}
	p := listPrefix
	set(p+"block:ip:10.0.0.2", "x", time.Time{})
	set(p+"block:ip:9.0.0.1", "auto: over 5 failed authentications", listEnds)
	set(p+"block:cidr:10.1.2.3/8", "typo", time.Time{}) // never matches
	set(p+"block:clientid:dev 1\n", "stolen", time.Time{})
	set(p+"allow:username:alice", "trusted", time.Time{})
	for i := range maxUnknownScope + 2 {
		set(fmt.Sprintf("%sblock:host%d:x", p, i), "unknown scope", time.Time{})
	}
	require.NoError(t, rdb.HSet(ctx, p+"block:ip:1.1.1.1", "a", "b").Err())
	set("tAB1Z\\:block:ip:6.6.6.6", "the unescaped pattern would match this", time.Time{})
	set("guard:block:ip:6.6.6.8", "another prefix", time.Time{})
}

func TestList(t *testing.T) {
	s, _ := newStore(t, listPrefix)
	listFixture(t, s)
	ctx := context.Background()

	ls, err := s.List(ctx, keys.Block, "", 100)
	require.NoError(t, err)
	assert.Equal(t, keys.Block, ls.Kind)
	assert.Equal(t, listPrefix, ls.Prefix)
	assert.Empty(t, ls.Scope)
	var got []string
	for _, e := range ls.Entries {
		got = append(got, fmt.Sprintf("%s %s %q %s %q %v", e.Kind, e.Scope, e.Value, e.Origin(), e.Reason, !e.Expires.IsZero()))
		assert.Equal(t, s.Keys().List(e.Kind, e.Scope, e.Value), e.Key)
	}
	assert.Equal(t, []string{
		`block cidr "10.1.2.3/8" operator "typo" false`,
		`block clientid "dev 1\n" operator "stolen" false`,
		`block ip "9.0.0.1" auto "auto: over 5 failed authentications" true`,
		`block ip "10.0.0.2" operator "x" false`,
	}, got)
	assert.WithinDuration(t, listEnds, ls.Entries[2].Expires, time.Second)
	assert.Equal(t, "expected the canonical network 10.0.0.0/8", ls.Entries[0].NeverMatches())
	assert.Empty(t, ls.Entries[1].NeverMatches())
	assert.Equal(t, 4, ls.Total)
	assert.Zero(t, ls.More)
	assert.Len(t, ls.UnknownScope, maxUnknownScope, "the first keys of unknown scope named")
	assert.Equal(t, 2, ls.UnknownScopeMore, "the others counted")
	assert.Empty(t, ls.NotString, "SCAN TYPE string skips the hash")

	ls, err = s.List(ctx, keys.Block, keys.IP, 1)
	require.NoError(t, err)
	assert.Equal(t, keys.IP, ls.Scope)
	require.Len(t, ls.Entries, 1)
	assert.Equal(t, "9.0.0.1", ls.Entries[0].Value, "the first in address order")
	assert.Equal(t, 2, ls.Total)
	assert.Equal(t, 1, ls.More)
	assert.Empty(t, ls.UnknownScope, "the pattern names the scope")
	assert.Empty(t, ls.NotString, "only the keys chosen are read")

	ls, err = s.List(ctx, keys.Block, keys.CIDR, 0)
	require.NoError(t, err)
	assert.Empty(t, ls.Entries, "a limit below 1 reads no entry")
	assert.Equal(t, 1, ls.More)
	assert.Equal(t, 1, ls.Total)

	ls, err = s.List(ctx, keys.Allow, "", 10)
	require.NoError(t, err)
	require.Len(t, ls.Entries, 1)
	assert.Equal(t, keys.Allow, ls.Entries[0].Kind)
	assert.Equal(t, "alice", ls.Entries[0].Value)
	assert.Empty(t, ls.UnknownScope)

	for _, tc := range []struct {
		kind  keys.Kind
		scope keys.Scope
		msg   string
	}{
		{keys.User, "", `store: list: "user" is no list (expected allow or block)`},
		{keys.Block, "host", `store: list: keys: unknown scope "host" (expected clientid, ip, cidr, username or cert)`},
	} {
		_, err := s.List(ctx, tc.kind, tc.scope, 10)
		assert.EqualError(t, err, tc.msg)
	}
}

// fetchEntries leaves out the keys gone since SCAN, and names those that
// hold no string (found by a SCAN without TYPE, before Redis 6.0).
func TestFetchEntries(t *testing.T) {
	s, r := newStore(t, "g:")
	r.CLI("SET", "g:block:ip:192.0.2.1", "x", "PX", "100000")
	r.CLI("HSET", "g:block:ip:192.0.2.2", "a", "b")
	r.CLI("SET", "g:block:ip:192.0.2.3", "y")
	var in []Entry
	for _, v := range []string{"192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"} {
		e, ok := parseEntry(s.Keys(), s.Keys().List(keys.Block, keys.IP, v))
		require.True(t, ok)
		in = append(in, e)
	}
	got, notString, err := fetchEntries(context.Background(), s.Client(), in)
	require.NoError(t, err)
	require.Len(t, got, 2)
	assert.Equal(t, "x", got[0].Reason)
	assert.WithinDuration(t, time.Now().Add(100*time.Second), got[0].Expires, 2*time.Second)
	assert.Equal(t, "y", got[1].Reason)
	assert.True(t, got[1].Expires.IsZero(), "never")
	assert.Equal(t, []string{"g:block:ip:192.0.2.2"}, notString)
}

func TestListRedisDown(t *testing.T) {
	s := New(Options{Addrs: []string{fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))}, Timeout: time.Second}, keys.Builder{Prefix: "g:"})
	t.Cleanup(func() { s.Close() })
	_, err := s.List(context.Background(), keys.Block, "", 10)
	var re *RedisError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, "list", re.Op)
	assert.Contains(t, re.Err.Error(), "connection refused")
	assert.Equal(t, "store: list: "+re.Err.Error(), err.Error())
}

func TestEachMasterUnsupportedClient(t *testing.T) {
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": "127.0.0.1:1"}})
	t.Cleanup(func() { ring.Close() })
	err := EachMaster(context.Background(), ring, func(context.Context, *redis.Client) error {
		return errors.New("called")
	})
	assert.EqualError(t, err, "store: unsupported Redis client *redis.Ring")
}

func TestTopN(t *testing.T) {
	kb := keys.Builder{Prefix: "g:"}
	var all []Entry
	for i := range 3000 {
		e, ok := parseEntry(kb, kb.List(keys.Block, keys.IP, fmt.Sprintf("10.%d.%d.%d", i/65536, i/256%256, i%256)))
		require.True(t, ok)
		all = append(all, e)
	}
	in := slices.Clone(all)
	// SCAN may repeat a key. Repeats of the first entries are always
	// caught; a repeat of a key beyond the limit may be counted twice.
	in = append(in, all[5], all[0], all[6])
	rand.Shuffle(len(in), func(i, j int) { in[i], in[j] = in[j], in[i] })
	top := topN{limit: 7}
	for _, e := range in {
		top.add(e)
		assert.LessOrEqual(t, len(top.kept), 7+1024, "memory bounded by the limit")
	}
	got, total := top.result()
	require.Len(t, got, 7)
	for i, e := range got {
		assert.Equal(t, all[i].Key, e.Key, "the first in address order")
	}
	assert.Equal(t, 3000, total, "duplicates seen together are counted once")
}

func TestCompareEntries(t *testing.T) {
	kb := keys.Builder{Prefix: "g:"}
	var in []Entry
	for _, k := range []string{
		"g:block:username:bob", "g:block:username:alice",
		"g:block:ip:not-an-ip", "g:block:ip:2001:db8::1", "g:block:ip:10.0.0.2", "g:block:ip:9.0.0.1", "g:block:ip:::ffff:1.2.3.4",
		"g:block:cidr:10.0.0.0/16", "g:block:cidr:10.0.0.0/8", "g:block:cidr:9.0.0.0/8", "g:block:cidr:bad", "g:block:cidr:2001:db8::/32",
		"g:block:clientid:b", "g:block:clientid:B", "g:block:clientid:a b",
	} {
		e, ok := parseEntry(kb, k)
		require.True(t, ok, k)
		in = append(in, e)
	}
	slices.SortFunc(in, compareEntries)
	var got []string
	for _, e := range in {
		got = append(got, string(e.Scope)+" "+e.Value)
	}
	assert.Equal(t, []string{
		"cidr 9.0.0.0/8", "cidr 10.0.0.0/8", "cidr 10.0.0.0/16", "cidr 2001:db8::/32", "cidr bad",
		"clientid B", "clientid a b", "clientid b",
		"ip 9.0.0.1", "ip 10.0.0.2", "ip ::ffff:1.2.3.4", "ip 2001:db8::1", "ip not-an-ip",
		"username alice", "username bob",
	}, got)
}

func TestParseEntry(t *testing.T) {
	kb := keys.Builder{Prefix: "g:"}
	e, ok := parseEntry(kb, "g:allow:clientid:a:b")
	require.True(t, ok)
	assert.Equal(t, Entry{Key: "g:allow:clientid:a:b", Kind: keys.Allow, Scope: keys.ClientID, Value: "a:b"}, e)
	for _, k := range []string{"g:block:host:x", "g:user:alice", "h:block:ip:1.2.3.4", "g:block:ip"} {
		_, ok := parseEntry(kb, k)
		assert.False(t, ok, k)
	}
}

func TestGlobEscape(t *testing.T) {
	assert.Equal(t, `guard:`, keys.GlobEscape("guard:"))
	assert.Equal(t, `t\*\[1\]\?\\:`, keys.GlobEscape(`t*[1]?\:`))
	assert.Equal(t, "\xff\\*\xfe", keys.GlobEscape("\xff*\xfe"), "byte by byte: invalid UTF-8 stays as it is")
	assert.Equal(t, `t\*\[1\]\?\\:block:*`, listPattern(keys.Builder{Prefix: `t*[1]?\:`}, keys.Block, ""))
	assert.Equal(t, `guard:allow:ip:*`, listPattern(keys.Builder{Prefix: "guard:"}, keys.Allow, keys.IP))
}

func TestNeverMatches(t *testing.T) {
	for _, tc := range []struct {
		scope keys.Scope
		value string
		why   string
	}{
		{keys.IP, "192.0.2.1", ""},
		{keys.IP, "2001:db8::1", ""},
		{keys.IP, "::ffff:192.0.2.1", "expected the canonical address 192.0.2.1"},
		{keys.IP, "2001:DB8::1", "expected the canonical address 2001:db8::1"},
		{keys.IP, "0:0:0:0:0:0:0:1", "expected the canonical address ::1"},
		{keys.IP, "fe80::1%eth0", "expected the canonical address fe80::1"},
		{keys.IP, "host", "expected an address such as 192.0.2.1 or 2001:db8::1"},
		{keys.IP, "127.000.0.1", "expected an address such as 192.0.2.1 or 2001:db8::1"},
		{keys.IP, "x: expected y", "expected an address such as 192.0.2.1 or 2001:db8::1"},
		{keys.CIDR, "10.0.0.0/8", ""},
		{keys.CIDR, "10.1.0.0/8", "expected the canonical network 10.0.0.0/8"},
		{keys.CIDR, "x", "expected a network such as 203.0.113.0/24 or 2001:db8::/32"},
		{keys.CIDR, "::ffff:1.2.3.0/90", `bad range "::ffff:1.2.3.0/90": an IPv4-mapped range must be at least /96`},
		{keys.ClientID, "::ffff:192.0.2.1", ""},
		{keys.Cert, keys.CertID([]byte("c")), ""},
		{keys.Cert, strings.ToUpper(keys.CertID([]byte("c"))), "expected 64 lower-case hex digits (the SHA-256 of the certificate's DER)"},
		{keys.Cert, "cert.pem", "expected 64 lower-case hex digits (the SHA-256 of the certificate's DER)"},
	} {
		assert.Equal(t, tc.why, Entry{Scope: tc.scope, Value: tc.value}.NeverMatches(), "%s %q", tc.scope, tc.value)
	}
}

// sortedKeys returns every key of the database, sorted.
func sortedKeys(t *testing.T, rdb redis.UniversalClient) []string {
	t.Helper()
	ks, err := rdb.Keys(context.Background(), "*").Result()
	require.NoError(t, err)
	slices.Sort(ks)
	return ks
}
