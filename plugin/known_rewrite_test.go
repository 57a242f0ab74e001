package plugin

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// rewriteGuard is a files-backend guard on a real redis-server, with the
// users u0..u(users-1), each with password "pw" (revGuard).
func rewriteGuard(t *testing.T, users int) (*Guard, *testenv.Redis, *redis.Client) {
	t.Helper()
	g, r, rdb, _ := revGuard(t, users, nil)
	return g, r, rdb
}

// rewriteClient is device i of rewriteGuard: user u<i>, its own IP and
// client ID.
func rewriteClient(i int, pass string) Client {
	return Client{Handle: uintptr(0x1000 + 16*i), ClientID: fmt.Sprintf("dev-%d", i),
		Address: fmt.Sprintf("127.7.%d.%d", i/250, 1+i%250), Username: fmt.Sprintf("u%d", i), HasUsername: true, Password: []byte(pass)}
}

// knownCount is how many of devices 0..n-1 have both their sources in
// guard:known:u<i>.
func knownCount(t *testing.T, rdb *redis.Client, n int) int {
	ctx := context.Background()
	pipe := rdb.Pipeline()
	cmds := make([]*redis.FloatCmd, 0, 2*n)
	for i := 0; i < n; i++ {
		c := rewriteClient(i, "")
		cmds = append(cmds, pipe.ZScore(ctx, "guard:known:"+c.Username, "ip:"+c.Address),
			pipe.ZScore(ctx, "guard:known:"+c.Username, "clientid:"+c.ClientID))
	}
	_, _ = pipe.Exec(ctx)
	got := 0
	for i := 0; i < n; i++ {
		if cmds[2*i].Err() == nil && cmds[2*i+1].Err() == nil {
			got++
		}
	}
	return got
}

// After a FLUSHALL or an empty restart, the known sources of the devices
// that stay connected through it are written again at once (rewriteKnown),
// not at each one's next success: a README-only attacker found a device
// connected through a flush missing from guard:known:<user> (0 members 5 s
// later), and another broker refused it during a throttle of its username.
// A device that left, or whose password was not checked here, is not
// written.
func TestKnownSourcesOfLiveConnectionsWrittenAgainAfterALoss(t *testing.T) {
	const n = 1000
	g, r, rdb := rewriteGuard(t, n+1)
	for i := 0; i < n+1; i++ {
		require.Equal(t, Allow, g.Authenticate(rewriteClient(i, "pw")).Result)
	}
	g.Disconnected(rewriteClient(n, "").Handle) // left: not written again
	anon := Client{Handle: 0x9000000, ClientID: "anon-dev", Address: "127.8.0.1"}
	require.Equal(t, Defer, g.Authenticate(anon).Result) // no username: no password checked here
	require.Eventually(t, func() bool { return knownCount(t, rdb, n+1) == n+1 }, 5*time.Second, 10*time.Millisecond, "first written")
	scores := rdb.ZRangeWithScores(context.Background(), "guard:known:u0", 0, -1).Val()

	for _, loss := range []struct {
		name string
		do   func()
	}{
		{"FLUSHALL", func() { r.CLI("FLUSHALL") }},
		{"an empty restart", func() { r.Kill(); r.Restart() }},
	} {
		loss.do()
		start := time.Now()
		require.Eventually(t, func() bool { return knownCount(t, rdb, n) == n }, 5*time.Second, 10*time.Millisecond,
			"after %s, the live devices' sources written again", loss.name)
		t.Logf("after %s: %d live devices' sources written again in %s", loss.name, n, time.Since(start).Round(time.Millisecond))
		assert.Zero(t, knownCount(t, rdb, n+1)-n, "the device that left is not written again")
		assert.Zero(t, rdb.Exists(context.Background(), "guard:known:").Val(), "nor the one without a username")
		again := rdb.ZRangeWithScores(context.Background(), "guard:known:u0", 0, -1).Val()
		require.Len(t, again, len(scores))
		for j := range again { // the success's ms, and its admit's: within a second
			assert.Equal(t, scores[j].Member, again[j].Member)
			assert.InDelta(t, scores[j].Score, again[j].Score, 1000, "scored by the success, as first written")
		}
	}
}

// A rewrite only raises a score (ZADD GT): a later success another broker
// wrote meanwhile is kept.
func TestKnownRewriteKeepsALaterScore(t *testing.T) {
	k, rdb, _ := knownOnRedis(t, time.Hour)
	ctx := context.Background()
	now := time.Now().UnixMilli()
	require.NoError(t, rdb.ZAdd(ctx, "guard:known:bob", redis.Z{Score: float64(now), Member: "ip:192.0.2.1"}).Err())
	require.NoError(t, k.exec([]knownWrite{{username: "bob", text: "ip:192.0.2.1", ms: now - 5000}, {username: "bob", text: "clientid:d", ms: now - 5000}}, true))
	assert.Equal(t, float64(now), rdb.ZScore(ctx, "guard:known:bob", "ip:192.0.2.1").Val(), "the later score kept")
	assert.Equal(t, float64(now-5000), rdb.ZScore(ctx, "guard:known:bob", "clientid:d").Val())
}

// An error reply to the writer of known sources (a guard:known:<user> key
// of another type) is an answer: Redis is not marked down. Before, each
// success of that user marked it down until the probe saw it up again,
// and with redis_unavailable deny every client was refused meanwhile (the
// hostile review of f15e57f found it for the rewrite and left the writer).
func TestKnownWriteErrorReplyDoesNotMarkRedisDown(t *testing.T) {
	g, _, rdb, lines := revGuard(t, 1, nil)
	ctx := context.Background()
	require.NoError(t, rdb.Set(ctx, "guard:known:u0", "not a set", 0).Err())
	downs, wasUp := 0, true
	for i := 0; i < 20; i++ { // a new source each: each is written
		c := rewriteClient(0, "pw")
		c.Handle, c.Address, c.ClientID = uintptr(0x5000+16*i), fmt.Sprintf("127.9.0.%d", 1+i), fmt.Sprintf("dev-w%d", i)
		require.Equal(t, Allow, g.Authenticate(c).Result)
		for t0 := time.Now(); time.Since(t0) < 150*time.Millisecond; time.Sleep(2 * time.Millisecond) {
			up := g.health.up()
			if wasUp && !up {
				downs++
			}
			wasUp = up
		}
	}
	t.Logf("20 writes refused with WRONGTYPE: Redis seen down %d times", downs)
	assert.Zero(t, downs, "Redis answered: it is not down")
	assert.Zero(t, countLines(lines(), "unreachable"))
	assert.Equal(t, 1, countLines(lines(), "redis refused writing known sources"), "told once: %q", lines())
}
