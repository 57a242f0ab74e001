package e2e

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"
)

// TestHostileGateRedisUserWithoutChannelsRefusesEveryoneForever: Redis 7
// gives a new ACL user no pub/sub channel (acl-pubsub-default
// resetchannels), so an operator's `ACL SETUSER guard on >pw ~guard:* +@all`
// can GET and SET every key the plugin needs but not PSUBSCRIBE. The
// replica's session subscribes before it loads, so it never loads; before
// the seeded gate CONNECTs then asked Redis directly and passwords were
// checked. With the gate, the redis backend refuses every client, known
// users with their right password included, for as long as the broker runs:
// not "as long as the first load takes".
func TestHostileGateRedisUserWithoutChannelsRefusesEveryoneForever(t *testing.T) {
	e := envWithoutBroker(t)
	h, err := bcrypt.GenerateFromPassword([]byte("alice-secret"), 10)
	require.NoError(t, err)
	e.redis.CLI("SET", "guard:user:alice", string(h))
	// Every command on the plugin's keys; channels as Redis 7 gives by default.
	e.redis.CLI("ACL", "SETUSER", "guard", "on", ">guard-pw", "~guard:*", "~rate:guard:*", "+@all")
	// The broker waits 10 s at start for a first load that never comes
	// (longer than the harness waits for it to listen): start it while
	// Redis hangs, as TestReadmeAttack2... does, so it does not wait.
	require.NoError(t, e.redis.Signal(syscall.SIGSTOP))
	stopped := true
	t.Cleanup(func() {
		if stopped {
			_ = e.redis.Signal(syscall.SIGCONT)
		}
	})
	e.broker = startBroker(t, e.conf("auth_opt_backend redis",
		"auth_opt_redis_username guard", "auth_opt_redis_password guard-pw"))
	require.NoError(t, e.redis.Signal(syscall.SIGCONT))
	stopped = false

	// Well past any first load of one user.
	deadline := time.Now().Add(15 * time.Second)
	var code byte
	for i := 0; time.Now().Before(deadline); i++ {
		if code = e.connect(as("127.0.0.1", fmt.Sprintf("alice-%d", i), "alice", "alice-secret")); code == accepted {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	out := e.broker.Output()
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "mosquitto-guard:") && !strings.Contains(l, "event=refused") {
			t.Log(l)
		}
	}
	t.Logf("redis-unavailable refusals: %d; replica loaded: %v", strings.Count(out, "rule=redis-unavailable"), strings.Contains(out, "replica loaded"))
	assert.Equal(t, byte(accepted), code, "alice with her right password, 15 s after start, Redis answering every GET")
}

// TestHostileGateLoadRefusedIsLogged: a Redis user that may GET the
// plugin's keys but not SCAN them (an ACL without @keyspace's SCAN, a proxy
// that forwards no SCAN) keeps the replica from ever loading, so the redis
// backend refuses every client (rule=redis-unavailable) for as long as the
// broker runs: it cannot know the users' hash class, and checking passwords
// without it would tell usernames apart. That refusal is the gate's price;
// but the operator must be told why, and the refusal Redis gave was logged
// nowhere: the only line said passwords are checked "once the replica has
// loaded the users".
func TestHostileGateLoadRefusedIsLogged(t *testing.T) {
	e := envWithoutBroker(t)
	e.redis.CLI("SET", "guard:user:alice", "$7$101$AAAAAAAAAAAAAAAA$"+strings.Repeat("A", 86)+"==")
	e.redis.CLI("ACL", "SETUSER", "guard", "on", ">guard-pw", "~guard:*", "~rate:guard:*", "&*", "+@all", "-scan")
	require.NoError(t, e.redis.Signal(syscall.SIGSTOP))
	stopped := true
	t.Cleanup(func() {
		if stopped {
			_ = e.redis.Signal(syscall.SIGCONT)
		}
	})
	e.broker = startBroker(t, e.conf("auth_opt_backend redis",
		"auth_opt_redis_username guard", "auth_opt_redis_password guard-pw"))
	require.NoError(t, e.redis.Signal(syscall.SIGCONT))
	stopped = false
	assert.Equal(t, byte(refused), e.connect(as("127.0.0.1", "a1", "alice", "x")))
	assert.True(t, e.broker.WaitOutput("NOPERM", 5*time.Second), "the refusal that keeps the replica from loading is logged")
	time.Sleep(3 * time.Second) // several retries
	assert.Equal(t, 1, strings.Count(e.broker.Output(), "NOPERM"), "once, not at every retry")
}
