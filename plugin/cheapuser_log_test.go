package plugin

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// The redis backend's line about a user key set with a hash cheaper than
// the most expensive user's is bounded: a script setting 200 such users
// logs one line, not one per key (the line came with the README-only
// timing attack's fix, one per key).
func TestCheapUserKeysLoggedOncePerMinute(t *testing.T) {
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx := context.Background()
	costly, err := bcrypt.GenerateFromPassword([]byte("pw"), 10)
	require.NoError(t, err)
	cheap, err := bcrypt.GenerateFromPassword([]byte("pw"), 4)
	require.NoError(t, err)
	require.NoError(t, rdb.Set(ctx, "guard:user:model", costly, 0).Err())
	g, lines := loggedGuard(t, map[string]string{"backend": "redis", "redis_addr": r.Addr})
	require.Eventually(t, g.sync.InStep, 5*time.Second, 10*time.Millisecond)
	for i := 0; i < 200; i++ {
		require.NoError(t, rdb.Set(ctx, fmt.Sprintf("guard:user:cheap%d", i), cheap, 0).Err())
	}
	require.Eventually(t, func() bool { return len(g.replica.UserHashes()) == 201 }, 5*time.Second, 10*time.Millisecond, "every key in the replica")
	time.Sleep(100 * time.Millisecond) // the last changes' callbacks
	assert.Equal(t, 1, countLines(lines(), "mixes hash costs"), "%d lines", countLines(lines(), "mixes hash costs"))
}

// The next line after a minute counts the keys met since the line before,
// and a line after a quiet minute has no count.
func TestCheapUserLineCountsTheKeysSinceTheLastOne(t *testing.T) {
	var lines []string
	now := time.Unix(1_800_000_000, 0)
	g := &Guard{now: func() time.Time { return now }, log: func(_ Level, s string) { lines = append(lines, s) }}
	for i := 0; i < 5; i++ {
		g.warnCheapUser(fmt.Sprintf("guard:user:c%d", i))
	}
	require.Len(t, lines, 1)
	assert.NotContains(t, lines[0], "more user keys")
	now = now.Add(cheapUserLogEvery)
	g.warnCheapUser("guard:user:late")
	require.Len(t, lines, 2)
	assert.Contains(t, lines[1], `"guard:user:late"`)
	assert.Contains(t, lines[1], "(and 4 more user keys since the last such line)")
	now = now.Add(cheapUserLogEvery)
	g.warnCheapUser("guard:user:alone")
	require.Len(t, lines, 3)
	assert.NotContains(t, lines[2], "more user keys", "no key came between")
}
