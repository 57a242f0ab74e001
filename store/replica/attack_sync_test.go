package replica

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// redisModel reads every list key Redis holds (GET of each SCAN result),
// as the model the oracle answers from; keys of another type are none.
func redisModel(t *testing.T, rdb *redis.Client) model {
	t.Helper()
	ctx := context.Background()
	m := model{}
	it := rdb.Scan(ctx, 0, "guard:*", 1000).Iterator()
	for it.Next(ctx) {
		k := it.Val()
		if !isListKey(k) {
			continue
		}
		v, err := rdb.Get(ctx, k).Result()
		if err != nil {
			continue // gone since, or WRONGTYPE
		}
		if New(kb).Put(k, v, time.Time{}) != nil {
			continue // refused by the replica as it is by the plugin's lookups
		}
		m[k] = slot{value: v}
	}
	require.NoError(t, it.Err())
	return m
}

// sameLists says whether two answers name the same allow and block keys
// with the same values (not the TTLs: the oracle reads Redis later).
func sameLists(a, b store.Answer) bool {
	same := func(x, y *store.Match) bool {
		if x == nil || y == nil {
			return x == y
		}
		return x.Key == y.Key && x.Reason == y.Reason
	}
	return same(a.Allow, b.Allow) && same(a.Block, b.Block)
}

