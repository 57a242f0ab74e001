package plugin

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// A success this broker could not write to Redis stays its own knowledge
// (a README-only attacker: the failed write deleted it, and the device the
// broker had just let in was refused as throttled while Redis was down).
func TestKnownSourcesKeepWhatTheyCouldNotWrite(t *testing.T) {
	testenv.Need(t, "redis-server")
	dead := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), MaxRetries: -1})
	t.Cleanup(func() { _ = dead.Close() })
	stop := make(chan struct{})
	var wg sync.WaitGroup
	t.Cleanup(func() { close(stop); wg.Wait() })
	var mu sync.Mutex
	downs := 0
	k := newKnownSources(knownDeps{rdb: dead, kb: keys.Builder{Prefix: "guard:"}, max: 1000, window: time.Hour,
		failWindow: time.Minute, stop: stop,
		down:  func(error) { mu.Lock(); downs++; mu.Unlock() },
		spawn: func(_ string, fn func()) { wg.Add(1); go func() { defer wg.Done(); fn() }() }})
	ip := netip.MustParseAddr("192.0.2.7")
	now := time.Now()
	k.succeeded("bob", ip, "dev-1", now)
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return downs > 0 }, 5*time.Second, 10*time.Millisecond, "the write never failed")
	byIP, byID := k.known("bob", ip, "dev-1", now.Add(time.Second))
	assert.True(t, byIP, "the IP it saw succeed is still known here")
	assert.True(t, byID, "and the client ID")
}

// A success written to a Redis that then lost it (restarted empty,
// flushed) is written again at its next success once the loss is noticed
// (forgetWritten: Redis back, the replica's session lost, its flush mark
// gone), not a refresh (up to an hour) later.
func TestKnownSourcesWrittenAgainAfterRedisLostThem(t *testing.T) {
	k, rdb, _ := knownOnRedis(t, time.Hour)
	ctx := context.Background()
	ip := netip.MustParseAddr("192.0.2.8")
	now := time.Now()
	k.succeeded("alice", ip, "dev-2", now)
	require.Eventually(t, func() bool { return rdb.ZCard(ctx, "guard:known:alice").Val() == 2 }, 5*time.Second, 10*time.Millisecond)
	require.NoError(t, rdb.FlushAll(ctx).Err())

	k.succeeded("alice", ip, "dev-2", now.Add(2*time.Second)) // within the refresh, the loss not noticed
	time.Sleep(300 * time.Millisecond)                        // knownLinger is 100 ms
	assert.Zero(t, rdb.ZCard(ctx, "guard:known:alice").Val(), "written once per refresh while nothing says Redis lost it")

	k.forgetWritten(now.Add(3 * time.Second))
	k.succeeded("alice", ip, "dev-2", now.Add(4*time.Second))
	assert.Eventually(t, func() bool { return rdb.ZCard(ctx, "guard:known:alice").Val() == 2 }, 5*time.Second, 10*time.Millisecond,
		"written again at its next success once the loss is noticed")
}
