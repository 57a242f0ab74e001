package plugin

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// Issue 12: a (username, source) this broker wrote costs no Go heap (at
// most 1 byte an entry) and at most 32 bytes of mapping at 20 000 entries
// (a held device's two sources: 10 000 devices): a 12-byte slot (its key's
// 64 bits as two halves, its second) in a table off the heap (newRecent;
// 19.7 measured), given back when the writer stops. In a Go map of those
// slots it cost 21.8 bytes of live heap, in one of 16-byte slots (the key,
// unix ms) 29.6.
func TestKnownRecentEntryBytesI12(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes what the heap holds")
	}
	stop := make(chan struct{})
	k := newKnownSources(knownDeps{max: 100, window: time.Hour, failWindow: time.Minute,
		spawn: func(string, func()) {}, stop: stop})
	const users = 10000
	names, ids := make([]string, users), make([]string, users)
	for i := range names {
		names[i] = fmt.Sprintf("u%07d", i)
		ids[i] = "held-" + names[i]
	}
	ip := netip.MustParseAddr("192.0.2.7")
	now := time.Now()
	drain := func() {
		for len(k.queue.Take()) > 0 {
		}
		k.queue.Take() // and give back the last batch's buffer
	}
	before := liveHeap()
	for i, u := range names {
		k.succeeded(u, ip, ids[i], now)
		if i%1000 == 999 {
			drain() // the writer's part, not measured here
		}
	}
	drain()
	per := float64(liveHeap()-before) / (2 * users)
	k.mu.Lock()
	n, mapped := k.recent.Len(), float64(k.recent.Mapped())/(2*users)
	k.mu.Unlock()
	require.Equal(t, 2*users, n)
	runtime.KeepAlive(names)
	runtime.KeepAlive(ids)
	t.Logf("%.1f bytes of heap and %.1f mapped per recent entry", per, mapped)
	assert.LessOrEqual(t, per, 1.0)
	assert.LessOrEqual(t, mapped, 32.0)

	// The writer unmaps it when it stops (the plugin's cleanup).
	close(stop)
	k.run()
	k.mu.Lock()
	defer k.mu.Unlock()
	assert.Zero(t, k.recent.Mapped(), "the recent entries are still mapped")
	assert.Zero(t, k.recent.Len())
}

// The recent map keeps seconds, and counts them so that nothing is spared
// or known later than with the ms it kept before: a (username, source) is
// written again once a refresh has passed since its last written success
// (up to a second sooner), and this broker knows a source that succeeded
// within conflict_window (and up to a refresh longer, up to a second less).
func TestKnownRecentSecondsI12(t *testing.T) {
	stop := make(chan struct{})
	defer close(stop)
	const window = 10 * time.Minute
	k := newKnownSources(knownDeps{max: 100, window: window, failWindow: time.Minute,
		spawn: func(string, func()) {}, stop: stop})
	refresh := k.refresh
	require.Equal(t, window/4, refresh)
	ip := netip.MustParseAddr("192.0.2.7")
	for _, frac := range []time.Duration{0, time.Millisecond, 500 * time.Millisecond, 999 * time.Millisecond} {
		t0 := time.Unix(1_700_000_000, 0).Add(frac)
		user := fmt.Sprintf("fleet-%d", frac)
		written := func() int { return len(k.queue.Take()) }
		k.succeeded(user, ip, "dev-1", t0)
		require.Equal(t, 2, written(), "first success: both sources")
		k.succeeded(user, ip, "dev-1", t0.Add(refresh-1001*time.Millisecond))
		assert.Zero(t, written(), "%v: spared more than a second within the refresh", frac)
		k.succeeded(user, ip, "dev-1", t0.Add(refresh))
		assert.Equal(t, 2, written(), "%v: a refresh later it is written again", frac)
		last := t0.Add(refresh)
		for _, at := range []time.Duration{0, window, window + refresh - time.Second} {
			byIP, byID := k.known(user, ip, "dev-1", last.Add(at))
			assert.True(t, byIP && byID, "%v: known %v after its last written success", frac, at)
		}
		for _, at := range []time.Duration{window + refresh + time.Millisecond, window + refresh + time.Second} {
			byIP, byID := k.known(user, ip, "dev-1", last.Add(at))
			assert.False(t, byIP || byID, "%v: not known %v after its last written success", frac, at)
		}
	}
}

