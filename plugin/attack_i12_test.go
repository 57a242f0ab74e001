package plugin

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// A success noted just before the guard stops is still written: the writer
// lingering when stop closes writes what it gathered, as the channel-based
// writer did (its fill loop broke on stop and the batch was written).
func TestAttackI12KnownSourcesWrittenAtStop(t *testing.T) {
	k, rdb, halt := knownOnRedis(t, time.Hour)
	time.Sleep(20 * time.Millisecond) // the writer parked

	k.succeeded("alice", netip.MustParseAddr("192.0.2.7"), "dev-1", time.Now())
	time.Sleep(10 * time.Millisecond) // the writer woke and lingers (knownLinger is 100 ms)
	select {
	case <-halt():
	case <-time.After(2 * time.Second):
		t.Fatal("the writer did not stop")
	}
	n, err := rdb.ZCard(context.Background(), "guard:known:alice").Result()
	assert.NoError(t, err)
	assert.EqualValues(t, 2, n, "the sources noted before stop were dropped at stop")
}
