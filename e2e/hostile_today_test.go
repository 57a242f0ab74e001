package e2e

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// redisCalls returns how many times Redis ran cmd since its last CONFIG
// RESETSTAT (INFO commandstats).
func (e *env) redisCalls(cmd string) int {
	e.t.Helper()
	m := regexp.MustCompile(`cmdstat_` + cmd + `:calls=(\d+)`).FindStringSubmatch(e.redis.CLI("INFO", "commandstats"))
	if m == nil {
		return 0
	}
	n, err := strconv.Atoi(m[1])
	require.NoError(e.t, err)
	return n
}

// TestHostileTodayUnsubscribedReloadWalkAsksRedisPerClient: while Redis
// refuses the replica's subscription (an ACL user without channels),
// lookup asks Redis for every CONNECT's lists (e0c2846) and for every
// re-check of the walk that follows a SIGHUP too: one pipelined round trip
// per client held, on the broker thread, which serves no one meanwhile.
// lookup's own comment rules that out for the walk (it asks no live
// connections then for that reason), and the replica is loaded: the walk
// can be answered from it as when subscribed, where kicks follow the
// replica anyway. 300 clients held: the walk must not make 300 lookups.
func TestHostileTodayUnsubscribedReloadWalkAsksRedisPerClient(t *testing.T) {
	e := envWithoutBroker(t)
	// Every command on the plugin's keys; channels as Redis 7 gives by default.
	e.redis.CLI("ACL", "SETUSER", "guard", "on", ">guard-pw", "~guard:*", "~rate:guard:*", "+@all")
	e.broker = startBroker(t, e.conf("auth_opt_redis_username guard", "auth_opt_redis_password guard-pw"))
	require.True(t, e.broker.WaitOutput("refused the subscription", 10*time.Second))
	require.True(t, e.broker.WaitOutput("replica loaded", 10*time.Second))

	const n = 300
	for i := 0; i < n; i++ {
		_, code := e.dial(as("127.0.47.1", fmt.Sprintf("dev-%d", i), "alice", "alice-pw"))
		require.EqualValues(t, accepted, code)
	}
	e.redis.CLI("CONFIG", "RESETSTAT")
	before := strings.Count(e.broker.Output(), "Reloading config.")
	start := time.Now()
	e.broker.Reload()
	eventually(t, 10*time.Second, func() bool { return strings.Count(e.broker.Output(), "Reloading config.") > before }, "no reload")
	// One CONNECT after the SIGHUP: answered once the walk is over.
	require.EqualValues(t, accepted, e.connect(as("127.0.47.2", "after", "bob", "bob-pw")))
	took := time.Since(start)
	pttl := e.redisCalls("pttl")
	t.Logf("SIGHUP with %d clients held: %d PTTL (one per list candidate of each lookup), %d GET; next CONNECT answered %v after it",
		n, pttl, e.redisCalls("get"), took)
	// The CONNECT after the walk is one lookup; allow a few more.
	assert.Less(t, pttl, n/2, "the walk after a SIGHUP asked Redis for each client's lists, on the broker thread")
}

// TestHostileTodayChannelsGrantedLaterAreNeverUsed: the refusal line tells
// the operator to give the plugin's Redis user the channels (&*). Once they
// are given, the replica must subscribe: until it does, every CONNECT pays a
// Redis round trip on the broker thread and mosquitto_guard_replica_in_step
// stays 0. The session that found the subscription refused never tried it
// again, not even at its reloads (replica_resync, 10 s here): only a lost
// connection or a restart ended it.
func TestHostileTodayChannelsGrantedLaterAreNeverUsed(t *testing.T) {
	e := envWithoutBroker(t)
	e.redis.CLI("ACL", "SETUSER", "guard", "on", ">guard-pw", "~guard:*", "~rate:guard:*", "+@all")
	e.broker = startBroker(t, e.conf("auth_opt_redis_username guard", "auth_opt_redis_password guard-pw",
		"auth_opt_replica_resync 10s"))
	require.True(t, e.broker.WaitOutput("refused the subscription", 10*time.Second))
	require.True(t, e.broker.WaitOutput("replica loaded", 10*time.Second))

	e.redis.CLI("ACL", "SETUSER", "guard", "&*") // the fix the log line asks for
	granted := time.Now()
	asks := func() int { // PTTLs of one CONNECT: its lookup asked Redis
		e.redis.CLI("CONFIG", "RESETSTAT")
		require.EqualValues(t, accepted, e.connect(as("127.0.48.1", "probe", "alice", "alice-pw")))
		return e.redisCalls("pttl")
	}
	deadline := granted.Add(15 * time.Second) // past a reload
	n := asks()
	for n > 0 && time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
		n = asks()
	}
	t.Logf("channels granted %v ago; a CONNECT's lookup made %d PTTL", time.Since(granted).Round(time.Millisecond), n)
	assert.Zero(t, n, "15 s after the channels were granted, CONNECTs still ask Redis: the replica never subscribed")
	// And the subscription works: a ban set now reaches the replica at once.
	e.redis.CLI("SET", "guard:block:clientid:banned-now", "operator")
	eventually(t, 2*time.Second, func() bool {
		return e.connect(as("127.0.48.2", "banned-now", "alice", "alice-pw")) == refused
	}, "a ban set after the subscription came back")
}

// TestHostileTodayUnsubscribedReloadWalkKeepsAClientTheStaleReplicaWouldRefuse:
// the walk after a SIGHUP is answered from the replica while the
// subscription is refused, which may be a reload behind Redis: a ban lifted
// since its load must not disconnect the client Redis let in.
func TestHostileTodayUnsubscribedReloadWalkKeepsAClientTheStaleReplicaWouldRefuse(t *testing.T) {
	e := envWithoutBroker(t)
	e.redis.CLI("ACL", "SETUSER", "guard", "on", ">guard-pw", "~guard:*", "~rate:guard:*", "+@all")
	e.redis.CLI("SET", "guard:block:clientid:lifted", "operator")
	e.broker = startBroker(t, e.conf("auth_opt_redis_username guard", "auth_opt_redis_password guard-pw"))
	require.True(t, e.broker.WaitOutput("refused the subscription", 10*time.Second))
	require.True(t, e.broker.WaitOutput("replica loaded 1 keys", 10*time.Second))
	e.redis.CLI("DEL", "guard:block:clientid:lifted") // the replica hears of it at its next reload (5 min)
	conn, code := e.dial(as("127.0.49.1", "lifted", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code, "the CONNECT asks Redis: the ban is lifted")
	e.reloaded()
	require.EqualValues(t, accepted, e.connect(as("127.0.49.2", "after", "bob", "bob-pw"))) // the walk is over
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	assert.NoError(t, conn.Ping(ctx), "the walk disconnected a client Redis let in, on a ban lifted since the replica's load")
}
