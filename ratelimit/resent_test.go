package ratelimit

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// resentLimiter is a Limiter whose Redis connection ends after Redis ran
// the first request holding trigger, before its reply
// (testenv.ClosingProxy): go-redis, with the retries the plugin's
// background client allows (store.New: 3), sends it again on a new
// connection, as after a failover's CLIENT KILL or a proxy's reset. Its
// scripts are loaded first, through a connection of their own, so that the
// request cut is the one that runs them.
func resentLimiter(t *testing.T, trigger string, p Policy) (*Limiter, *redis.Client) {
	t.Helper()
	r, rdb := setup(t)
	kb := keys.Builder{Prefix: "guard:"}
	_, err := New(rdb, kb, p).ban(context.Background(), keys.IP, "198.51.100.1")
	require.NoError(t, err, "the scripts loaded")
	c := redis.NewClient(&redis.Options{Addr: testenv.ClosingProxy(t, r.Addr, trigger, true), MaxRetries: 3})
	t.Cleanup(func() { c.Close() })
	return New(c, kb, p), rdb
}

// A ban whose SET go-redis sent again is still this broker's ban: it is
// returned (so logged and counted as an offence). Before, the SET sent
// again found the key its first run had written and answered "already
// blocked": the ban held with no event=banned line, and the offence was
// never counted, so the next ban was no longer (the escalation lost at
// every ban a connection reset met).
func TestBanSetSentAgainIsStillOurs(t *testing.T) {
	ctx := context.Background()
	p := Policy{Limit: 1, Window: time.Minute, BanTime: 10 * time.Second, BanMax: time.Minute}
	l, rdb := resentLimiter(t, "block:ip:192.0.2.7", p)

	b, err := l.ban(ctx, keys.IP, "192.0.2.7")
	require.NoError(t, err)
	require.NotNil(t, b, "the ban written is reported")
	assert.Equal(t, 1, b.Offence)
	got, err := rdb.Get(ctx, "guard:block:ip:192.0.2.7").Result()
	require.NoError(t, err)
	assert.Equal(t, b.Reason, got)
	assert.Equal(t, "1", rdb.Get(ctx, "guard:offences:ip:192.0.2.7").Val(), "the offence counted")

	// Control: a key someone else wrote is still "already blocked".
	again, err := l.ban(ctx, keys.IP, "192.0.2.7")
	require.NoError(t, err)
	assert.Nil(t, again, "banned already")
	assert.Equal(t, "1", rdb.Get(ctx, "guard:offences:ip:192.0.2.7").Val())
}

// An offence whose count go-redis sent again is counted once. Before, the
// INCR ran twice: the next ban was twice as long as the policy says (and
// each further reset doubled it again).
func TestOffenceCountSentAgainCountsOnce(t *testing.T) {
	ctx := context.Background()
	p := Policy{Limit: 1, Window: time.Minute, BanTime: 10 * time.Second, BanMax: time.Hour}
	l, rdb := resentLimiter(t, "evalsha", p)

	b, err := l.ban(ctx, keys.IP, "192.0.2.8")
	require.NoError(t, err)
	require.NotNil(t, b)
	assert.Equal(t, "1", rdb.Get(ctx, "guard:offences:ip:192.0.2.8").Val(), "counted once")

	// The next ban is the second offence: 20 s, not the third's 40 s.
	require.NoError(t, rdb.Del(ctx, "guard:block:ip:192.0.2.8").Err())
	b, err = l.ban(ctx, keys.IP, "192.0.2.8")
	require.NoError(t, err)
	require.NotNil(t, b)
	assert.Equal(t, 2, b.Offence)
	assert.Equal(t, 20*time.Second, b.Duration)
	assert.Equal(t, "2", rdb.Get(ctx, "guard:offences:ip:192.0.2.8").Val())
}

// No two bans of one process carry the same time, however close their
// calls: the value a SET wrote tells this call's write from another's.
func TestBanClockNeverRepeats(t *testing.T) {
	seen := make(map[int64]bool, 100000)
	last := int64(0)
	for range 100000 {
		n := banClock().UnixNano()
		require.False(t, seen[n], "repeated")
		require.Greater(t, n, last)
		seen[n], last = true, n
	}
	assert.WithinDuration(t, time.Now(), time.Unix(0, last), time.Second, "still the time")
}
