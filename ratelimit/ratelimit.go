// Package ratelimit counts failed authentications and bans the clients that
// fail too often.
//
// # Policy
//
// Failures are counted per value of a scope (an IP address, a client ID or a
// username) with github.com/go-redis/redis_rate: a key may fail Policy.Limit
// times within Policy.Window (default 5 per minute). redis_rate is a GCRA
// limiter, so the allowance refills steadily, one failure every
// Window/Limit, rather than all at once at the end of a fixed window. The
// failure that goes over the limit bans the key automatically for
// Policy.BanTime (default 10m); each repeat offence doubles the ban, up to
// Policy.BanMax (default 24h): 10m, 20m, 40m, ... 24h.
//
// # Keys
//
// Every key name comes from keys.Builder, so the values, which are arbitrary
// client-supplied bytes, are taken verbatim and each maps to exactly one key.
// With the prefix "guard:" and the IP 192.0.2.7:
//
//	rate:guard:fail:ip:192.0.2.7    redis_rate's counter (redis_rate adds its own "rate:" prefix)
//	guard:block:ip:192.0.2.7        the ban: "auto: ..." with a PX expiry of the ban's length
//	guard:offences:ip:192.0.2.7     how many automatic bans the key has had, expiring BanMax after the ban
//
// The block key is the same one operators write by hand; automatic bans are
// told apart by their value, which always starts with "auto: ". An existing
// block key, whether an operator's permanent ban or another broker's
// automatic one, is never overwritten.
//
// Only single-key commands are used (redis_rate's script touches one key), so
// a Limiter works on Redis Cluster, where the three keys live in different
// slots, as well as on a single server or a Ring. No command takes a pattern
// built from a value.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// ReasonPrefix starts the value of every block key that Fail writes; the
// plugin tells automatic bans from an operator's by it.
const ReasonPrefix = "auto: "

// The policy defaults, used by New for zero (or negative) fields.
const (
	DefaultLimit   = 5
	DefaultWindow  = time.Minute
	DefaultBanTime = 10 * time.Minute
	DefaultBanMax  = 24 * time.Hour
)

// rediser lists the Redis commands a Limiter sends: redis_rate's (the first
// seven) and its own. *redis.Client, *redis.ClusterClient, *redis.Ring and
// redis.UniversalClient all satisfy it.
type rediser interface {
	Eval(ctx context.Context, script string, keys []string, args ...interface{}) *redis.Cmd
	EvalSha(ctx context.Context, sha1 string, keys []string, args ...interface{}) *redis.Cmd
	EvalRO(ctx context.Context, script string, keys []string, args ...interface{}) *redis.Cmd
	EvalShaRO(ctx context.Context, sha1 string, keys []string, args ...interface{}) *redis.Cmd
	ScriptExists(ctx context.Context, hashes ...string) *redis.BoolSliceCmd
	ScriptLoad(ctx context.Context, script string) *redis.StringCmd
	Del(ctx context.Context, keys ...string) *redis.IntCmd

	Get(ctx context.Context, key string) *redis.StringCmd
	SetArgs(ctx context.Context, key string, value interface{}, a redis.SetArgs) *redis.StatusCmd
	Incr(ctx context.Context, key string) *redis.IntCmd
	PExpire(ctx context.Context, key string, expiration time.Duration) *redis.BoolCmd
}

// Policy is the failed-auth policy.
type Policy struct {
	Limit   int           // failed authentications allowed per Window, per key (fail_limit, default 5)
	Window  time.Duration // fail_window, default 1m
	BanTime time.Duration // first automatic ban, default 10m
	BanMax  time.Duration // cap of the doubling, default 24h
}

// BanDuration returns the ban for the n-th offence (n >= 1; smaller n count
// as 1): BanTime * 2^(n-1), capped at BanMax. It cannot overflow, whatever n.
func (p Policy) BanDuration(offence int) time.Duration {
	if p.BanTime <= 0 {
		return 0
	}
	shift := max(offence, 1) - 1
	// BanTime<<shift > BanMax exactly when BanTime > BanMax>>shift, which
	// cannot overflow: a Go shift by 63 or more gives 0 (or -1), not a wrap.
	// BanTime<<shift is computed only once it is known to fit under BanMax.
	if p.BanTime > p.BanMax>>shift {
		return p.BanMax
	}
	return p.BanTime << shift
}

// String describes the policy, e.g.
// "5 failures per 1m0s, then a ban of 10m0s doubling up to 24h0m0s".
func (p Policy) String() string {
	return fmt.Sprintf("%d failures per %s, then a ban of %s doubling up to %s",
		p.Limit, p.Window, p.BanTime, p.BanMax)
}

// withDefaults replaces zero or negative fields by the defaults.
func (p Policy) withDefaults() Policy {
	if p.Limit <= 0 {
		p.Limit = DefaultLimit
	}
	if p.Window <= 0 {
		p.Window = DefaultWindow
	}
	if p.BanTime <= 0 {
		p.BanTime = DefaultBanTime
	}
	if p.BanMax <= 0 {
		p.BanMax = DefaultBanMax
	}
	return p
}

// Limiter counts failed authentications and writes automatic bans. It is safe
// for concurrent use, and several brokers may share one Redis.
type Limiter struct {
	rdb    rediser
	rate   *redis_rate.Limiter
	kb     keys.Builder
	policy Policy
	limit  redis_rate.Limit
}

