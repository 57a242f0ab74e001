package replica

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// Was a DEFECT (fixed: checkEviction reads INFO memory, before and apart from CONFIG): a Redis that may evict goes unwarned when CONFIG is refused.
//
// README (the "local replica" bullets): "A Redis that may evict (a
// `maxmemory` limit with a policy other than `noeviction`) is warned of at
// the replica's session start, once for each node until its setting
// changes". store/replica/load.go runs checkEviction only after its
// CONFIG GET notify-keyspace-events succeeded; where CONFIG is refused (an
// ACL, as here; managed Redis services that rename or disable CONFIG,
// whose default policy is often volatile-lru) nothing is said of eviction:
// the only line is "cannot read notify-keyspace-events ... relying on the
// change channel", which says nothing of maxmemory. INFO memory, which such
// a user may run, tells maxmemory and maxmemory_policy (checked below).
//
// Observed: no line naming eviction or maxmemory. Expected: the warning
// (from INFO memory), or at least a line that eviction could not be
// checked.
func TestAtk34EvictionSilentWhenConfigRefused(t *testing.T) {
	r := testenv.StartRedis(t, "--maxmemory", "100mb", "--maxmemory-policy", "volatile-lru")
	r.CLI("ACL", "SETUSER", "noconfig", "on", ">pw", "~*", "&*", "+@all", "-config")
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr, Username: "noconfig", Password: "pw"})
	t.Cleanup(func() { _ = rdb.Close() })
	info, err := rdb.Info(t.Context(), "memory").Result()
	require.NoError(t, err, "the user may run INFO")
	require.Contains(t, info, "maxmemory_policy:volatile-lru", "INFO tells the policy")
	var l logs
	s := NewSync(New(kb), rdb, Options{ResyncEvery: time.Hour, Log: l.add})
	run(t, s)
	require.Eventually(t, s.Ready, 5*time.Second, 5*time.Millisecond)
	require.Eventually(t, func() bool { return l.count("cannot read notify-keyspace-events") == 1 }, 5*time.Second, 10*time.Millisecond)
	time.Sleep(200 * time.Millisecond)
	l.mu.Lock()
	lines := strings.Join(l.lines, "\n")
	l.mu.Unlock()
	t.Logf("log: %s", lines)
	assert.True(t, strings.Contains(lines, "evict") || strings.Contains(lines, "maxmemory"),
		"a Redis at maxmemory-policy volatile-lru is said to be one that may evict (or that it could not be checked)")
}

// HOLDS: a Redis with a maxmemory limit and noeviction (what README asks
// for) logs no eviction warning, at its first session or the next two:
// the warning is no noise where the setting is safe.
func TestAtk34NoevictionWithLimitQuiet(t *testing.T) {
	r := testenv.StartRedis(t, "--maxmemory", "100mb", "--maxmemory-policy", "noeviction")
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	var l logs
	var lost atomic.Int32
	s := NewSync(New(kb), rdb, Options{ResyncEvery: time.Hour, Log: l.add, OnLost: func(error) { lost.Add(1) }})
	run(t, s)
	require.Eventually(t, s.Ready, 5*time.Second, 5*time.Millisecond)
	for i := int32(0); i < 2; i++ {
		r.CLI("CLIENT", "KILL", "TYPE", "pubsub")
		require.Eventually(t, func() bool { return lost.Load() > i }, 5*time.Second, 10*time.Millisecond)
		require.Eventually(t, func() bool { return r.CLI("PUBSUB", "NUMPAT") != "0" }, 5*time.Second, 10*time.Millisecond)
	}
	assert.Zero(t, l.count("may evict"), "%q", l.lines)
}
