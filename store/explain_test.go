package store

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

func keysOf(ms []*Match) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Key)
	}
	return out
}

// Matching finds every entry Lookup weighs, every range containing the IP
// among them, with its lifetime; Resolve on them decides as Lookup does.
func TestMatching(t *testing.T) {
	s, r := newStore(t, "g:")
	ctx := context.Background()
	long := strings.Repeat("L", 300)
	for _, kv := range [][2]string{
		{"g:block:cidr:10.0.0.0/8", "wide"},
		{"g:block:cidr:10.1.0.0/16", "narrower"},
		{"g:block:cidr:10.1.2.0/24", "auto: narrowest"},
		{"g:block:cidr:10.1.3.0/24", "not containing"},
		{"g:allow:clientid:gw", "gateway"},
		{"g:block:clientid:" + keys.Tracking(long), "auto: long id"},
		{"g:block:username:alice", "stolen"},
		{"g:throttle:username:alice", "auto: throttled"},
		{"g:block:ip:10.1.2.3", "scanner"},
	} {
		r.CLI("SET", kv[0], kv[1])
	}
	r.CLI("PEXPIRE", "g:block:cidr:10.1.2.0/24", "600000")
	q := Query{ClientID: "gw", IP: netip.MustParseAddr("10.1.2.3"), Username: "alice", HasUsername: true}
	m, err := s.Matching(ctx, q, true)
	require.NoError(t, err)
	assert.Equal(t, []string{"g:allow:clientid:gw"}, keysOf(m.Allows))
	assert.Equal(t, []string{"g:block:username:alice", "g:block:ip:10.1.2.3",
		"g:block:cidr:10.1.2.0/24", "g:block:cidr:10.1.0.0/16", "g:block:cidr:10.0.0.0/8"}, keysOf(m.Blocks))
	assert.Less(t, m.Blocks[0].TTL, time.Duration(0), "permanent")
	assert.InDelta(t, float64(10*time.Minute), float64(m.Blocks[2].TTL), float64(2*time.Second))
	require.NotNil(t, m.Throttle)
	assert.Equal(t, "auto: throttled", m.Throttle.Reason)

	allow, block := Resolve(m.Allows, m.Blocks)
	a := lookup(t, s, q)
	assert.Equal(t, a.Allow.Key, allow.Key)
	assert.Equal(t, a.Block.Key, block.Key, "the CONNECT lookup decides alike")
	assert.Equal(t, "g:block:ip:10.1.2.3", block.Key, "a claim allow does not lift the IP ban")

	// Without a client ID, the client ID's entries are not looked at; a
	// long one's automatic ban is found under its tracking form.
	m, err = s.Matching(ctx, Query{IP: netip.MustParseAddr("10.1.2.3")}, false)
	require.NoError(t, err)
	assert.Empty(t, m.Allows)
	assert.Nil(t, m.Throttle)
	m, err = s.Matching(ctx, Query{ClientID: long}, true)
	require.NoError(t, err)
	assert.Equal(t, []string{"g:block:clientid:" + keys.Tracking(long)}, keysOf(m.Blocks))

	// A key of another type than string is no entry, as the replica skips
	// it: it is listed as ignored, with its type, and the rest is read.
	r.CLI("HSET", "g:block:ip:10.9.9.9", "a", "b")
	r.CLI("SADD", "g:allow:ip:10.9.9.9", "x")
	r.CLI("RPUSH", "g:throttle:username:bob", "x")
	m, err = s.Matching(ctx, Query{IP: netip.MustParseAddr("10.9.9.9"), Username: "bob", HasUsername: true}, false)
	require.NoError(t, err)
	assert.Empty(t, m.Allows)
	assert.Equal(t, []string{"g:block:cidr:10.0.0.0/8"}, keysOf(m.Blocks), "the entries after it are read")
	assert.Nil(t, m.Throttle)
	assert.Equal(t, []Ignored{
		{Kind: keys.Allow, Key: "g:allow:ip:10.9.9.9", Type: "set"},
		{Kind: keys.Block, Key: "g:block:ip:10.9.9.9", Type: "hash"},
		{Kind: keys.Block, Key: "g:throttle:username:bob", Type: "list", Throttle: true},
	}, m.Ignored)
}

