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

// slowSetClient is a client whose replies to requests holding trigger
// come back delay after Redis ran them (testenv.DelayingProxy).
func slowSetClient(t *testing.T, addr, trigger string, delay time.Duration) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: testenv.DelayingProxy(t, addr, trigger, delay), MaxRetries: -1, ReadTimeout: 5 * time.Second})
	t.Cleanup(func() { c.Close() })
	return c
}

// A ban whose SET's reply came back late ends, as this broker reports it
// (Ban.Expires: the end of the replica entry Guard.listed makes), no later
// than its key in Redis: the end is counted from before the send. Counted
// from the reply, it ends the reply's delay after the key; the replica
// entry outliving the key is then taken for an operator's lift
// (Guard.liftedEarly) when it is dropped (a review of 210e1f4).
func TestBanEndCountedFromBeforeTheSend(t *testing.T) {
	ctx := context.Background()
	r, rdb := setup(t)
	kb := keys.Builder{Prefix: "guard:"}
	p := Policy{Limit: 1, Window: time.Minute, BanTime: 10 * time.Second, BanMax: time.Hour}
	_, err := New(rdb, kb, p).Fail(ctx, keys.IP, "192.0.2.60") // the allowance spent
	require.NoError(t, err)
	slow := New(slowSetClient(t, r.Addr, "(ban ", 800*time.Millisecond), kb, p)

	sent := time.Now()
	b, err := slow.Fail(ctx, keys.IP, "192.0.2.60")
	require.NoError(t, err)
	require.NotNil(t, b)
	require.GreaterOrEqual(t, time.Since(sent), 800*time.Millisecond, "control: the reply was late")
	pttl := rdb.PTTL(ctx, "guard:block:ip:192.0.2.60").Val()
	keyEnds := time.Now().Add(pttl)
	assert.False(t, b.Expires.After(keyEnds.Add(50*time.Millisecond)), "ends %s after its key", b.Expires.Sub(keyEnds))
	assert.WithinDuration(t, keyEnds, b.Expires, 300*time.Millisecond, "and not much before it")
}

// The same for a username throttle: the Duration reported, counted from
// the return, ends no later than the throttle key in Redis.
func TestThrottleEndCountedFromBeforeTheSend(t *testing.T) {
	ctx := context.Background()
	r, rdb := setup(t)
	kb := keys.Builder{Prefix: "guard:"}
	p := Policy{Limit: 1, Window: time.Minute}
	_, err := New(rdb, kb, p).ThrottleFailTracked(ctx, "bob", 1) // the allowance spent
	require.NoError(t, err)
	slow := New(slowSetClient(t, r.Addr, "(throttle ", 800*time.Millisecond), kb, p)

	sent := time.Now()
	th, err := slow.ThrottleFailTracked(ctx, "bob", 1)
	require.NoError(t, err)
	require.NotNil(t, th)
	require.GreaterOrEqual(t, time.Since(sent), 800*time.Millisecond, "control: the reply was late")
	ends := time.Now().Add(th.Duration)
	pttl := rdb.PTTL(ctx, "guard:throttle:username:bob").Val()
	keyEnds := time.Now().Add(pttl)
	assert.False(t, ends.After(keyEnds.Add(50*time.Millisecond)), "ends %s after its key", ends.Sub(keyEnds))
	assert.WithinDuration(t, keyEnds, ends, 300*time.Millisecond, "and not much before it")
}

// A throttle whose first SET never ran is written by a later try for what
// is left of the allowance's wait, counted from the failure's count: the
// wait runs from the count, whichever try writes the key. Written for the
// whole wait, a retry 30 s after the count kept the username throttled 30 s
// past the moment its allowance admitted a failure again.
func TestThrottleTriedAgainIsShorterByTheTimeSince(t *testing.T) {
	ctx := context.Background()
	r, rdb := setup(t)
	kb := keys.Builder{Prefix: "guard:"}
	p := Policy{Limit: 1, Window: 10 * time.Second}
	direct := New(rdb, kb, p)
	_, err := direct.ThrottleFailTracked(ctx, "bob", 1) // the allowance spent
	require.NoError(t, err)
	cut := redis.NewClient(&redis.Options{Addr: testenv.ClosingProxy(t, r.Addr, "(throttle ", false), MaxRetries: -1})
	t.Cleanup(func() { cut.Close() })

	var a Attempt
	counted := time.Now()
	th, err := New(cut, kb, p).ThrottleFailAttempt(ctx, "bob", 1, &a)
	require.Error(t, err)
	require.Nil(t, th)
	require.Equal(t, "0", r.CLI("EXISTS", "guard:throttle:username:bob"), "control: the first SET never ran")

	time.Sleep(1500 * time.Millisecond)
	th, err = direct.ThrottleFailAttempt(ctx, "bob", 1, &a)
	require.NoError(t, err)
	require.NotNil(t, th)
	pttl := rdb.PTTL(ctx, "guard:throttle:username:bob").Val()
	// The wait after the second failure of a 1-per-10 s allowance: about 10 s from the count.
	keyEnds := time.Now().Add(pttl)
	assert.WithinDuration(t, counted.Add(10*time.Second), keyEnds, 400*time.Millisecond, "its wait from the count, not from the try (PTTL %s)", pttl)
	assert.WithinDuration(t, keyEnds, time.Now().Add(th.Duration), 300*time.Millisecond, "reported as written")
}

// Debt reads a count's failures not refilled, by Redis's clock, as Local's
// Debt reads this broker's: the two agree on the same failures.
func TestDebtReadsTheCount(t *testing.T) {
	ctx := context.Background()
	_, rdb := setup(t)
	p := Policy{Limit: 5, Window: 10 * time.Second, BanTime: time.Minute}
	l := New(rdb, keys.Builder{Prefix: "guard:"}, p)
	loc := NewLocal(p, 0)
	d, err := l.Debt(ctx, keys.IP, "192.0.2.70")
	require.NoError(t, err)
	assert.Zero(t, d, "no count")
	for range 3 {
		_, err := l.Fail(ctx, keys.IP, "192.0.2.70")
		require.NoError(t, err)
		loc.Fail("ip:192.0.2.70", time.Now())
	}
	d, err = l.Debt(ctx, keys.IP, "192.0.2.70")
	require.NoError(t, err)
	assert.InDelta(t, 3, d, 0.05)
	assert.InDelta(t, d, loc.Debt("ip:192.0.2.70", time.Now()), 0.05)
	assert.InDelta(t, 2, loc.Debt("ip:192.0.2.70", time.Now().Add(10*time.Second)), 0.05, "one refilled a window later")

	for range 2 {
		_, err := l.ThrottleFailTracked(ctx, "bob", 5)
		require.NoError(t, err)
	}
	d, err = l.ThrottleDebt(ctx, "bob")
	require.NoError(t, err)
	assert.InDelta(t, 2, d, 0.05)

	require.NoError(t, rdb.Set(ctx, "rate:guard:fail:ip:192.0.2.71", "stray", 0).Err())
	d, err = l.Debt(ctx, keys.IP, "192.0.2.71")
	require.NoError(t, err)
	assert.Zero(t, d, "a value that is no count")
}
