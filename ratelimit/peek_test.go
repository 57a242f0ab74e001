package ratelimit

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// readOnly returns a client logged in as a Redis user that may only read:
// any write Peek sent would fail with NOPERM.
func readOnly(t *testing.T, addr string, admin *redis.Client) *redis.Client {
	t.Helper()
	require.NoError(t, admin.Do(context.Background(), "ACL", "SETUSER", "peeker", "on", ">peek-pw", "~*", "resetchannels",
		"-@all", "+@read", "+@connection", "+time").Err())
	rdb := redis.NewClient(&redis.Options{Addr: addr, Username: "peeker", Password: "peek-pw"})
	t.Cleanup(func() { rdb.Close() })
	require.Error(t, rdb.Set(context.Background(), "x", "1", 0).Err(), "the user cannot write")
	return rdb
}

// After k failures Peek says Limit-k more are allowed, and exactly that many
// more failures pass before the next one bans; it does so as a user that
// cannot write.
func TestPeekCountsAsFailBans(t *testing.T) {
	ctx := context.Background()
	r, rdb := setup(t)
	kb := keys.Builder{Prefix: "guard:"}
	p := Policy{Limit: 4, Window: time.Minute, BanTime: 10 * time.Second, BanMax: 80 * time.Second}
	l := New(rdb, kb, p)
	peek := New(readOnly(t, r.Addr, rdb), kb, p)

	st, err := peek.Peek(ctx, keys.IP, "192.0.2.7")
	require.NoError(t, err)
	assert.Equal(t, State{
		Count: Count{Key: "rate:guard:fail:ip:192.0.2.7", Limit: 4, Window: time.Minute, Allowed: 4},
		Scope: keys.IP, Value: "192.0.2.7", NextBan: 10 * time.Second,
	}, st, "no failure yet")

	for k := 1; k <= 3; k++ {
		b, err := l.Fail(ctx, keys.IP, "192.0.2.7")
		require.NoError(t, err)
		require.Nil(t, b)
		st, err = peek.Peek(ctx, keys.IP, "192.0.2.7")
		require.NoError(t, err)
		assert.Equal(t, 4-k, st.Allowed, "after %d failures", k)
		assert.Equal(t, k, st.Counted)
		assert.InDelta(t, float64(time.Duration(k)*time.Minute), float64(st.FullIn), float64(2*time.Second))
	}
	for i := 0; i < st.Allowed; i++ {
		b, err := l.Fail(ctx, keys.IP, "192.0.2.7")
		require.NoError(t, err)
		require.Nil(t, b, "Peek said %d more are allowed", st.Allowed)
	}
	b, err := l.Fail(ctx, keys.IP, "192.0.2.7")
	require.NoError(t, err)
	require.NotNil(t, b, "the one after them bans")

	st, err = peek.Peek(ctx, keys.IP, "192.0.2.7")
	require.NoError(t, err)
	assert.Equal(t, 0, st.Allowed)
	assert.Equal(t, 4, st.Counted)
	assert.Equal(t, 1, st.Offences)
	assert.Equal(t, 20*time.Second, st.NextBan, "the next ban doubles")
	assert.InDelta(t, float64(90*time.Second), float64(st.Forget), float64(2*time.Second), "offences kept ban + ban_max")

	at, ok := BannedAt(b.Reason)
	require.True(t, ok, b.Reason)
	assert.WithinDuration(t, time.Now(), at, 2*time.Second)
}

// Peek's Allowed is redis_rate's own Remaining for AllowN(n=0), for stored
// times around every boundary. AllowN reads the Redis clock when it runs;
// Peek before and after bracket it, and Allowed only grows with time.
func TestPeekMatchesRedisRate(t *testing.T) {
	ctx := context.Background()
	_, rdb := setup(t)
	kb := keys.Builder{Prefix: "guard:"}
	p := Policy{Limit: 5, Window: time.Minute}
	l := New(rdb, kb, p)
	rr := redis_rate.NewLimiter(rdb)
	key := kb.Fail(keys.IP, "192.0.2.9")

	offsets := []float64{-30, 0, 0.001, 0.5, 59.9, 60, 60.001, 61, 119.999, 120, 150, 239.5, 240, 299.999, 300}
	equal := 0
	for _, off := range offsets {
		now, err := rdb.Time(ctx).Result()
		require.NoError(t, err)
		tat := float64(now.Unix()-gcraEpoch) + float64(now.Nanosecond()/1000)/1e6 + off
		require.NoError(t, rdb.Set(ctx, "rate:"+key, strconv.FormatFloat(tat, 'f', 6, 64), time.Hour).Err())

		before, err := l.Peek(ctx, keys.IP, "192.0.2.9")
		require.NoError(t, err)
		res, err := rr.AllowN(ctx, key, p.RedisRate(), 0)
		require.NoError(t, err)
		after, err := l.Peek(ctx, keys.IP, "192.0.2.9")
		require.NoError(t, err)

		assert.LessOrEqual(t, before.Allowed, res.Remaining, "TAT now%+.3fs", off)
		assert.GreaterOrEqual(t, after.Allowed, res.Remaining, "TAT now%+.3fs", off)
		if before.Allowed == after.Allowed {
			equal++
			assert.Equal(t, res.Remaining, before.Allowed, "TAT now%+.3fs", off)
			assert.InDelta(t, float64(res.ResetAfter), float64(before.FullIn), float64(50*time.Millisecond), "TAT now%+.3fs", off)
		}
	}
	assert.GreaterOrEqual(t, equal, len(offsets)-3, "the clock crossed a boundary between reads at most at the exact ones")
}

