package replica

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// A flush mark Redis refuses to read (here an ACL change; in the field a
// rotated password, which fails the next connection's AUTH) is no flush:
// the log line says what Redis answered, not that the keys were flushed
// or lost (it said so before).
func TestLostNamesARefusedRead(t *testing.T) {
	r := testenv.StartRedis(t)
	c := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer c.Close()
	ctx := context.Background()
	require.NoError(t, c.Set(ctx, "g:epoch", "v1", 0).Err())
	s := &Sync{}
	marks := []mark{{c: c, key: "g:epoch", val: "v1"}}
	why, flushed := s.lost(ctx, marks)
	require.Empty(t, why, "control: the mark is there")
	require.False(t, flushed)

	r.CLI("ACL", "SETUSER", "default", "-get")
	why, flushed = s.lost(ctx, marks)
	assert.False(t, flushed)
	assert.Contains(t, why, "NOPERM", "the answer is named")
	assert.NotContains(t, why, "flushed", "a refused read is no flush")

	r.CLI("ACL", "SETUSER", "default", "+get")
	require.NoError(t, c.Set(ctx, "g:epoch", "v2", 0).Err())
	why, flushed = s.lost(ctx, marks)
	assert.True(t, flushed, "control: the mark changed")
	assert.Contains(t, why, "changed")
}
