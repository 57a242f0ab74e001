package plugin

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// Only a scan that stands for a ban moves g.scans: a CONNECT that sees it
// move between its list check and its admit reads the lists again
// (banRaced), a cost meant for the CONNECTs a ban scan may have missed.
// The known-source rewrite and the kicks of a password file's changed users
// are no ban: before, each moved it, and every CONNECT overlapping one read
// the lists twice.
func TestOnlyBanScansMoveTheBanCounter(t *testing.T) {
	g, _, _ := rewriteGuard(t, 10)
	for i := 0; i < 10; i++ {
		require.Equal(t, Allow, g.Authenticate(rewriteClient(i, "pw")).Result)
	}
	before := g.scans.Load()
	require.NoError(t, g.rewriteKnown())
	users := g.creds.users.Load()
	g.kickChangedUsers(appliedUsers{users: users, prev: users})
	assert.Equal(t, before, g.scans.Load(), "a scan that is no ban moved the ban counter")

	g.kickMatching("guard:block:ip:192.0.2.1", keys.IP, "192.0.2.1")
	g.kickMatching("guard:block:clientid:nobody", keys.ClientID, "nobody")
	assert.Equal(t, before+2, g.scans.Load(), "a ban scan must move it")
	g.mu.Lock()
	defer g.mu.Unlock()
	assert.Zero(t, g.recs.scans, "every scan ended")
}

// A rewrite refused by a Redis that is failing over (Sentinel: the old
// master, now a replica, answers READONLY; min-replicas-to-write answers
// NOREPLICAS) is tried again: the refusal passes once the new master is
// found. Before, both were dropped with a warning, and the devices held
// stayed unknown to the other brokers until their next success (a hostile
// tester's note). WRONGTYPE, an answer about one key, is not retried.
func TestRewriteRetriedAfterAFailoverRefusal(t *testing.T) {
	for _, msg := range []string{"READONLY You can't write against a read only replica.", "NOREPLICAS Not enough good replicas to write.",
		"OOM command not allowed", "LOADING Redis is loading the dataset in memory"} {
		assert.True(t, rewriteRetryable(replyErr(msg)), msg)
	}
	assert.False(t, rewriteRetryable(replyErr("WRONGTYPE Operation against a key holding the wrong kind of value")))
}

// replyErr is an error reply from Redis (go-redis's redis.Error).
type replyErr string

func (e replyErr) Error() string { return string(e) }
func (replyErr) RedisError()     {}
