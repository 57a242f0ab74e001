package plugin

import (
	"fmt"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// Attack on d228753: the known-sources writer holds a burst's buffers from
// the moment it takes the batch, and the heap release waits while it says
// so (trimDue). It said so only after the batch's round trip: with Redis
// stopped (SIGSTOP) or slow for that round trip the broker is quiet, and
// the release came at its first quiet tick with the buffers live.
func TestAtk13KnownTrimDueWhileRedisHangs(t *testing.T) {
	testenv.Need(t, "redis-server")
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr, ReadTimeout: 5 * time.Second})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	k := newKnownSources(knownDeps{rdb: rdb, kb: keys.Builder{Prefix: "guard:"}, max: 1000, window: time.Hour,
		failWindow: time.Minute, down: func(error) {}, stop: stop,
		spawn: func(_ string, fn func()) { wg.Add(1); go func() { defer wg.Done(); fn() }() }})
	require.NoError(t, r.Signal(syscall.SIGSTOP))
	var cont sync.Once
	resume := func() { cont.Do(func() { _ = r.Signal(syscall.SIGCONT) }) }
	t.Cleanup(func() { resume(); close(stop); wg.Wait(); _ = rdb.Close() })

	now := time.Now()
	const n = 400 // 800 writes, within one linger
	for i := 0; i < n; i++ {
		k.succeeded("fleet", netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}), fmt.Sprintf("dev-%d", i), now)
	}
	require.Eventually(t, func() bool { _, h := k.queue.Caps(); return h >= 2*n },
		5*time.Second, time.Millisecond, "the burst taken in one batch")
	time.Sleep(300 * time.Millisecond) // the batch's round trip waits on the stopped Redis
	assert.True(t, k.trimDue.Load(), "the writer holds a burst's buffers (Redis stopped), trimDue false")
	resume()
	require.Eventually(t, func() bool { return !k.trimDue.Load() }, 10*time.Second, 5*time.Millisecond, "trimmed, trimDue still true")
}

// 464c8ed's deferred clear in the known-sources writer, which its test
// (TestRunStopClearsTrimDue) checked in the conflict tracker only: a writer
// stopped while it holds a burst's buffers says no more that it will trim
// them (the heap release would wait its bound at every burst for it).
func TestAtk13KnownStopClearsTrimDue(t *testing.T) {
	k, _, halt := knownOnRedis(t, time.Hour)
	now := time.Now()
	const n = 400 // 800 writes, within one linger
	for i := 0; i < n; i++ {
		k.succeeded("fleet", netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}), fmt.Sprintf("dev-%d", i), now)
	}
	require.Eventually(t, k.trimDue.Load, 5*time.Second, time.Millisecond, "the burst's buffers held, trimDue false")
	select {
	case <-halt():
	case <-time.After(10 * time.Second):
		t.Fatal("the writer did not stop")
	}
	assert.False(t, k.trimDue.Load(), "a stopped writer still due to trim")
}

// The writer under stragglers after a burst (TestAtk13TrimsDespiteATrickle
// for the conflict tracker): a new source every 200 ms does not keep the
// burst's buffers, nor trimDue, for long.
func TestAtk13KnownTrimsDespiteATrickle(t *testing.T) {
	k, _, _ := knownOnRedis(t, time.Hour)
	now := time.Now()
	const n = 400 // 800 writes, within one linger
	for i := 0; i < n; i++ {
		k.succeeded("fleet", netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}), fmt.Sprintf("dev-%d", i), now)
	}
	require.Eventually(t, k.trimDue.Load, 5*time.Second, time.Millisecond, "the burst's buffers held, trimDue false")
	start := time.Now()
	trimmed := time.Duration(0)
	for i := 0; time.Since(start) < 3*time.Second; i++ {
		k.succeeded("late", netip.AddrFrom4([4]byte{10, 9, byte(i >> 8), byte(i)}), fmt.Sprintf("late-%d", i), time.Now())
		time.Sleep(200 * time.Millisecond)
		if f, h := k.queue.Caps(); trimmed == 0 && !k.trimDue.Load() && max(f, h) <= knownTrimAbove {
			trimmed = time.Since(start)
		}
	}
	if assert.NotZero(t, trimmed, "a straggler every 200 ms: the burst's buffers still held 3 s after it") {
		t.Logf("trimmed %v after the burst, stragglers every 200 ms", trimmed.Round(time.Millisecond))
		assert.Less(t, trimmed, knownIdleTrim+time.Second)
	}
}
