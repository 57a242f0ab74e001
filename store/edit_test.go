package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// changes subscribes to the change channel of prefix on addr and waits
// until Redis confirms it.
func changes(t *testing.T, addr, prefix string) *redis.PubSub {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true})
	t.Cleanup(func() { c.Close() })
	ps := c.Subscribe(context.Background(), keys.Builder{Prefix: prefix}.Changes())
	t.Cleanup(func() { ps.Close() })
	_, err := ps.Receive(context.Background())
	require.NoError(t, err)
	return ps
}

// nextChange returns the next key published on ps.
func nextChange(t *testing.T, ps *redis.PubSub) string {
	t.Helper()
	m, err := ps.ReceiveTimeout(context.Background(), 2*time.Second)
	require.NoError(t, err, "a message on the change channel")
	msg, ok := m.(*redis.Message)
	require.True(t, ok, "got %T", m)
	return msg.Payload
}

// noChange checks nothing more was published on ps.
func noChange(t *testing.T, ps *redis.PubSub) {
	t.Helper()
	m, err := ps.ReceiveTimeout(context.Background(), 50*time.Millisecond)
	assert.Error(t, err, "no other message, got %v", m)
}

func TestSetEntry(t *testing.T) {
	s, r := newStore(t, "p:")
	ps := changes(t, r.Addr, "p:")
	ctx := context.Background()
	rdb := s.Client()

	for _, tc := range []struct {
		kind   keys.Kind
		scope  keys.Scope
		value  string
		reason string
		ttl    time.Duration
		key    string
	}{
		{keys.Block, keys.ClientID, "sensor-17", "stolen", 0, "p:block:clientid:sensor-17"},
		{keys.Block, keys.IP, "192.0.2.1", "scanner", 90 * time.Minute, "p:block:ip:192.0.2.1"},
		{keys.Block, keys.CIDR, "2001:db8::/32", "range", 1500*time.Millisecond + 700*time.Microsecond, "p:block:cidr:2001:db8::/32"},
		{keys.Allow, keys.Username, "a:b*", "", 0, "p:allow:username:a:b*"},
		{keys.Block, keys.Cert, keys.CertID([]byte("c")), "revoked", time.Hour, "p:block:cert:" + keys.CertID([]byte("c"))},
	} {
		require.NoError(t, rdb.FlushAll(ctx).Err())
		key, err := s.SetEntry(ctx, tc.kind, tc.scope, tc.value, tc.reason, tc.ttl)
		require.NoError(t, err, tc.key)
		assert.Equal(t, tc.key, key)
		assert.Equal(t, []string{tc.key}, sortedKeys(t, rdb), "exactly one key")
		assert.Equal(t, tc.reason, rdb.Get(ctx, key).Val())
		ttl := rdb.PTTL(ctx, key).Val()
		if tc.ttl == 0 {
			assert.Equal(t, time.Duration(-1), ttl, "%s: no expiry", key)
		} else {
			assert.LessOrEqual(t, ttl, tc.ttl.Truncate(time.Millisecond), "%s: to the millisecond", key)
			assert.InDelta(t, tc.ttl.Milliseconds(), ttl.Milliseconds(), 1000, key)
		}
		assert.Equal(t, tc.key, nextChange(t, ps), "published once written")
		noChange(t, ps)
	}

	// An automatic ban becomes the operator's, and without a ttl never ends.
	key := "p:block:ip:203.0.113.7"
	require.NoError(t, rdb.Set(ctx, key, keys.AutoBanMarker+" over 5", 10*time.Minute).Err())
	_, err := s.SetEntry(ctx, keys.Block, keys.IP, "203.0.113.7", "for good", 0)
	require.NoError(t, err)
	assert.Equal(t, "for good", rdb.Get(ctx, key).Val())
	assert.Equal(t, time.Duration(-1), rdb.PTTL(ctx, key).Val())
	assert.Equal(t, key, nextChange(t, ps))
}

