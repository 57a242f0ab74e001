package replica

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// DEFECT (log wording, 183c566). A cluster resharding moves the slot of a
// master's flush mark: while the slot is MIGRATING and the mark already
// sent to the importing master, the old master answers the flush check's
// GET with ASK, not MOVED. lost() (store/replica/flush.go) then logs
// "reading the flush mark ... was refused (ASK ...)": nothing refused the
// read and nothing was flushed; an operator is sent to look at ACLs and
// passwords during a resharding. (flushed stays false: no OnFlushed.)
func TestAtk60LostASKIsNoRefusal(t *testing.T) {
	c := testenv.StartRedisCluster(t, 2)
	a, b := c.Nodes[0], c.Nodes[1]
	key := ""
	slot := 0
	for i := 0; key == ""; i++ {
		k := fmt.Sprintf("g:epoch:{%d}", i)
		s, err := strconv.Atoi(strings.TrimSpace(a.CLI("CLUSTER", "KEYSLOT", k)))
		require.NoError(t, err)
		if s < 8192 {
			key, slot = k, s
		}
	}
	ca := redis.NewClient(&redis.Options{Addr: a.Addr})
	defer ca.Close()
	ctx := context.Background()
	require.NoError(t, ca.Set(ctx, key, "v1", 0).Err())
	s := &Sync{}
	marks := []mark{{c: ca, key: key, val: "v1"}}
	why, flushed := s.lost(ctx, marks)
	require.Empty(t, why, "control: the mark is there")
	require.False(t, flushed)

	// Resharding, half done: the slot migrates from a to b, the mark moved.
	aID, bID := a.CLI("CLUSTER", "MYID"), b.CLI("CLUSTER", "MYID")
	b.CLI("CLUSTER", "SETSLOT", fmt.Sprint(slot), "IMPORTING", aID)
	a.CLI("CLUSTER", "SETSLOT", fmt.Sprint(slot), "MIGRATING", bID)
	require.Equal(t, "OK", a.CLI("MIGRATE", "127.0.0.1", fmt.Sprint(b.Port), key, "0", "5000"))
	_, err := ca.Get(ctx, key).Result()
	_, ask := redis.IsAskError(err)
	require.True(t, ask, "control: the old master answers ASK: %v", err)

	why, flushed = s.lost(ctx, marks)
	t.Logf("why: %s", why)
	assert.False(t, flushed, "a migrating slot is no flush")
	assert.NotContains(t, why, "flushed", "a migrating slot is no flush")
	assert.NotContains(t, why, "refused", "an ASK redirection is no refusal")
}
