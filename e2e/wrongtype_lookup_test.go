package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// An operator's key of another type under the plugin's prefix (a hash
// where a ban's string belongs) is an answer about that key, not Redis
// down (plugin/health.go, TestWrongTypeIsNoOutage). A plugin whose Redis
// user has no pub/sub channel (Redis 7's default for a new ACL user) asks
// Redis for each CONNECT's lists: there the WRONGTYPE reached the health
// check wrapped ("store: lookup: WRONGTYPE ..."), was taken for Redis
// down, and under redis_unavailable deny every client was refused after
// each CONNECT that named the key, bob's here: a client could keep the
// broker refusing everyone. The line that tells it names the key.
func TestWrongTypeKeyOnLookupIsNoOutage(t *testing.T) {
	e := envWithoutBroker(t)
	e.redis.CLI("ACL", "SETUSER", "guard", "on", ">guard-pw", "~guard:*", "~rate:guard:*", "resetchannels", "+@all")
	e.redis.CLI("HSET", "guard:block:username:bob", "reason", "a hash where a string belongs")
	e.broker = startBroker(t, e.conf("auth_opt_redis_username guard", "auth_opt_redis_password guard-pw", "auth_opt_redis_unavailable deny"))
	require.True(t, e.broker.WaitOutput("replica loaded", 10*time.Second))
	require.EqualValues(t, accepted, e.connect(as("127.0.76.1", "alice-0", "alice", "alice-pw")), "control")
	// bob's address is banned: the reply about his username's key must
	// not lose the rest of the lookup's answer (atk70: the whole answer
	// was dropped, and with Redis no longer taken for down bob got past
	// every ban).
	e.redis.CLI("SET", "guard:block:ip:127.0.76.2", "an operator's ban")
	for i := 0; i < 5; i++ {
		assert.EqualValues(t, refused, e.connect(as("127.0.76.2", fmt.Sprintf("bob-%d", i), "bob", "bob-pw")), "bob's address is banned")
		assert.EqualValues(t, accepted, e.connect(as("127.0.76.3", fmt.Sprintf("alice-%d", i+1), "alice", "alice-pw")), "alice after bob's CONNECT %d", i)
	}
	assert.EqualValues(t, accepted, e.connect(as("127.0.76.4", "bob-ok", "bob", "bob-pw")), "bob from elsewhere: his username's hash bans nothing")
	out := e.broker.Output()
	assert.NotContains(t, out, "unreachable")
	assert.Equal(t, 1, strings.Count(out, "a key of another type"), "once per interval:\n%s", out)
	assert.Regexp(t, `a key of another type [^\n]*"guard:block:username:bob"`, out, "the line names the key")
}