// SetEntry writes nothing the plugin could never match, nor a bad expiry.
func TestSetEntryRefuses(t *testing.T) {
	s, r := newStore(t, "p:")
	ps := changes(t, r.Addr, "p:")
	ctx := context.Background()
	for _, tc := range []struct {
		kind  keys.Kind
		scope keys.Scope
		value string
		ttl   time.Duration
		msg   string
	}{
		{keys.Block, keys.IP, "::ffff:192.0.2.1", 0, `store: set entry: keys: bad IP address "::ffff:192.0.2.1": expected the canonical address 192.0.2.1`},
		{keys.Block, keys.IP, "host", 0, `store: set entry: keys: bad IP address "host": expected an address such as`},
		{keys.Allow, keys.CIDR, "10.1.2.3/8", 0, `store: set entry: keys: bad range "10.1.2.3/8": expected the canonical network 10.0.0.0/8`},
		{keys.Block, keys.Cert, "AB:CD", 0, `store: set entry: keys: certificate ID "AB:CD": expected 64 lower-case hex digits`},
		{keys.Allow, keys.Cert, strings.ToUpper(keys.CertID(nil)), 0, `expected 64 lower-case hex digits (the SHA-256 of the certificate's DER)`},
		{keys.User, keys.ClientID, "x", 0, `store: set entry: "user" is no list (expected allow or block)`},
		{keys.Block, "host", "x", 0, `store: set entry: keys: unknown scope "host"`},
		{keys.Block, keys.ClientID, "x", -time.Second, `store: set entry: expiry -1s: expected zero (never) or at least 1ms`},
		{keys.Block, keys.ClientID, "x", 500 * time.Microsecond, `store: set entry: expiry 500µs: expected zero (never) or at least 1ms`},
	} {
		_, err := s.SetEntry(ctx, tc.kind, tc.scope, tc.value, "r", tc.ttl)
		require.Error(t, err, "%s %q", tc.scope, tc.value)
		assert.Contains(t, err.Error(), tc.msg)
		var re *RedisError
		assert.False(t, errors.As(err, &re), "%s %q: no Redis error", tc.scope, tc.value)
	}
	assert.Empty(t, sortedKeys(t, s.Client()), "nothing written")
	noChange(t, ps)
}

func TestDeleteEntry(t *testing.T) {
	s, r := newStore(t, "u:")
	ps := changes(t, r.Addr, "u:")
	ctx := context.Background()
	rdb := s.Client()
	block, allow, odd := "u:block:ip:2001:db8::1", "u:allow:ip:2001:db8::1", "u:block:cidr:10.1.2.3/8"
	for _, k := range []string{block, allow, odd} {
		require.NoError(t, rdb.Set(ctx, k, "x", time.Hour).Err())
	}

	key, existed, err := s.DeleteEntry(ctx, keys.Block, keys.IP, "2001:db8::1")
	require.NoError(t, err)
	assert.Equal(t, block, key)
	assert.True(t, existed)
	assert.Equal(t, []string{allow, odd}, sortedKeys(t, rdb), "only the block key is gone")
	assert.Equal(t, block, nextChange(t, ps))

	key, existed, err = s.DeleteEntry(ctx, keys.Block, keys.IP, "2001:db8::1")
	require.NoError(t, err)
	assert.Equal(t, block, key)
	assert.False(t, existed)
	assert.Equal(t, block, nextChange(t, ps), "published anyway: a replica that missed the DEL catches up")

	_, existed, err = s.DeleteEntry(ctx, keys.Block, keys.CIDR, "10.1.2.3/8")
	require.NoError(t, err)
	assert.True(t, existed, "an entry that could never match can be deleted")
	assert.Equal(t, odd, nextChange(t, ps))
	noChange(t, ps)

	_, _, err = s.DeleteEntry(ctx, keys.Offences, keys.IP, "2001:db8::1")
	assert.EqualError(t, err, `store: delete entry: "offences" is no list (expected allow or block)`)
	assert.Equal(t, []string{allow}, sortedKeys(t, rdb))
}