func TestGCRAPeek(t *testing.T) {
	now := time.Unix(gcraEpoch+1000, 250_000_000)
	lim := redis_rate.Limit{Rate: 1, Burst: 3, Period: 10 * time.Second}
	for _, c := range []struct {
		tat     string
		allowed int
		fullIn  time.Duration
	}{
		{"", 3, 0},
		{"900", 3, 0},     // long past: full
		{"1000.25", 3, 0}, // now
		{"1000.26", 2, 10 * time.Millisecond},
		{"1010.25", 2, 10 * time.Second},
		{"1010.26", 1, 10*time.Second + 10*time.Millisecond},
		{"1030.25", 0, 30 * time.Second},
		{" 1020.25\n", 1, 20 * time.Second},
	} {
		got, err := gcraPeek(lim, c.tat, now)
		require.NoError(t, err, c.tat)
		assert.Equal(t, c.allowed, got.Allowed, "TAT %q", c.tat)
		assert.Equal(t, 3-c.allowed, got.Counted, "TAT %q", c.tat)
		assert.InDelta(t, float64(c.fullIn), float64(got.FullIn), float64(time.Microsecond), "TAT %q", c.tat)
	}
	_, err := gcraPeek(lim, "abc", now)
	assert.EqualError(t, err, `stored value "abc" is no redis_rate time`)
	_, err = gcraPeek(redis_rate.Limit{}, "", now)
	assert.Error(t, err)
}

func TestPeekThrottle(t *testing.T) {
	ctx := context.Background()
	r, rdb := setup(t)
	kb := keys.Builder{Prefix: "guard:"}
	l := New(rdb, kb, Policy{Window: time.Minute})
	peek := New(readOnly(t, r.Addr, rdb), kb, Policy{Window: time.Minute})
	for k := 0; k < 3; k++ {
		c, err := peek.PeekThrottle(ctx, "bob", 3)
		require.NoError(t, err)
		assert.Equal(t, "rate:guard:fail:anysource:username:bob", c.Key)
		assert.Equal(t, 3-k, c.Allowed)
		th, err := l.ThrottleFail(ctx, "bob", 3)
		require.NoError(t, err)
		require.Nil(t, th)
	}
	c, err := peek.PeekThrottle(ctx, "bob", 3)
	require.NoError(t, err)
	assert.Equal(t, 0, c.Allowed)
	th, err := l.ThrottleFail(ctx, "bob", 3)
	require.NoError(t, err)
	require.NotNil(t, th, "Peek said none more is allowed")
	at, ok := BannedAt(th.Reason)
	assert.True(t, ok, th.Reason)
	assert.WithinDuration(t, time.Now(), at, 2*time.Second)
}

// The key Peek reads is the one redis_rate writes.
func TestPeekReadsRedisRatesKey(t *testing.T) {
	ctx := context.Background()
	_, rdb := setup(t)
	kb := keys.Builder{Prefix: "p:"}
	l := New(rdb, kb, Policy{})
	long := fmt.Sprintf("%0300d", 7)
	_, err := l.Fail(ctx, keys.ClientID, long)
	require.NoError(t, err)
	st, err := l.Peek(ctx, keys.ClientID, long)
	require.NoError(t, err)
	assert.Equal(t, []string{st.Key}, allKeys(t, rdb))
	assert.Equal(t, 1, st.Counted)
}

func TestBannedAt(t *testing.T) {
	at, ok := BannedAt("auto: over 5 failed authentications (5 allowed, refilling 1 per 1m0s) (offence 1, 10m0s) at 2026-11-21T17:31:10Z")
	assert.True(t, ok)
	assert.Equal(t, time.Date(2026, 11, 21, 17, 31, 10, 0, time.UTC), at)
	// Since the ban's value names its write.
	at, ok = BannedAt("auto: over 5 failed authentications (5 allowed, refilling 1 per 1m0s) (offence 1, 10m0s) (ban 5e1f0c2a9b3d4e67) at 2026-11-21T17:31:10Z")
	assert.True(t, ok)
	assert.Equal(t, time.Date(2026, 11, 21, 17, 31, 10, 0, time.UTC), at)
	for _, v := range []string{
		"abuse report 4711 at 2026-11-21T17:31:10Z", // an operator's: no time is trusted
		"auto: something",
		"auto: at yesterday",
		"",
	} {
		_, ok := BannedAt(v)
		assert.False(t, ok, v)
	}
}
