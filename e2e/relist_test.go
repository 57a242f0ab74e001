package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Redis restarted from a snapshot taken before alice connected: the
// snapshot holds both brokers' leases, so no lease is found gone and no
// flush is noticed, yet alice's live entry is not there. The broker
// records its connections again once Redis answers (the replica's lost
// session, Redis back): deny refuses bob on the other broker while alice
// holds the client ID. Before, her entry stayed gone until she
// reconnected, and bob was let in.
func TestRestartFromAnOlderSnapshotRelists(t *testing.T) {
	a, b := twoBrokers(t, "auth_opt_clientid_conflict deny", "auth_opt_broker_lease 3s")
	eventually(t, 5*time.Second, func() bool { return a.redis.CLI("ZCARD", "guard:brokers") == "2" }, "both brokers hold a lease")
	a.redis.CLI("SAVE") // before alice connects
	alice, code := a.dial(as("127.0.97.1", "snap-rl", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	a.waitLive("snap-rl", 1)
	time.Sleep(time.Second) // the conflict worker's write (after the claim's) lands before the kill

	a.redis.Kill()
	a.redis.Restart()
	eventually(t, 10*time.Second, func() bool { return a.redis.CLI("HLEN", "guard:conn:snap-rl") == "1" }, "alice's live entry is recorded again")
	inst := a.redis.CLI("HKEYS", "guard:conn:snap-rl") // the field is broker-a's instance
	eventually(t, 5*time.Second, func() bool { return a.redis.CLI("SISMEMBER", "guard:brokerconns:"+inst, "snap-rl") == "1" }, "and listed")
	assert.EqualValues(t, refused, b.connect(as("127.0.97.2", "snap-rl", "bob", "bob-pw")), "alice holds snap-rl on broker-a")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, alice.Ping(ctx), "alice is still connected")
	a.logLine("mosquitto-guard: recording this broker's 1 live connections in redis again")
}
