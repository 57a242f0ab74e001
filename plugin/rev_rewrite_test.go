package plugin

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// revGuard is rewriteGuard with its log lines kept.
func revGuard(t *testing.T, users int, extra map[string]string) (*Guard, *testenv.Redis, *redis.Client, func() []string) {
	t.Helper()
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	line := bcryptLine(t, "u", "pw")
	hash := strings.TrimSpace(strings.TrimPrefix(line, "u:"))
	var sb strings.Builder
	for i := 0; i < users; i++ {
		fmt.Fprintf(&sb, "u%d:%s\n", i, hash)
	}
	path := filepath.Join(t.TempDir(), "passwd")
	require.NoError(t, os.WriteFile(path, []byte(sb.String()), 0o600))
	opts := map[string]string{"redis_addr": r.Addr, "password_file": path}
	for k, v := range extra {
		opts[k] = v
	}
	g, lines := loggedGuard(t, opts)
	return g, r, rdb, lines
}

// loggedGuard is a guard (New) on opts, with the log lines it wrote, once
// its replica is loaded.
func loggedGuard(t *testing.T, opts map[string]string) (*Guard, func() []string) {
	t.Helper()
	cfg, err := config.Parse(opts)
	require.NoError(t, err)
	var (
		mu    sync.Mutex
		lines []string
	)
	g, err := New(cfg, Output{Log: func(_ Level, s string) { mu.Lock(); lines = append(lines, s); mu.Unlock() }})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	require.Eventually(t, g.sync.Ready, 5*time.Second, 10*time.Millisecond)
	return g, func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), lines...) }
}

func countLines(lines []string, sub string) int {
	n := 0
	for _, l := range lines {
		if strings.Contains(l, sub) {
			n++
		}
	}
	return n
}

// Hostile review of f15e57f: a rewrite that meets an error reply on one
// username's key (a key of another type; on Redis before 6.2, ZADD GT
// itself) marked Redis down, and health.back ran the rewrite again at once:
// Redis flapped down and up every health probe for as long as the key
// stayed (redis_unavailable deny refusing every client meanwhile), and the
// first error stopped the rewrite, so the sources of every connection in
// the batches after it were never written.
func TestKnownRewriteAnErrorReplyNeitherFlapsRedisNorStopsTheRest(t *testing.T) {
	const n = 1000
	g, _, rdb, lines := revGuard(t, n, nil)
	for i := 0; i < n; i++ {
		require.Equal(t, Allow, g.Authenticate(rewriteClient(i, "pw")).Result)
	}
	require.Eventually(t, func() bool { return knownCount(t, rdb, n) == n }, 5*time.Second, 10*time.Millisecond)
	ctx := context.Background()
	require.NoError(t, rdb.FlushAll(ctx).Err())
	bad := map[int]bool{}
	for i := 0; i < n; i += 50 { // 20 keys of another type, spread over the batches
		bad[i] = true
		require.NoError(t, rdb.Set(ctx, fmt.Sprintf("guard:known:u%d", i), "not a set", 0).Err())
	}
	g.replicaFlushed() // what the Sync calls when it finds the flush

	var downs atomic.Int32
	deadline := time.Now().Add(3 * time.Second)
	wasUp := true
	for time.Now().Before(deadline) {
		up := g.health.up()
		if wasUp && !up {
			downs.Add(1)
		}
		wasUp = up
		time.Sleep(2 * time.Millisecond)
	}
	unreachable := countLines(lines(), "unreachable")
	t.Logf("in 3 s: Redis seen down %d times, %d 'unreachable' lines", downs.Load(), unreachable)
	assert.Zero(t, downs.Load(), "Redis answered: it is not down")
	assert.Zero(t, unreachable)

	written := 0
	for i := 0; i < n; i++ {
		c := rewriteClient(i, "")
		if !bad[i] && rdb.ZScore(ctx, "guard:known:"+c.Username, "clientid:"+c.ClientID).Err() == nil {
			written++
		}
	}
	t.Logf("%d of %d good devices written again", written, n-len(bad))
	assert.Equal(t, n-len(bad), written, "one bad key must not stop the others")
}

// A rewrite refused by a reply that passes (OOM: a Redis full under
// noeviction) does not mark Redis down, so health.back never wakes the
// loop: it is tried again on its backoff, and written once Redis takes
// writes again (within knownRetryMin and the backoff's doublings).
func TestKnownRewriteRetriedAfterAnOOM(t *testing.T) {
	const n = 300
	g, r, rdb, lines := revGuard(t, n, nil)
	for i := 0; i < n; i++ {
		require.Equal(t, Allow, g.Authenticate(rewriteClient(i, "pw")).Result)
	}
	require.Eventually(t, func() bool { return knownCount(t, rdb, n) == n }, 5*time.Second, 10*time.Millisecond)
	r.CLI("CONFIG", "SET", "maxmemory", "1")
	require.NoError(t, rdb.FlushAll(context.Background()).Err())
	g.replicaFlushed()
	time.Sleep(1500 * time.Millisecond) // a first try and a retry refused
	assert.Zero(t, knownCount(t, rdb, n))
	assert.True(t, g.health.up(), "an OOM is an answer")
	r.CLI("CONFIG", "SET", "maxmemory", "0")
	start := time.Now()
	require.Eventually(t, func() bool { return knownCount(t, rdb, n) == n }, 10*time.Second, 20*time.Millisecond, "retried once Redis takes writes")
	t.Logf("written %s after Redis took writes again", time.Since(start).Round(time.Millisecond))
	assert.Equal(t, 1, countLines(lines(), "writing again the known sources"), "the failure logged once")
}