// New returns a Limiter writing keys built by kb. Zero fields of p take the
// defaults (5 failures per 1m, bans from 10m to 24h).
func New(rdb rediser, kb keys.Builder, p Policy) *Limiter {
	p = p.withDefaults()
	return &Limiter{
		rdb:    rdb,
		rate:   redis_rate.NewLimiter(rdb),
		kb:     kb,
		policy: p,
		limit:  redis_rate.Limit{Rate: p.Limit, Burst: p.Limit, Period: p.Window},
	}
}

// Policy returns the policy in force, defaults filled in.
func (l *Limiter) Policy() Policy { return l.policy }

// Fail records one failed authentication by value in scope and, when that
// takes the key over the limit, bans it. It returns the ban it wrote, or nil:
// nil also when the key is over the limit but already blocked, by an operator
// or by another broker. If the ban was written but recording the offence
// failed, Fail returns the ban and an error. Every command runs under ctx.
func (l *Limiter) Fail(ctx context.Context, scope keys.Scope, value string) (*Ban, error) {
	if _, err := keys.ParseScope(string(scope)); err != nil {
		return nil, fmt.Errorf("ratelimit: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("ratelimit: %w", err)
	}
	res, err := l.rate.Allow(ctx, l.kb.Fail(scope, value), l.limit)
	if err != nil {
		return nil, fmt.Errorf("ratelimit: count failure: %w", err)
	}
	if res.Allowed > 0 {
		return nil, nil
	}
	return l.ban(ctx, scope, value)
}

// ban writes an automatic ban of value unless its block key exists.
//
// The block key and the offences key hash to different cluster slots, so the
// two cannot be changed in one script or transaction. Instead SET NX on the
// block key decides: of any number of brokers banning the same key at once,
// exactly one creates it, and only that one goes on to INCR the offences key.
// The others find the key taken and do nothing, so one offence is counted
// once and never escalates the next ban twice; an operator's key is never
// touched. Doing INCR first would count the offence once per broker. The
// worst a crash between SET and INCR can do is forget one offence, making
// the next ban shorter rather than longer. The count read before the SET can
// only be stale if a whole ban began and ended in between, and then the ban is
// one step too short, never too long.
func (l *Limiter) ban(ctx context.Context, scope keys.Scope, value string) (*Ban, error) {
	offKey := l.kb.Offences(scope, value)
	n, err := l.rdb.Get(ctx, offKey).Int()
	switch {
	case errors.Is(err, redis.Nil):
		n = 0
	case err != nil:
		return nil, fmt.Errorf("ratelimit: read offences: %w", err)
	}
	offence := max(n, 0) + 1
	d := l.policy.BanDuration(offence).Truncate(time.Millisecond)
	d = max(d, time.Millisecond) // the smallest expiry Redis keeps

	now := time.Now()
	b := &Ban{
		Scope:    scope,
		Value:    value,
		Key:      l.kb.List(keys.Block, scope, value),
		Offence:  offence,
		Duration: d,
		Expires:  now.Add(d),
	}
	b.Reason = fmt.Sprintf("%s%d failed authentications within %s (offence %d, %s) at %s",
		ReasonPrefix, l.policy.Limit+1, l.policy.Window, offence, d,
		now.UTC().Format(time.RFC3339))

	err = l.rdb.SetArgs(ctx, b.Key, b.Reason, redis.SetArgs{Mode: "NX", TTL: d}).Err()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, nil // already blocked: by an operator, or by another broker just now
	case err != nil:
		return nil, fmt.Errorf("ratelimit: write ban: %w", err)
	}
	if err := l.rdb.Incr(ctx, offKey).Err(); err != nil {
		return b, fmt.Errorf("ratelimit: ban written, count offence: %w", err)
	}
	keep := d + l.policy.BanMax
	if keep < d {
		keep = math.MaxInt64 // absurd BanMax: forget offences never, rather than at once
	}
	if err := l.rdb.PExpire(ctx, offKey, keep).Err(); err != nil {
		return b, fmt.Errorf("ratelimit: ban written, expire offences: %w", err)
	}
	return b, nil
}

// Ban is an automatic ban that Fail wrote.
type Ban struct {
	Scope    keys.Scope
	Value    string
	Key      string // the block key written, e.g. guard:block:ip:192.0.2.7
	Reason   string // the value stored at Key; starts with ReasonPrefix
	Offence  int    // 1 for the first ban of this key
	Duration time.Duration
	Expires  time.Time // by the local clock, when the ban was written
}

// maxLogValue is how many bytes of a value String shows.
const maxLogValue = 200

// String describes the ban for logs. The value is client-supplied, so it is
// quoted and, past 200 bytes, cut with a note of its full length; Key, which
// embeds the value, is left out.
func (b Ban) String() string {
	return fmt.Sprintf("automatic ban of %s %s for %s until %s (offence %d)",
		b.Scope, quoteValue(b.Value), b.Duration,
		b.Expires.UTC().Format(time.RFC3339), b.Offence)
}

// quoteValue quotes v for a log line, cut at maxLogValue bytes.
func quoteValue(v string) string {
	if len(v) <= maxLogValue {
		return strconv.Quote(v)
	}
	return strconv.Quote(v[:maxLogValue]) + "... (" + strconv.Itoa(len(v)) + " bytes)"
}