// Issue 12: a burst's buffers go within knownIdleTrim of its end, without
// the tick (knownTick, 10 s here).
func TestKnownSourcesIdleTrims(t *testing.T) {
	require.Greater(t, knownTick, 5*time.Second)
	k, rdb, _ := knownOnRedis(t, time.Hour)
	now := time.Now()
	const n = 400 // 800 writes, within one linger
	for i := 0; i < n; i++ {
		k.succeeded("fleet", netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}), fmt.Sprintf("dev-%d", i), now)
	}
	require.Eventually(t, func() bool {
		c, err := rdb.ZCard(context.Background(), "guard:known:fleet").Result()
		return err == nil && c == 2*n
	}, 10*time.Second, 10*time.Millisecond, "every new source reaches Redis")
	// trimDue (Guard.TrimDue: the heap release waits for it) while the
	// buffers are held, no more once trimmed.
	require.Eventually(t, k.trimDue.Load, time.Second, time.Millisecond, "the burst's buffers held, trimDue false")
	start := time.Now()
	require.Eventually(t, func() bool { f, h := k.queue.Caps(); return f <= 256 && h <= 256 },
		knownIdleTrim+time.Second, 10*time.Millisecond, "the buffers trimmed once idle")
	t.Logf("trimmed %v after the burst reached Redis", time.Since(start).Round(time.Millisecond))
	require.Eventually(t, func() bool { return !k.trimDue.Load() }, time.Second, time.Millisecond, "trimmed, trimDue still true")
}

// A throttled username's loaded known sources are keyed by its tracking
// form, a copy: the username is whatever a stranger claims, and cgo makes
// it one allocation with the client ID, so a key that was the username
// itself kept both (up to 128 KB an entry, knownLoadedUsersMax entries:
// about 1.3 GB). 2 000 usernames, each a part of a 60 000-byte string,
// kept 117 MB; now at most 256 bytes of key an entry.
func TestKnownLoadedKeepsNoConnectStrings(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes what the heap holds")
	}
	stop := make(chan struct{})
	defer close(stop)
	k := newKnownSources(knownDeps{max: 100, window: time.Hour, failWindow: time.Minute,
		spawn: func(string, func()) {}, stop: stop}) // the loads never run: the entries stay
	const n = 2000
	now := time.Now()
	before := liveHeap()
	for i := 0; i < n; i++ {
		// A CONNECT's strings as cgo makes them: the client ID, then the
		// username, in one allocation.
		ids := strings.Repeat("c", 60000) + fmt.Sprintf("nobody-%d", i)
		username := ids[60000:]
		if i%2 == 0 {
			k.prefetch(username, now)
		} else {
			k.known(username, netip.MustParseAddr("192.0.2.7"), ids[:60000], now)
		}
	}
	held := liveHeap() - before
	k.mu.Lock()
	loaded := len(k.loaded)
	k.mu.Unlock()
	require.Equal(t, n, loaded)
	t.Logf("%d loaded usernames: %.0f bytes of heap each", n, float64(held)/n)
	assert.Less(t, held, int64(n*1024), "a loaded username keeps its CONNECT's strings")
	// A long username: its hash, the same entry for each of its CONNECTs.
	long := strings.Repeat("u", 70000)
	k.prefetch(long, now)
	k.known(long, netip.Addr{}, "d", now)
	k.mu.Lock()
	_, ok := k.loaded[keys.Tracking(long)]
	loaded = len(k.loaded)
	k.mu.Unlock()
	assert.True(t, ok)
	assert.Equal(t, n+1, loaded)
}

// A load of a throttled username's known sources waits for Redis (up to
// 5 s) in a goroutine of its own (startLoad). Its closure holds the
// caller's tracking form of the username, for a short username a part of
// its CONNECT's strings (one allocation with the client ID); the goroutine
// uses it only before its round trip, so that, once it runs, nothing keeps
// the CONNECT's strings while it waits. A load that used it after the
// round trip (a log line naming the username, say) would keep them: with
// Redis stopped, 500 loads of short usernames with 60 000-byte client IDs
// then held 35 MB (70 KB a load, against under 5 KB).
func TestKnownLoadsKeepNoConnectStrings(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes what the heap holds")
	}
	testenv.Need(t, "redis-server")
	r := testenv.StartRedis(t)
	k, _, halt := knownOn(t, r, time.Hour)
	const n = 500
	now := time.Now()
	before := liveHeap()
	require.NoError(t, r.Signal(syscall.SIGSTOP))
	defer func() { _ = r.Signal(syscall.SIGCONT) }() // before halt waits for the loads (Cleanup)
	for i := 0; i < n; i++ {
		ids := fmt.Sprintf("huge-%d-", i) + strings.Repeat("c", 60000) + fmt.Sprintf("user-%d", i)
		cut := len(ids) - len(fmt.Sprintf("user-%d", i))
		k.known(ids[cut:], netip.MustParseAddr("192.0.2.7"), ids[:cut], now)
	}
	held := liveHeap() - before
	k.mu.Lock()
	loading := 0
	for _, s := range k.loaded {
		if s.loading {
			loading++
		}
	}
	k.mu.Unlock()
	require.NoError(t, r.Signal(syscall.SIGCONT))
	<-halt()
	t.Logf("%d loads waiting for a stopped Redis (%d loading when measured): %.0f bytes of heap each", n, loading, float64(held)/n)
	assert.Equal(t, n, loading, "every load still waiting when the heap was read")
	assert.Less(t, held, int64(n*8192), "a waiting load keeps its CONNECT's strings")
}
