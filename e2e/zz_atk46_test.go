package e2e

import (
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// atk46's first paper scenario, run: under clientid_conflict deny, a
// broker holding alice's client ID is sent SIGHUP; bob tries the client ID
// on the other broker 0.1, 2 and 7 s later. Each attempt must be refused,
// and alice's live entry must stay.
func TestAtk46SighupKeepsTheHolder(t *testing.T) {
	const id = "atk46-hup"
	a, b := twoBrokers(t, "auth_opt_clientid_conflict deny", "auth_opt_broker_lease 6s")
	alice, code := a.dial(as("127.0.146.1", id, "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	t.Cleanup(func() { alice.Close() })
	a.waitLive(id, 1)
	time.Sleep(2500 * time.Millisecond) // both brokers have renewed
	require.NoError(t, a.broker.Signal(syscall.SIGHUP))
	start := time.Now()
	for _, at := range []time.Duration{100 * time.Millisecond, 2 * time.Second, 7 * time.Second} {
		time.Sleep(time.Until(start.Add(at)))
		assert.EqualValues(t, refused, b.connect(as("127.0.146.2", id, "bob", "bob-pw")), "bob at %s after SIGHUP", at)
	}
	assert.False(t, alice.Closed(100*time.Millisecond), "alice stays connected")
	assert.Contains(t, a.redis.CLI("HGETALL", "guard:conn:"+id), "alice", "alice's live entry stays")
}