func TestDeleteAutoEntry(t *testing.T) {
	s, r := newStore(t, "u:")
	ps := changes(t, r.Addr, "u:")
	ctx := context.Background()
	rdb := s.Client()
	auto, op, odd := "u:block:clientid:a", "u:block:clientid:b", "u:block:clientid:c"
	require.NoError(t, rdb.Set(ctx, auto, keys.AutoBanMarker+" over 5 failed authentications", time.Hour).Err())
	require.NoError(t, rdb.Set(ctx, op, "operator: auto: not", 0).Err())
	require.NoError(t, rdb.SAdd(ctx, odd, keys.AutoBanMarker).Err())

	key, deleted, kept, err := s.DeleteAutoEntry(ctx, keys.Block, keys.ClientID, "a")
	require.NoError(t, err)
	assert.Equal(t, auto, key)
	assert.True(t, deleted)
	assert.Equal(t, KeptNothing, kept)
	assert.Equal(t, auto, nextChange(t, ps))

	for v, want := range map[string]Kept{"b": KeptOperators, "c": KeptAnotherType} {
		key, deleted, kept, err = s.DeleteAutoEntry(ctx, keys.Block, keys.ClientID, v)
		require.NoError(t, err)
		assert.Equal(t, "u:block:clientid:"+v, key)
		assert.False(t, deleted, v)
		assert.Equal(t, want, kept, v)
	}
	_, deleted, kept, err = s.DeleteAutoEntry(ctx, keys.Block, keys.ClientID, "a")
	require.NoError(t, err)
	assert.False(t, deleted)
	assert.Equal(t, KeptNothing, kept, "gone: nothing kept")
	noChange(t, ps)
	assert.Equal(t, []string{op, odd}, sortedKeys(t, rdb))
}

func TestEntriesRedisDown(t *testing.T) {
	s := New(Options{Addrs: []string{fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))}, Timeout: time.Second}, keys.Builder{Prefix: "d:"})
	t.Cleanup(func() { s.Close() })
	ctx := context.Background()
	var re *RedisError
	_, err := s.SetEntry(ctx, keys.Block, keys.IP, "192.0.2.1", "r", 0)
	require.ErrorAs(t, err, &re)
	assert.Equal(t, "set entry", re.Op)
	assert.Contains(t, re.Err.Error(), "connection refused")
	_, _, err = s.DeleteEntry(ctx, keys.Block, keys.IP, "192.0.2.1")
	require.ErrorAs(t, err, &re)
	assert.Equal(t, "delete entry", re.Op)
	err = s.PublishChange(ctx, "d:block:ip:192.0.2.1")
	require.ErrorAs(t, err, &re)
	assert.Equal(t, "store: publish change: "+re.Err.Error(), err.Error())
}

// On a Redis Cluster the entries spread over the masters: SetEntry and
// DeleteEntry publish a change only once it is done, List reads every
// master, and EachMaster runs on each master once.
func TestEntriesOnCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("forms a Redis Cluster")
	}
	testenv.Need(t, "redis-server", "redis-cli")
	cl := testenv.StartRedisCluster(t, 2)
	s := New(Options{Addrs: []string{cl.Nodes[0].Addr, cl.Nodes[1].Addr}, Timeout: time.Second}, keys.Builder{Prefix: "k:"})
	t.Cleanup(func() { s.Close() })
	ctx := context.Background()
	ps := changes(t, cl.Nodes[1].Addr, "k:")

	const n = 20
	var want []string
	for i := range n {
		v := fmt.Sprintf("dev-%02d", i)
		key, err := s.SetEntry(ctx, keys.Block, keys.ClientID, v, "r", time.Hour)
		require.NoError(t, err)
		assert.Equal(t, key, nextChange(t, ps), "published across the cluster")
		assert.Equal(t, "r", s.Client().Get(ctx, key).Val(), "written before it was published")
		want = append(want, v)
	}
	var (
		mu      sync.Mutex
		masters []string
	)
	require.NoError(t, EachMaster(ctx, s.Client(), func(ctx context.Context, c *redis.Client) error {
		size, err := c.DBSize(ctx).Result()
		mu.Lock()
		defer mu.Unlock()
		masters = append(masters, c.Options().Addr)
		assert.Positive(t, size, "the keys are spread over both masters")
		return err
	}))
	nodes := []string{cl.Nodes[0].Addr, cl.Nodes[1].Addr}
	slices.Sort(nodes)
	slices.Sort(masters)
	assert.Equal(t, nodes, masters, "each master once")

	ls, err := s.List(ctx, keys.Block, "", 100)
	require.NoError(t, err)
	var got []string
	for _, e := range ls.Entries {
		got = append(got, e.Value)
		assert.WithinDuration(t, time.Now().Add(time.Hour), e.Expires, 5*time.Second)
	}
	assert.Equal(t, want, got, "every master scanned, in order")

	key, existed, err := s.DeleteEntry(ctx, keys.Block, keys.ClientID, "dev-07")
	require.NoError(t, err)
	assert.True(t, existed)
	assert.Equal(t, key, nextChange(t, ps))
	ls, err = s.List(ctx, keys.Block, "", 1)
	require.NoError(t, err)
	assert.Equal(t, 19, ls.Total)
	assert.Equal(t, 18, ls.More)
}
