package replica

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The replica hears the keyspace channels of the key families it holds,
// and not those of conflict tracking and known sources, which change three
// keys per new client ID: PUBLISH answers how many subscribers received a
// message, so each channel is asked directly. Before, one pattern on the
// whole prefix made every broker receive all three.
func TestSubscribedToListKeysOnly(t *testing.T) {
	_, _, _, rdb, _ := startSync(t)
	ctx := context.Background()
	receivers := func(key string) int64 {
		n, err := rdb.Publish(ctx, fmt.Sprintf("__keyspace@0__:%s", key), "expire").Result()
		require.NoError(t, err)
		return n
	}
	for _, key := range []string{"guard:block:ip:192.0.2.1", "guard:allow:clientid:x", "guard:block:cidr:10.0.0.0/8",
		"guard:throttle:username:alice", "guard:user:alice", "guard:block:clientid:*odd[:]"} {
		assert.EqualValues(t, 1, receivers(key), key)
	}
	for _, key := range []string{"guard:conn:dev-1", "guard:seen:dev-1", "guard:known:alice", "guard:takeoverconns:dev-1",
		"guard:offences:ip:192.0.2.1", "guard:brokerconns:b1", "guard:epoch", "guard:findings", "guard:blockx", "other:block:ip:1"} {
		assert.EqualValues(t, 0, receivers(key), key)
	}
}
