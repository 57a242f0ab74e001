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

// Successes from new sources, spaced as CONNECTs come, wake the writer of
// known sources once per batch, not once per success (with a channel, each
// one made the parked writer runnable: a futex wake-up per CONNECT on the
// broker's core), and all of them reach Redis.
func TestKnownSourcesWakeWriterOncePerBatch(t *testing.T) {
	k, rdb, _ := knownOnRedis(t, time.Hour)
	time.Sleep(50 * time.Millisecond) // the writer parked

	// 1 200 successes, 120 ms: the background's wakes WakesDuring cannot
	// subtract grow as the square root of the time, the defect's with it.
	// Spread over four usernames: 600 sources each, under the set's 1 000.
	const n, gap = 1200, 100 * time.Microsecond
	users := []string{"fleet-0", "fleet-1", "fleet-2", "fleet-3"}
	ips := make([]netip.Addr, n)
	ids := make([]string, n)
	for i := range ips {
		ips[i] = netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
		ids[i] = fmt.Sprintf("dev-%d", i)
	}
	now := time.Now()
	woken := testenv.WakesDuring(n*gap, func() {
		for i := range ips {
			k.succeeded(users[i%len(users)], ips[i], ids[i], now) // a new IP and client ID each: two writes
			for t0 := time.Now(); time.Since(t0) < gap; {
			}
		}
	})
	// A wake per success: 2n/8 sampled (300); once per batch: a handful.
	assert.Less(t, woken, uint64(20), "goroutines made runnable (1 in 8 sampled) while %d successes were noted", n)
	require.Eventually(t, func() bool {
		var all int64
		for _, u := range users {
			c, err := rdb.ZCard(context.Background(), "guard:known:"+u).Result()
			if err != nil {
				return false
			}
			all += c
		}
		return all == 2*n
	}, 5*time.Second, 10*time.Millisecond, "every new source reaches Redis")
}

// knownOnRedis starts known sources (conflict_window window) on a real
// redis-server. halt closes their stop channel (once) and returns a channel
// closed when every goroutine they spawned has returned; the test's cleanup
// halts them and waits.
func knownOnRedis(t *testing.T, window time.Duration) (k *knownSources, rdb *redis.Client, halt func() <-chan struct{}) {
	t.Helper()
	return knownOn(t, testenv.StartRedis(t), window)
}

// knownOn is knownOnRedis on r.
func knownOn(t *testing.T, r *testenv.Redis, window time.Duration) (k *knownSources, rdb *redis.Client, halt func() <-chan struct{}) {
	t.Helper()
	rdb = redis.NewClient(&redis.Options{Addr: r.Addr})
	stop := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	halt = func() <-chan struct{} {
		once.Do(func() { close(stop) })
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		return done
	}
	t.Cleanup(func() { <-halt(); _ = rdb.Close() })
	k = newKnownSources(knownDeps{rdb: rdb, kb: keys.Builder{Prefix: "guard:"}, max: 1000, window: window,
		failWindow: time.Minute, down: func(error) {}, stop: stop,
		spawn: func(_ string, fn func()) { wg.Add(1); go func() { defer wg.Done(); fn() }() }})
	return k, rdb, halt
}

// The writer's tick trims its queue: a burst of successes that ended with a
// large batch leaves no large buffer behind once a tick (knownTick,
// shortened here) has passed.
func TestKnownSourcesTickTrims(t *testing.T) {
	was := knownTick
	knownTick = 50 * time.Millisecond
	defer func() { knownTick = was }()
	k, rdb, _ := knownOnRedis(t, time.Hour)
	now := time.Now()
	const n = 400 // 800 writes (a new IP and client ID each; known sources keep 1000), within one linger
	for i := 0; i < n; i++ {
		k.succeeded("fleet", netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}), fmt.Sprintf("dev-%d", i), now)
	}
	require.Eventually(t, func() bool {
		c, err := rdb.ZCard(context.Background(), "guard:known:fleet").Result()
		return err == nil && c == 2*n
	}, 10*time.Second, 10*time.Millisecond, "every new source reaches Redis")
	require.Eventually(t, func() bool { f, h := k.queue.Caps(); return f <= 256 && h <= 256 },
		5*time.Second, 10*time.Millisecond, "the tick trims the buffers")
}