// Through a real Redis and a running Sync: random commands on the list keys
// (SET, SET PX, DEL, UNLINK, RENAME, COPY, MOVE, PEXPIRE, PERSIST, GETDEL,
// MSET, a MULTI that deletes and re-adds a key, keys of another type,
// FLUSHALL, FLUSHDB, SWAPDB), and after each round the replica answers
// every query as a brute-force look at what Redis holds.
func TestSyncAnswersAsRedisUnderRandomCommands(t *testing.T) {
	r, _, srv, rdb, _ := startSync(t)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(2026, 12))
	pools := newAttackPools()
	// Keys written in database 1 reach database 0 by SWAPDB, which Redis
	// notifies to no one: only the reload that follows (the flush mark is
	// swapped away too) brings them to the replica.
	db1 := redis.NewClient(&redis.Options{Addr: srv.Addr, DB: 1})
	t.Cleanup(func() { db1.Close() })
	listKey := func() string {
		for {
			if k := pools.key(rng); isListKey(k) {
				return k
			}
		}
	}
	queries := make([]store.Query, 40)
	for i := range queries {
		queries[i] = pools.query(rng)
	}
	for round := 0; round < 60; round++ {
		for i := 1 + rng.IntN(12); i > 0; i-- {
			k, k2 := listKey(), listKey()
			v := fmt.Sprintf("r%d", rng.IntN(4))
			var err error
			switch x := rng.IntN(100); {
			case x < 35:
				err = rdb.Set(ctx, k, v, 0).Err()
			case x < 42:
				err = rdb.Set(ctx, k, v, 30*time.Millisecond).Err() // gone before the round's check
			case x < 48:
				err = rdb.Set(ctx, k, v, time.Minute).Err()
			case x < 58:
				err = rdb.Del(ctx, k).Err()
			case x < 61:
				err = rdb.Unlink(ctx, k).Err()
			case x < 65:
				err = rdb.Rename(ctx, k, k2).Err()
			case x < 67:
				err = rdb.Copy(ctx, k, k2, 0, true).Err()
			case x < 68:
				err = rdb.Move(ctx, k, 1).Err()
			case x < 69:
				err = db1.Set(ctx, k, v+"-db1", 0).Err()
			case x < 73:
				err = rdb.PExpire(ctx, k, 30*time.Millisecond).Err()
			case x < 76:
				err = rdb.Persist(ctx, k).Err()
			case x < 78:
				err = rdb.GetDel(ctx, k).Err()
			case x < 82:
				err = rdb.MSet(ctx, k, v, k2, v).Err()
			case x < 88:
				_, err = rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
					p.Del(ctx, k)
					p.Set(ctx, k, v+"-again", 0)
					return nil
				})
			case x < 90:
				_, err = rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
					p.Del(ctx, k)
					p.RPush(ctx, k, "x") // another type: no entry
					return nil
				})
			case x < 93:
				_, err = rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
					p.Set(ctx, k, v, 0)
					p.Del(ctx, k)
					return nil
				})
			case x < 95:
				err = rdb.FlushAll(ctx).Err()
			case x < 97:
				err = rdb.FlushDB(ctx).Err()
			default:
				for j := rng.IntN(6); j > 0; j-- {
					require.NoError(t, db1.Set(ctx, listKey(), v+"-db1", 0).Err())
				}
				srv.CLI("SWAPDB", "0", "1")
			}
			if err != nil && err != redis.Nil && err.Error() != "ERR no such key" {
				require.NoError(t, err, "round %d", round)
			}
		}
		time.Sleep(60 * time.Millisecond) // the PX 30 keys have expired
		var bad string
		ok := func() bool {
			m := redisModel(t, rdb)
			now := time.Now().UnixMilli()
			for _, qq := range queries {
				if want, got := m.oracle(qq, now), r.Lookup(qq, time.UnixMilli(now)); !sameLists(want, got) {
					bad = fmt.Sprintf("%+v: want %+v %+v, got %+v %+v", qq, want.Allow, want.Block, got.Allow, got.Block)
					return false
				}
			}
			return true
		}
		// A flush is noticed within flushCheckEvery (500 ms) plus a reload.
		deadline := time.Now().Add(3 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: the replica never answered as Redis: %s", round, bad)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// On a Redis Cluster of three masters: random SET, SET PX, DEL, PEXPIRE,
// PERSIST and GETDEL, a FLUSHALL of one master and a FLUSHALL of every one,
// and after each round the replica answers as a brute-force look at the
// keys of every master (one load per master, scanned concurrently).
func TestSyncOnClusterAnswersAsRedis(t *testing.T) {
	if testing.Short() {
		t.Skip("forms a Redis Cluster")
	}
	cl := testenv.StartRedisCluster(t, 3)
	var addrs []string
	for _, n := range cl.Nodes {
		addrs = append(addrs, n.Addr)
	}
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	require.Eventually(t, func() bool { return rdb.Set(ctx, "guard:block:clientid:warm", "x", 0).Err() == nil },
		10*time.Second, 20*time.Millisecond, "the cluster never took writes")
	r := New(kb)
	s := NewSync(r, rdb, Options{ResyncEvery: time.Hour, Log: func(_ bool, m string) { t.Log(m) }})
	run(t, s)
	require.Eventually(t, s.Healthy, 10*time.Second, 5*time.Millisecond)

	rng := rand.New(rand.NewPCG(2026, 3))
	pools := newAttackPools()
	listKey := func() string {
		for {
			if k := pools.key(rng); isListKey(k) {
				return k
			}
		}
	}
	queries := make([]store.Query, 40)
	for i := range queries {
		queries[i] = pools.query(rng)
	}
	clusterModel := func() model {
		var mu sync.Mutex
		m := model{}
		require.NoError(t, rdb.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			it := c.Scan(ctx, 0, "guard:*", 1000).Iterator()
			for it.Next(ctx) {
				k := it.Val()
				if !isListKey(k) || New(kb).Put(k, "", time.Time{}) != nil {
					continue
				}
				if v, err := c.Get(ctx, k).Result(); err == nil {
					mu.Lock()
					m[k] = slot{value: v}
					mu.Unlock()
				}
			}
			return it.Err()
		}))
		return m
	}
	for round := 0; round < 40; round++ {
		for i := 1 + rng.IntN(10); i > 0; i-- {
			k := listKey()
			v := fmt.Sprintf("c%d", rng.IntN(4))
			var err error
			switch x := rng.IntN(100); {
			case x < 40:
				err = rdb.Set(ctx, k, v, 0).Err()
			case x < 50:
				err = rdb.Set(ctx, k, v, 30*time.Millisecond).Err()
			case x < 70:
				err = rdb.Del(ctx, k).Err()
			case x < 78:
				err = rdb.PExpire(ctx, k, 30*time.Millisecond).Err()
			case x < 84:
				err = rdb.Persist(ctx, k).Err()
			case x < 90:
				err = rdb.GetDel(ctx, k).Err()
			case x < 96:
				cl.Nodes[rng.IntN(len(cl.Nodes))].CLI("FLUSHALL")
			default:
				err = rdb.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return c.FlushAll(ctx).Err() })
			}
			if err != nil && err != redis.Nil {
				require.NoError(t, err, "round %d", round)
			}
		}
		time.Sleep(60 * time.Millisecond)
		var bad string
		ok := func() bool {
			m := clusterModel()
			now := time.Now().UnixMilli()
			for _, qq := range queries {
				if want, got := m.oracle(qq, now), r.Lookup(qq, time.UnixMilli(now)); !sameLists(want, got) {
					bad = fmt.Sprintf("%+v: want %+v %+v, got %+v %+v", qq, want.Allow, want.Block, got.Allow, got.Block)
					return false
				}
			}
			return true
		}
		deadline := time.Now().Add(3 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: the replica never answered as the cluster: %s", round, bad)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// A key Redis evicts (maxmemory) leaves the replica as a DEL does. Redis
// notifies evictions in the class 'e' of notify-keyspace-events, which the
// Sync does not turn on (it asks for K, g, $ and x): an evicted allow key
// keeps lifting bans from the replica while Redis no longer holds it, and
// an evicted ban keeps refusing, until the next full reload (replica_resync,
// 5 min by default) or the key's own expiry.
func TestEvictedKeyLeavesTheReplica(t *testing.T) {
	r, _, srv, rdb, _ := startSync(t, "--maxmemory", "4mb", "--maxmemory-policy", "volatile-ttl")
	ctx := context.Background()
	client := q("ev-dev", "198.51.100.77", "")
	require.NoError(t, rdb.Set(ctx, "guard:block:clientid:ev-dev", "ban", 0).Err())
	require.NoError(t, rdb.Set(ctx, "guard:allow:ip:198.51.100.77", "lifts the ban", time.Hour).Err())
	require.Eventually(t, func() bool {
		a := r.Lookup(client, time.Now())
		return a.Allow != nil && a.Block == nil
	}, 2*time.Second, time.Millisecond, "the allow key reached the replica")

	// Fill Redis: the allow key is its only key with an expiry, so
	// volatile-ttl evicts it first; the others are never evicted.
	junk := strings.Repeat("j", 10_000)
	for i := 0; i < 1000 && srv.CLI("EXISTS", "guard:allow:ip:198.51.100.77") == "1"; i++ {
		_ = rdb.Set(ctx, fmt.Sprintf("junk:%d", i), junk, 0).Err() // OOM once nothing is left to evict
	}
	require.Equal(t, "0", srv.CLI("EXISTS", "guard:allow:ip:198.51.100.77"), "Redis evicted the allow key")
	require.Contains(t, srv.CLI("INFO", "stats"), "evicted_keys:1")
	t.Logf("notify-keyspace-events %q", srv.CLI("CONFIG", "GET", "notify-keyspace-events"))
	require.Eventually(t, func() bool { return r.Lookup(client, time.Now()).Block != nil }, 2*time.Second, time.Millisecond,
		"the replica still lifts the ban with an allow key Redis evicted")
}
