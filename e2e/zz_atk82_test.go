package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// atk82 (a README-only hostile tester): one account connecting with ever new
// client IDs grew Redis by about 610 bytes an ID, each kept conflict_window
// (31 days): 20 000 connects added 12.2 MB. With maxmemory and noeviction,
// Redis then refused the failure counts and the ban SET (OOM), and no
// automatic ban was written again; under redis_unavailable deny a stranger's
// failures turned the refusals into refusing every client. Now a principal's
// uses are remembered for its conflict_clientids_max (1000) latest client
// IDs: 1 100 new client IDs leave 1 000 seen hashes holding alice, her index
// 1 000, and bob's use untouched.
func TestAtk82OnePrincipalCannotGrowRedis(t *testing.T) {
	e := newEnv(t)
	rdb := redis.NewClient(&redis.Options{Addr: e.redis.Addr})
	defer rdb.Close()
	ctx := context.Background()
	require.EqualValues(t, accepted, e.connect(as("127.0.82.2", "atk82-0", "bob", "bob-pw")), "bob")
	const n = 1100
	start := time.Now()
	for i := range n {
		require.EqualValues(t, accepted, e.connect(as("127.0.82.1", fmt.Sprintf("atk82-%d", i), "alice", "alice-pw")), "connect %d", i)
	}
	t.Logf("%d connects with new client IDs in %v", n, time.Since(start).Round(time.Millisecond))
	last := fmt.Sprintf("guard:seen:atk82-%d", n-1)
	eventually(t, 10*time.Second, func() bool {
		v, _ := rdb.HExists(ctx, last, "alice").Result()
		return v
	}, "alice's last use was not recorded")
	// The pops' removals follow their writes in the same batch: let the
	// worker's last batch end.
	var held, seen int
	eventually(t, 5*time.Second, func() bool {
		held, seen = 0, 0
		iter := rdb.Scan(ctx, 0, "guard:seen:atk82-*", 1000).Iterator()
		for iter.Next(ctx) {
			seen++
			if ok, _ := rdb.HExists(ctx, iter.Val(), "alice").Result(); ok {
				held++
			}
		}
		return held <= 1000
	}, "alice's uses")
	t.Logf("%d seen hashes, %d of them holding alice's use", seen, held)
	assert.Equal(t, 1000, held, "alice's uses: her 1 000 latest client IDs")
	zc, err := rdb.ZCard(ctx, "guard:clientids:alice").Result()
	require.NoError(t, err)
	assert.EqualValues(t, 1000, zc)
	ok, err := rdb.HExists(ctx, "guard:seen:atk82-0", "bob").Result()
	require.NoError(t, err)
	assert.True(t, ok, "bob's use of atk82-0 was removed with alice's")
	last1, err := rdb.HExists(ctx, last, "alice").Result()
	require.NoError(t, err)
	assert.True(t, last1, "alice's latest use was forgotten")
}