func TestClientIDState(t *testing.T) {
	s, r := newStore(t, "g:")
	ctx := context.Background()
	now := time.Now()
	ms := func(d time.Duration) int64 { return now.Add(d).UnixMilli() }
	_, err := s.RenewLease(ctx, "up", time.Minute)
	require.NoError(t, err)
	require.NoError(t, s.Client().ZAdd(ctx, "g:brokers", redis.Z{Score: float64(ms(-time.Minute)), Member: "crashed"}).Err())

	id := "dev 1"
	bob := Conn{ID: "up-2", Instance: "up", Broker: "eu-1", Principal: "bob", IP: "192.0.2.2", ConnectedMs: ms(-time.Second)}
	ghost := Conn{ID: "crashed-9", Instance: "crashed", Broker: "eu-2", Principal: "carol", IP: "192.0.2.3", ConnectedMs: ms(-2 * time.Hour)}
	alice := Conn{ID: "up-1", Instance: "up", Broker: "eu-1", Principal: "alice", IP: "192.0.2.1", ConnectedMs: ms(-time.Minute), DisconnectedMs: ms(-time.Second)}
	old := Conn{ID: "up-0", Instance: "up", Broker: "eu-1", Principal: "dave", IP: "192.0.2.4", ConnectedMs: ms(-3 * time.Hour), DisconnectedMs: ms(-2 * time.Hour)}
	require.NoError(t, writeConns(ctx, s, []ConnWrite{
		{ClientID: id, Instance: "up", Live: &bob, Seen: &bob},
		{ClientID: id, Instance: "crashed", Live: &ghost, Seen: &ghost},
		{ClientID: id, Instance: "up", Seen: &alice},
		{ClientID: id, Instance: "up", Seen: &old},
	}, 24*time.Hour))
	for i := 0; i < 1200; i++ {
		other := finding(fmt.Sprint("other-", i), t0+int64(i), "x", "y")
		if i == 5 || i == 1100 {
			other = finding(id, t0+int64(i), "alice", "bob")
		}
		_, err := s.AddFinding(ctx, other, 0, time.Hour, 100000)
		require.NoError(t, err)
	}

	st, err := s.ClientIDState(ctx, id, time.Hour, now, 10000)
	require.NoError(t, err)
	require.Len(t, st.Live, 2)
	assert.Equal(t, "up-2", st.Live[0].ID, "newest first")
	assert.Equal(t, map[string]bool{"up": true, "crashed": false}, st.LeaseRuns)
	var seen []string
	for _, c := range st.Seen {
		seen = append(seen, c.Principal)
	}
	assert.Equal(t, []string{"bob", "alice"}, seen, "dave is older than the window, and so is carol: her broker's lease ran out")
	assert.Equal(t, 2, st.SeenOlder)
	assert.EqualValues(t, 1200, st.FindingsTotal)
	assert.Equal(t, 1200, st.FindingsScanned)
	require.Len(t, st.Findings, 2)
	assert.Equal(t, t0+1100, st.Findings[0].TimeMs, "newest first")
	assert.Equal(t, []string{"alice", "bob"}, st.Findings[0].Principals)
	assert.EqualValues(t, 2, st.Findings[0].Count, "folded repeats counted")

	st, err = s.ClientIDState(ctx, id, time.Hour, now, 150)
	require.NoError(t, err)
	assert.Equal(t, 150, st.FindingsScanned, "the scan stops at its bound")
	require.Len(t, st.Findings, 1)
	assert.Equal(t, t0+1100, st.Findings[0].TimeMs)

	st, err = s.ClientIDState(ctx, "nobody", time.Hour, now, 10000)
	require.NoError(t, err)
	assert.Empty(t, st.Live)
	assert.Empty(t, st.Seen)
	assert.Empty(t, st.Findings)
	assert.Equal(t, "1200", r.CLI("XLEN", "g:findings"))
}
