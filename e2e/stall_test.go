package e2e

import (
	"fmt"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// stallRedis stops Redis (SIGSTOP) for d, running during() meanwhile, and
// returns once it answers again: a stall like a BGSAVE fork on a large
// dataset, longer than redis_timeout (100 ms) but shorter than the
// deadlines of background work.
func (e *env) stallRedis(d time.Duration, during func()) {
	e.t.Helper()
	require.NoError(e.t, e.redis.Signal(syscall.SIGSTOP))
	stopped := time.Now()
	e.t.Cleanup(func() { _ = e.redis.Signal(syscall.SIGCONT) })
	during()
	require.Less(e.t, time.Since(stopped), d, "the work during the stall took longer than the stall")
	time.Sleep(d - time.Since(stopped))
	require.NoError(e.t, e.redis.Signal(syscall.SIGCONT))
}

// A Redis stall longer than redis_timeout loses no background work: the
// failures seen during it are counted (the ban is written) and a disconnect
// during it clears the client ID's guard:conn entry, while every CONNACK
// stays bounded by redis_timeout. Before the broker thread and background
// work had separate Redis clients, redis_timeout was the read timeout of
// both: the failures were dropped and the guard:conn entry stayed "live"
// for as long as the broker ran.
func TestRedisStallKeepsBackgroundWork(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 1")
	dev, code := e.dial(as("127.8.0.1", "stall-dev", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	e.waitLive("stall-dev", 1)

	var slowest time.Duration
	timed := func(c client) byte {
		start := time.Now()
		code := e.connect(c)
		slowest = max(slowest, time.Since(start))
		return code
	}
	e.stallRedis(400*time.Millisecond, func() {
		assert.EqualValues(t, refused, timed(as("127.8.0.2", "guesser", "alice", "bad1")))
		assert.EqualValues(t, refused, timed(as("127.8.0.2", "guesser", "alice", "bad2")))
		dev.Disconnect()
		assert.EqualValues(t, accepted, timed(as("127.8.0.3", "other", "bob", "bob-pw")))
	})
	t.Logf("slowest CONNACK during the stall: %s", slowest)
	assert.Less(t, slowest, 100*time.Millisecond+150*time.Millisecond, "CONNACKs stay bounded by redis_timeout (+ test slack)")

	e.waitKey("guard:block:ip:127.8.0.2", true, 3*time.Second)
	e.waitLive("stall-dev", 0)
	e.logLine("event=banned", "127.8.0.2")
	assert.Zero(t, e.countLines("not recorded"), "no connection event was dropped")
}

// clientid_conflict deny asks Redis on the broker thread (the live
// connections of the client ID): during a stall each CONNACK still comes
// within redis_timeout, and the disconnect of the stall is still recorded.
func TestRedisStallDenyModeBounded(t *testing.T) {
	e := newEnv(t, "auth_opt_clientid_conflict deny", "auth_opt_redis_timeout 100ms")
	dev, code := e.dial(as("127.8.1.1", "stall-deny", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	e.waitLive("stall-deny", 1)
	var slowest time.Duration
	e.stallRedis(400*time.Millisecond, func() {
		for i := 0; i < 3; i++ {
			start := time.Now()
			e.connect(as("127.8.1.2", "probe", "bob", "bob-pw"))
			slowest = max(slowest, time.Since(start))
		}
		dev.Disconnect()
	})
	t.Logf("slowest CONNACK during the stall: %s", slowest)
	assert.Less(t, slowest, 100*time.Millisecond+150*time.Millisecond, "CONNACKs stay bounded by redis_timeout (+ test slack)")
	e.waitLive("stall-deny", 0)
}

// rawRedisLine matches a line go-redis writes by itself to stderr: its
// logger's "redis: " prefix, then the date.
var rawRedisLine = regexp.MustCompile(`(?m)^redis: \d{4}/\d\d/\d\d`)

// With Redis down, go-redis's own complaints ("redis: ... pool.go:770:
// ... failed to dial") do not reach the broker's stderr around log_dest:
// they go through the broker's log, as the plugin's own lines, at most one
// per 10 s, with a count of the ones left out.
func TestRedisDownLogsThroughTheBroker(t *testing.T) {
	e := newEnv(t)
	e.redis.Stop()
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		e.connect(as("127.8.2.1", "dev", "alice", "alice-pw"))
		e.connect(as("127.8.2.2", "guess", "alice", "bad"))
		time.Sleep(50 * time.Millisecond)
	}
	out := e.broker.Output()
	assert.False(t, rawRedisLine.MatchString(out), "a raw go-redis line reached the broker's output:\n%s", rawRedisLine.FindAllString(out, 3))
	e.logLine("unreachable", "redis_unavailable allow")
	e.logLine("mosquitto-guard: redis client:", "failed to dial")
	n := e.countLines("mosquitto-guard: redis client:")
	t.Logf("%d redis client lines in 3 s: %s", n, e.logLine("mosquitto-guard: redis client:"))
	assert.LessOrEqual(t, n, 1, "at most one line per 10 s")
}

// A guesser whose first burst falls in a Redis stall is still banned, and
// soon after Redis answers again: the failures this broker counted alone
// meanwhile are counted in Redis then (README, Redis down). Before
// (atk97), this broker's own count, exhausted by the stall's failures, let
// the guesser check one password per fail_window from then on, the very
// rate at which Redis's allowance refills: Redis's count never went over,
// and no ban was ever written (13 passwords checked in 30 s).
func TestGuesserWhoseBurstFellInAStallIsBanned(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 2", "auth_opt_fail_window 3s", "auth_opt_ban_time 10s", "auth_opt_fail_scopes ip")
	e.stallRedis(2*time.Second, func() {
		e.logLine("unreachable") // the stall seen: failures now counted on this broker alone
		for i := range 3 {
			assert.EqualValues(t, refused, e.connect(as("127.8.2.1", "guess", "alice", fmt.Sprintf("bad%d", i))))
		}
	})
	back := time.Now()
	e.logLine("is back")
	// Then one guess every 0.2 s, as atk97's guesser: banned.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && e.redis.CLI("EXISTS", "guard:block:ip:127.8.2.1") != "1" {
		e.connect(as("127.8.2.1", "guess", "alice", "bad-again"))
		time.Sleep(200 * time.Millisecond)
	}
	e.waitKey("guard:block:ip:127.8.2.1", true, time.Second)
	t.Logf("banned %s after Redis was back", time.Since(back).Round(10*time.Millisecond))
	e.logLine("event=banned", "127.8.2.1")
	assert.EqualValues(t, refused, e.connect(as("127.8.2.1", "guess", "alice", "alice-pw")), "its right guess refused")
	assert.EqualValues(t, accepted, e.connect(as("127.8.2.2", "other", "alice", "alice-pw")), "control: another source let in")
}
