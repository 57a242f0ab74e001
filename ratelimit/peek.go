package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// rateKeyPrefix is what redis_rate puts in front of every key it is given
// (its unexported redisPrefix): the counter of keys.Builder.Fail(ip, X) is
// "rate:" + that. TestPeekReadsRedisRatesKey holds it to redis_rate's.
const rateKeyPrefix = "rate:"

// gcraEpoch is the time redis_rate's script counts its seconds from (its
// jan_1_2017), so that the float it stores keeps microseconds.
const gcraEpoch = 1483228800

// Count is one failure counter as redis_rate holds it, read without
// changing it (see Peek).
type Count struct {
	Key    string        // the counter's Redis key, redis_rate's "rate:" in front
	Limit  int           // failures allowed before a ban or throttle (the burst)
	Window time.Duration // each counted failure is forgotten one Window after the one before it
	// Allowed is how many failures may happen now without a ban: the one
	// after them bans. It is what redis_rate's AllowN(n=0) returns as
	// Remaining, which that call cannot be asked for without writing.
	Allowed int
	// Counted is how many failures still weigh on the allowance: Limit - Allowed.
	Counted int
	// FullIn is how long until the allowance is full again (redis_rate's
	// ResetAfter); 0 when it is.
	FullIn time.Duration
}

// State is what Redis holds on one key's failures: its counter, its
// automatic bans so far, and how long the next one would be.
type State struct {
	Count
	Scope    keys.Scope
	Value    string
	Offences int           // automatic bans so far, as the offences key counts them
	Forget   time.Duration // until the offences key expires (offences forgotten); 0 without one, negative: never
	NextBan  time.Duration // the ban the next offence gets: ban_time doubled per offence, capped at ban_max
}

// Peek reads the failure state of value in scope as Fail would count it,
// without changing anything: GET and PTTL, plus TIME for the Redis clock
// that redis_rate's script reads, in one round trip. (redis_rate's own
// AllowN with n=0 would answer too, but its script rewrites the counter's
// expiry.) Allowed is computed as redis_rate's script computes Remaining,
// in the same float arithmetic.
func (l *Limiter) Peek(ctx context.Context, scope keys.Scope, value string) (State, error) {
	if _, err := keys.ParseScope(string(scope)); err != nil {
		return State{}, fmt.Errorf("ratelimit: %w", err)
	}
	offKey := l.kb.Offences(scope, value)
	rateKey := rateKeyPrefix + l.kb.Fail(scope, value)
	pipe := l.rdb.Pipeline()
	now := pipe.Time(ctx)
	tat := pipe.Get(ctx, rateKey)
	off := pipe.Get(ctx, offKey)
	offTTL := pipe.PTTL(ctx, offKey)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return State{}, fmt.Errorf("ratelimit: peek: %w", err)
	}
	c, err := peekCount(rateKey, l.limit, now, tat)
	if err != nil {
		return State{}, err
	}
	st := State{Count: c, Scope: scope, Value: value}
	switch n, err := off.Int(); {
	case errors.Is(err, redis.Nil):
	case err != nil:
		return State{}, fmt.Errorf("ratelimit: peek: offences at %s: %w", offKey, err)
	default:
		st.Offences = max(n, 0)
		st.Forget = pttl(offTTL.Val())
	}
	st.NextBan = l.policy.banTTL(st.Offences + 1)
	return st, nil
}

// PeekThrottle reads the count of username's failures from every source
// toward its throttle (ThrottleFail with limit), without changing it.
func (l *Limiter) PeekThrottle(ctx context.Context, username string, limit int) (Count, error) {
	key := rateKeyPrefix + l.kb.ThrottleCount(username)
	pipe := l.rdb.Pipeline()
	now := pipe.Time(ctx)
	tat := pipe.Get(ctx, key)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return Count{}, fmt.Errorf("ratelimit: peek: %w", err)
	}
	return peekCount(key, redis_rate.Limit{Rate: 1, Burst: limit, Period: l.policy.Window}, now, tat)
}

// peekCount turns the TIME and GET answers into a Count.
func peekCount(key string, lim redis_rate.Limit, now *redis.TimeCmd, tat *redis.StringCmd) (Count, error) {
	t, err := now.Result()
	if err != nil {
		return Count{}, fmt.Errorf("ratelimit: peek: %w", err)
	}
	v, err := tat.Result()
	switch {
	case errors.Is(err, redis.Nil):
		v = ""
	case err != nil:
		return Count{}, fmt.Errorf("ratelimit: peek: %s: %w", key, err)
	}
	c, err := gcraPeek(lim, v, t)
	if err != nil {
		return Count{}, fmt.Errorf("ratelimit: peek: %s: %w", key, err)
	}
	c.Key = key
	return c, nil
}

// gcraPeek is redis_rate's allowN script for n = 0 (which admits nothing
// and changes no count), step by step in the same float64 arithmetic as
// its Lua: tat is the stored value ("" for none), now the Redis TIME.
func gcraPeek(lim redis_rate.Limit, tat string, now time.Time) (Count, error) {
	c := Count{Limit: lim.Burst, Window: lim.Period}
	if lim.Rate <= 0 || lim.Burst <= 0 || lim.Period <= 0 {
		return c, fmt.Errorf("no limit")
	}
	emission := lim.Period.Seconds() / float64(lim.Rate)
	burstOffset := emission * float64(lim.Burst)
	n := float64(now.Unix()-gcraEpoch) + float64(now.Nanosecond()/1000)/1000000
	t := n
	if tat != "" {
		f, err := strconv.ParseFloat(strings.TrimSpace(tat), 64)
		if err != nil {
			return c, fmt.Errorf("stored value %q is no redis_rate time", tat)
		}
		t = f
	}
	t = max(t, n)
	remaining := (n - (t - burstOffset)) / emission
	c.Allowed = min(max(int(remaining), 0), lim.Burst) // Redis truncates the script's number the same way
	c.Counted = lim.Burst - c.Allowed
	c.FullIn = time.Duration((t - n) * float64(time.Second))
	return c, nil
}

// pttl reads a PTTL answer: -1 (no expiry) as negative, -2 (no key) as 0.
func pttl(d time.Duration) time.Duration {
	switch {
	case d == -1 || d == -time.Millisecond:
		return -1
	case d < 0:
		return 0
	}
	return d
}

// BannedAt returns when the plugin wrote an automatic ban or a throttle,
// from the value it wrote ("auto: ... at 2026-11-21T17:31:10Z"). ok is false
// for any other value, an operator's among them: those say no time.
func BannedAt(value string) (time.Time, bool) {
	if !keys.IsAutoBan(value) {
		return time.Time{}, false
	}
	i := strings.LastIndex(value, " at ")
	if i < 0 {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339, value[i+len(" at "):])
	if err != nil {
		return time.Time{}, false
	}
	return t, true
}
