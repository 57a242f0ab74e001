package e2e

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// atk82 (a README-only hostile tester): a password file's argon2id line with
// a 1-byte digest was loaded at a SIGHUP, and about one password in 256
// opened it ("p1491" among them). Now the line is skipped with a line naming
// the file and line number, its user refused, the others kept.
func TestAtk82ShortDigestSkippedOnReload(t *testing.T) {
	e := newEnv(t)
	f, err := os.OpenFile(e.passwd, os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString("u21:$argon2id$v=19$m=8,t=1,p=1$c2FsdA$AA\n")
	require.NoError(t, err)
	require.NoError(t, f.Close())
	e.broker.Reload()
	line := e.logLine("password_file", "line 3", "shorter than 16 bytes")
	assert.NotContains(t, line, "c2FsdA", "the hash was logged")
	assert.EqualValues(t, refused, e.connect(as("127.0.82.1", "u21-dev", "u21", "p1491")), "p1491 opened the 1-byte digest")
	assert.EqualValues(t, accepted, e.connect(as("127.0.82.2", "alice-dev", "alice", "alice-pw")))
}

// atk82 (a README-only hostile tester): one account connecting with ever new
// client IDs grew Redis by about 610 bytes an ID, each kept conflict_window
// (31 days): 20 000 connects added 12.2 MB. With maxmemory and noeviction,
// Redis then refused the failure counts and the ban SET (OOM), and no
// automatic ban was written again; under redis_unavailable deny a stranger's
// failures turned the refusals into refusing every client. Now a principal's
// uses are remembered for at most conflict_clientids_max (10 000) client
// IDs, its first: 10 100 new client IDs leave 10 000 seen hashes holding
// alice, her index 10 000, bob's use untouched, and a line telling the
// operator of the 100 not remembered.
func TestAtk82OnePrincipalCannotGrowRedis(t *testing.T) {
	e := newEnv(t)
	rdb := redis.NewClient(&redis.Options{Addr: e.redis.Addr})
	defer rdb.Close()
	ctx := context.Background()
	require.EqualValues(t, accepted, e.connect(as("127.0.82.2", "atk82-0", "bob", "bob-pw")), "bob")
	const n = 10100
	start := time.Now()
	for i := range n {
		require.EqualValues(t, accepted, e.connect(as("127.0.82.1", fmt.Sprintf("atk82-%d", i), "alice", "alice-pw")), "connect %d", i)
	}
	t.Logf("%d connects with new client IDs in %v", n, time.Since(start).Round(time.Millisecond))
	last := fmt.Sprintf("guard:seen:atk82-%d", 9999)
	eventually(t, 10*time.Second, func() bool {
		v, _ := rdb.HExists(ctx, last, "alice").Result()
		return v
	}, "alice's 10 000th use was not recorded")
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
		return held <= 10000
	}, "alice's uses")
	t.Logf("%d seen hashes, %d of them holding alice's use", seen, held)
	assert.Equal(t, 10000, held, "alice's uses: her first 10 000 client IDs")
	zc, err := rdb.ZCard(ctx, "guard:clientids:alice").Result()
	require.NoError(t, err)
	assert.EqualValues(t, 10000, zc)
	ok, err := rdb.HExists(ctx, "guard:seen:atk82-0", "bob").Result()
	require.NoError(t, err)
	assert.True(t, ok, "bob's use of atk82-0 was removed with alice's")
	first, err := rdb.HExists(ctx, "guard:seen:atk82-0", "alice").Result()
	require.NoError(t, err)
	assert.True(t, first, "alice's first use was forgotten")
	assert.True(t, e.broker.WaitOutput("uses of client IDs not remembered for client-ID conflicts", 12*time.Second),
		"no line told of the uses not remembered")
}
