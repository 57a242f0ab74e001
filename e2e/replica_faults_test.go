package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// changesStopped turns keyspace notifications off, so that what redis-cli
// changes next reaches the replica only by a reload.
func (e *env) changesStopped() {
	e.t.Helper()
	require.Equal(e.t, "OK", e.redis.CLI("CONFIG", "SET", "notify-keyspace-events", ""))
}

// reloadReplica cuts the plugin's subscriptions: it subscribes again (turning
// notifications back on) and reloads the replica.
func (e *env) reloadReplica() {
	e.t.Helper()
	e.redis.CLI("CLIENT", "KILL", "TYPE", "pubsub")
}

// One key of another type under a replicated prefix must not fail every
// load: with redis_unavailable deny that refused everyone on and off, and
// the lists went stale. Now the key is skipped with one log line naming it.
func TestWrongTypeKeyIsSkipped(t *testing.T) {
	e := newEnv(t, "auth_opt_redis_unavailable deny")
	e.changesStopped()
	e.redis.CLI("LPUSH", "guard:block:ip:127.0.60.9", "x")
	e.redis.CLI("HSET", "guard:block:clientid:hashy", "f", "v")
	e.redis.CLI("SET", "guard:block:clientid:wt-banned", "operator") // arrives by the reload only
	e.reloadReplica()

	refusals := 0
	deadline := time.Now().Add(3 * time.Second)
	for i := 0; time.Now().Before(deadline) && i < 200; i++ {
		if e.connect(as("127.0.60.1", fmt.Sprintf("wt-%d", i), "alice", "alice-pw")) != accepted {
			refusals++
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !assert.Zero(t, refusals, "alice refused while the replica kept failing to load") {
		for _, l := range strings.Split(e.broker.Output(), "\n") {
			if strings.Contains(l, "mosquitto-guard") {
				t.Log(l)
			}
		}
	}
	e.expect(as("127.0.60.2", "wt-banned", "alice", "alice-pw"), refused, "the reload applied the rest")
	e.logLine("event=refused", `client_id="wt-banned"`, `rule="guard:block:clientid:wt-banned"`)
	e.logLine(`replica: skipping key "guard:block:ip:127.0.60.9"`, "WRONGTYPE")
	e.logLine(`replica: skipping key "guard:block:clientid:hashy"`)
	assert.Equal(t, 1, strings.Count(e.broker.Output(), `skipping key "guard:block:ip:127.0.60.9"`), "one line")
	assert.NotContains(t, e.broker.Output(), "redis unavailable", "Redis never seemed down")
	// The key of the wrong type bans nothing.
	assert.EqualValues(t, accepted, e.connect(as("127.0.60.9", "wt-x", "alice", "alice-pw")))
}

// FLUSHALL sends no keyspace notification: the plugin's flush mark shows it,
// and a formerly banned client is accepted within 2 s (it was 300 s, the
// replica_resync, before).
func TestFlushAllLiftsBans(t *testing.T) {
	for _, cmd := range []string{"FLUSHALL", "FLUSHDB"} {
		t.Run(cmd, func(t *testing.T) {
			e := newEnv(t)
			c := as("127.0.60.20", "fl-banned", "alice", "alice-pw")
			e.redis.CLI("SET", "guard:block:clientid:fl-banned", "operator")
			e.expect(c, refused)
			start := time.Now()
			e.redis.CLI(cmd)
			e.expect(c, accepted, "still banned 2 s after %s", cmd)
			t.Logf("accepted %s after %s", time.Since(start).Round(time.Millisecond), cmd)
			e.logLine("replica: the flush mark", "reloading")
			// And the replica follows Redis after it.
			e.redis.CLI("SET", "guard:block:clientid:fl-banned", "operator")
			e.expect(c, refused)
		})
	}
}

// A ban set while the subscription was down, brought in by the reload,
// kicks the connected clients it matches, as a notified ban does: operator
// bans only, and allow entries respected.
func TestReloadedBanKicks(t *testing.T) {
	e := newEnv(t)
	victim := e.dialWill(as("127.0.61.1", "rk-victim", "alice", "alice-pw"))
	auto := e.dialWill(as("127.0.61.2", "rk-auto", "bob", "bob-pw"))
	inRange := e.dialWill(as("127.0.62.4", "rk-range", "bob", "bob-pw"))
	allowed := e.dialWill(as("127.0.62.3", "rk-allowed", "bob", "bob-pw"))
	e.redis.CLI("SET", "guard:allow:ip:127.0.62.3", "")
	time.Sleep(100 * time.Millisecond)

	e.changesStopped()
	e.redis.CLI("SET", "guard:block:clientid:rk-victim", "operator")
	e.redis.CLI("SET", "guard:block:clientid:rk-auto", "auto: 5 failures")
	e.redis.CLI("SET", "guard:block:cidr:127.0.62.0/24", "operator")
	require.False(t, victim.Closed(300*time.Millisecond), "a notification reached the plugin: the test proves nothing")

	e.reloadReplica()
	assert.True(t, victim.Closed(3*time.Second), "the reloaded ban did not kick its client")
	assert.True(t, inRange.Closed(time.Second), "the reloaded range ban did not kick its client")
	e.logLine("event=kicked", "rk-victim", "guard:block:clientid:rk-victim")
	assert.False(t, auto.Closed(300*time.Millisecond), "an automatic ban kicked")
	assert.False(t, allowed.Closed(100*time.Millisecond), "an allow entry was not respected")
}

// A reload that changed more keys than are reported one by one still kicks
// every connected client an operator's ban now matches.
func TestReloadWithManyChangesKicks(t *testing.T) {
	e := newEnv(t)
	victim := e.dialWill(as("127.0.63.1", "rm-victim", "alice", "alice-pw"))
	bystander := e.dialWill(as("127.0.63.2", "rm-other", "bob", "bob-pw"))
	e.changesStopped()
	rdb := redis.NewClient(&redis.Options{Addr: e.redis.Addr})
	defer rdb.Close()
	ctx := context.Background()
	pipe := rdb.Pipeline()
	for i := 0; i < 3000; i++ {
		pipe.Set(ctx, fmt.Sprintf("guard:block:clientid:bulk-%d", i), "operator", 0)
	}
	pipe.Set(ctx, "guard:block:username:alice", "operator", 0)
	_, err := pipe.Exec(ctx)
	require.NoError(t, err)
	require.False(t, victim.Closed(300*time.Millisecond))
	e.reloadReplica()
	assert.True(t, victim.Closed(3*time.Second), "the reloaded ban did not kick its client")
	e.logLine("the reload changed more than")
	assert.False(t, bystander.Closed(300*time.Millisecond))
}
