package replica

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// While Redis does not answer, the sessions that retry it log nothing of
// their own about notifications (the health probe says Redis is down,
// once): a README-only attacker counted "cannot read
// notify-keyspace-events" once a second.
func TestNotificationsNotLoggedWhileRedisIsDown(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	var l logs
	s := NewSync(New(kb), rdb, Options{ResyncEvery: time.Hour, Log: l.add})
	run(t, s)
	time.Sleep(1500 * time.Millisecond) // sessions at 0, 0.1, 0.3, 0.7 and 1.5 s
	assert.Zero(t, l.count("notify-keyspace-events"), "%q", l.lines)
	assert.Zero(t, l.count("keyspace notifications"), "%q", l.lines)
}

// A Redis that refuses CONFIG (an ACL) is told of once, not at every new
// session.
func TestNotificationsRefusalLoggedOnce(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("ACL", "SETUSER", "noconfig", "on", ">pw", "~*", "&*", "+@all", "-config")
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr, Username: "noconfig", Password: "pw"})
	t.Cleanup(func() { _ = rdb.Close() })
	var l logs
	var lost atomic.Int32
	s := NewSync(New(kb), rdb, Options{ResyncEvery: time.Hour, Log: l.add, OnLost: func(error) { lost.Add(1) }})
	run(t, s)
	require.Eventually(t, s.Ready, 5*time.Second, 5*time.Millisecond)
	for i := int32(0); i < 3; i++ { // three more sessions: their subscriptions cut
		r.CLI("CLIENT", "KILL", "TYPE", "pubsub")
		require.Eventually(t, func() bool { return lost.Load() > i }, 5*time.Second, 10*time.Millisecond)
		require.Eventually(t, func() bool { return r.CLI("PUBSUB", "NUMPAT") != "0" }, 5*time.Second, 10*time.Millisecond)
	}
	assert.Equal(t, 1, l.count("cannot read notify-keyspace-events"), "%q", l.lines)
}

// A FLUSHALL, which sends no keyspace notification, is told to OnFlushed
// (the known sources written to that Redis went with it) once the flush
// check finds the mark gone: within flushCheckEvery and a round trip.
func TestOnFlushedCalledAtAFlush(t *testing.T) {
	r, _, flushed := flushedSync(t, nil)
	time.Sleep(2 * flushCheckEvery)
	assert.Zero(t, flushed.Load(), "no flush yet")
	r.CLI("FLUSHALL")
	assert.Eventually(t, func() bool { return flushed.Load() > 0 }, 2*flushCheckEvery+time.Second, 10*time.Millisecond)
}

// An empty restart cuts the session; the next one finds the flush mark
// with another value than it saw (it sets a new one) and tells OnFlushed:
// before, only a flush check inside a live session did, so an empty
// restart was never told (the known sources of devices connected through
// it were not written again). A cut subscription, Redis's keys kept, is
// not a flush.
func TestOnFlushedCalledAtAnEmptyRestart(t *testing.T) {
	var lost atomic.Int32
	r, s, flushed := flushedSync(t, func(error) { lost.Add(1) })

	r.CLI("CLIENT", "KILL", "TYPE", "pubsub") // the session ends, the keys stay
	require.Eventually(t, func() bool { return lost.Load() == 1 }, 5*time.Second, 10*time.Millisecond)
	require.Eventually(t, s.InStep, 5*time.Second, 10*time.Millisecond)
	time.Sleep(2 * flushCheckEvery)
	assert.Zero(t, flushed.Load(), "a cut subscription is no flush")

	r.Kill()
	r.Restart() // no persistence: empty
	start := time.Now()
	require.Eventually(t, func() bool { return flushed.Load() > 0 }, 10*time.Second, 10*time.Millisecond, "the empty restart not told")
	t.Logf("OnFlushed %s after the restart", time.Since(start).Round(time.Millisecond))
	time.Sleep(2 * flushCheckEvery)
	assert.EqualValues(t, 1, flushed.Load(), "told once")
}

// flushedSync is a Sync on a redis-server of its own, ready, counting its
// OnFlushed calls; onLost, if set, is its OnLost.
func flushedSync(t *testing.T, onLost func(error)) (*testenv.Redis, *Sync, *atomic.Int32) {
	t.Helper()
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	flushed := new(atomic.Int32)
	s := NewSync(New(kb), rdb, Options{ResyncEvery: time.Hour, Log: (&logs{}).add,
		OnFlushed: func() { flushed.Add(1) }, OnLost: onLost})
	run(t, s)
	require.Eventually(t, s.Ready, 5*time.Second, 5*time.Millisecond)
	return r, s, flushed
}

// A Redis that may evict keys (a maxmemory limit with a policy other than
// noeviction) is warned of once, and again when its setting changes to
// another that evicts; one without a limit, or with noeviction, is not.
// An eviction policy takes bans with a TTL before their time.
func TestEvictionPolicyWarnedOnce(t *testing.T) {
	r := testenv.StartRedis(t, "--maxmemory", "100mb", "--maxmemory-policy", "volatile-lru")
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	var l logs
	var lost atomic.Int32
	s := NewSync(New(kb), rdb, Options{ResyncEvery: time.Hour, Log: l.add, OnLost: func(error) { lost.Add(1) }})
	run(t, s)
	require.Eventually(t, s.Ready, 5*time.Second, 5*time.Millisecond)
	const warning = "may evict the guard's keys"
	require.Equal(t, 1, l.count(warning), "%q", l.lines)
	assert.Equal(t, 1, l.count("maxmemory-policy volatile-lru"), "%q", l.lines)
	session := func(i int32) { // a new session: its subscription cut
		r.CLI("CLIENT", "KILL", "TYPE", "pubsub")
		require.Eventually(t, func() bool { return lost.Load() > i }, 5*time.Second, 10*time.Millisecond)
		require.Eventually(t, func() bool { return r.CLI("PUBSUB", "NUMPAT") != "0" }, 5*time.Second, 10*time.Millisecond)
	}
	session(0)
	session(1)
	assert.Equal(t, 1, l.count(warning), "once while the setting stays: %q", l.lines)
	r.CLI("CONFIG", "SET", "maxmemory-policy", "noeviction")
	session(2)
	assert.Equal(t, 1, l.count(warning), "noeviction is safe: %q", l.lines)
	r.CLI("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
	session(3)
	assert.Equal(t, 2, l.count(warning), "%q", l.lines)
	assert.Equal(t, 1, l.count("maxmemory-policy allkeys-lru"), "%q", l.lines)
	r.CLI("CONFIG", "SET", "maxmemory", "0")
	session(4)
	assert.Equal(t, 2, l.count(warning), "no limit, nothing evicted: %q", l.lines)
}
