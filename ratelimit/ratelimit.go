package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
	"github.com/mosquitto-guard/mosquitto-guard/internal/rediserr"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

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
	Pipeline() redis.Pipeliner // Peek's reads, in one round trip
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

// banTTL is the expiry the ban of the n-th offence is written with:
// BanDuration to the millisecond, at least 1ms (the smallest Redis keeps).
func (p Policy) banTTL(offence int) time.Duration {
	return max(p.BanDuration(offence).Truncate(time.Millisecond), time.Millisecond)
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
		limit:  p.RedisRate(),
	}
}

// RedisRate is the redis_rate limit that enforces p: Burst = Limit, Rate = 1
// per Window.
//
// Why these numbers: with emission interval T = Period/Rate = Window and
// burst B = Limit, GCRA admits a request at time t only if TAT + T - B*T <= t,
// and each admitted request moves TAT to max(TAT, t) + T. Take L+1 failures
// at t1 <= ... <= t(L+1) with t(L+1) - t1 < Window. If the first L were all
// admitted, TAT >= t1 + L*T after them, so the last is admitted only if
// t1 + (L+1)T - L*T <= t(L+1), that is t(L+1) - t1 >= T = Window: false. So
// one of the L+1 is refused, and that failure bans. With Rate = Limit (the
// obvious choice, and the one used before) T is Window/L and up to 2L
// failures fit in one window without a ban.
func (p Policy) RedisRate() redis_rate.Limit {
	p = p.withDefaults()
	return redis_rate.Limit{Rate: 1, Burst: p.Limit, Period: p.Window}
}

// Rule describes what bans, as log lines and ban reasons state it, e.g.
// "over 5 failed authentications (5 allowed, refilling 1 per 1m0s)".
func (p Policy) Rule() string {
	return fmt.Sprintf("over %d failed authentications (%d allowed, refilling 1 per %s)", p.Limit, p.Limit, p.Window)
}

// Policy returns the policy in force, defaults filled in.
func (l *Limiter) Policy() Policy { return l.policy }

// Fail records one failed authentication by value in scope and, when that
// takes the key over the limit, bans it. It returns the ban it wrote, or nil:
// nil also when the key is over the limit but already blocked, by an operator
// or by another broker. If the ban was written but recording the offence
// failed, Fail returns the ban and an error. Every command runs under ctx.
func (l *Limiter) Fail(ctx context.Context, scope keys.Scope, value string) (*Ban, error) {
	return l.FailAttempt(ctx, scope, value, new(Attempt))
}

// Attempt is one failure's way through FailAttempt, kept by a caller that
// tries it again after an error: what it has done is not done again. An
// error does not say that nothing ran: go-redis sends a command again
// after a lost reply (EOF, a reset), and then its last error may be a
// refused dial though Redis ran the first send. A retry with a new ban's
// value found the first value there and took it for another broker's: the
// ban held unlogged, its offence uncounted, the next one no longer
// (atk95b, a README-only attack: a reset after the SET, then dials refused
// for 1.5 s). With the Attempt the retry writes the same value, which it
// knows for its own, and counts the offence against the same count read
// before. The zero Attempt is a new failure.
type Attempt struct {
	over    bool      // the failure counted, and over the limit: the ban is left
	ban     *Ban      // the ban decided: its value, offence and length
	thr     *Throttle // the throttle decided (ThrottleFailAttempt)
	thrAt   time.Time // when: the allowance's wait it lasts runs from then
	n       int       // the offences counted before it
	endUs   int64     // when the ban's or throttle's write ends, by Redis's clock on its key's node (µs of TIME); 0: not read yet
	endBy   time.Time // by this broker's clock, when it has surely ended there
	clockUs int64     // Redis's clock as last read there (0: to read), and
	clockAt time.Time // this broker's before that read was sent: a try's deadline onto Redis's clock (tryEnd)
	written bool      // the ban is in Redis, this attempt's
}

// ErrLapsed: a later try of a ban or throttle found its time over before
// it could write it (Redis did not answer for that long). An earlier try's
// write may have held meanwhile, or none: it was not logged, and the
// failure's ban was not counted.
var ErrLapsed = errors.New("its time was over before Redis answered")

// Resumable reports whether a try may be made again after any error but
// Redis's own refusal: the failure's count answered, and what is left (a
// read, the ban's write of the value decided unless the key exists
// (setOwn), the offence's count against
// the count read first) cannot count anything twice. So a ban whose SET's
// reply timed out is not left unlogged and uncounted.
func (a *Attempt) Resumable() bool { return a.over || a.thr != nil }

// FailAttempt is Fail, resuming a where an earlier call with it stopped.
func (l *Limiter) FailAttempt(ctx context.Context, scope keys.Scope, value string, a *Attempt) (*Ban, error) {
	if _, err := keys.ParseScope(string(scope)); err != nil {
		return nil, fmt.Errorf("ratelimit: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("ratelimit: %w", err)
	}
	if !a.over {
		fk := l.kb.Fail(scope, value)
		res, err := l.rate.Allow(ctx, fk, l.limit)
		if err != nil {
			return nil, fmt.Errorf("ratelimit: count failure %s: %w", logval.Quote(rateKey(fk)), err)
		}
		if res.Allowed > 0 {
			return nil, nil
		}
		a.over = true
	}
	return l.banAs(ctx, scope, value, a)
}

// ban writes an automatic ban of value unless its block key exists.
//
// The block key and the offences key hash to different cluster slots, so the
// two cannot be changed in one script or transaction. Instead a write
// unless the key exists (setOwn's script, SET NX's rule) on the block key
// decides: of any number of brokers banning the same key at once,
// exactly one creates it, and only that one goes on to INCR the offences key.
// The others find the key taken and do nothing, so one offence is counted
// once and never escalates the next ban twice; an operator's key is never
// touched. Doing INCR first would count the offence once per broker. The
// worst a crash between SET and INCR can do is forget one offence, making
// the next ban shorter rather than longer. The count read before the SET can
// only be stale if a whole ban began and ended in between, and then the ban is
// one step too short, never too long.
func (l *Limiter) ban(ctx context.Context, scope keys.Scope, value string) (*Ban, error) {
	return l.banAs(ctx, scope, value, new(Attempt))
}

// banAs is ban, resuming a (see Attempt): the ban decided once, its value
// and the count read before kept for every try.
func (l *Limiter) banAs(ctx context.Context, scope keys.Scope, value string, a *Attempt) (*Ban, error) {
	offKey := l.kb.Offences(scope, value)
	if a.ban == nil {
		b, n, err := l.decide(ctx, scope, value, offKey)
		if err != nil {
			return nil, err
		}
		a.ban, a.n = b, n
	}
	b, d := a.ban, a.ban.Duration
	if !a.written {
		// The ban ends d after Redis's clock on its key's node was read,
		// however late Redis runs its write: a try sent again writes what
		// is left of it, and none once it is over (a key not there now
		// may have ended since, by its TTL or an operator's DEL: a retry
		// put an ended ban back for its whole length, atk96); and so does
		// a write that waited in the socket of a Redis stopped meanwhile
		// (atk97's H: a 1 s ban sent before a 6 s SIGSTOP held for 1 s
		// from the SIGCONT, unlogged, its try having lapsed).
		if err := l.anchor(ctx, b.Key, d, a); err != nil {
			return nil, fmt.Errorf("ratelimit: write ban %s: %w", logval.Quote(b.Key), err)
		}
		sent := time.Now()
		own, left, err := l.setOwnAs(ctx, b.Key, b.Reason, d, a)
		if !own {
			// Already blocked: by an operator, or by another broker just now.
			if err != nil {
				err = fmt.Errorf("ratelimit: write ban %s: %w", logval.Quote(b.Key), err)
			}
			return nil, err
		}
		// Its end in Redis, not the end decided: a later try wrote it
		// later, and the replica entry this ban makes on this broker
		// (Guard.listed) must not end after Redis's key, which its
		// expiry would take for an operator's lift: from before the send,
		// so never after. No end: an operator's PERSIST of it (PTTL -1).
		b.Expires = time.Time{}
		if left >= 0 {
			b.Expires = sent.Add(left)
		}
		a.written = true
	}
	keep := d + l.policy.BanMax
	if keep < d {
		keep = math.MaxInt64 // absurd BanMax: forget offences never, rather than at once
	}
	// INCR and PEXPIRE in one script on the one key: never a count without
	// a TTL. Given the count read before (n), so that a run sent again
	// after a lost reply finds it counted and counts nothing.
	if err := incrExpire.Run(ctx, l.rdb, []string{offKey}, keep.Milliseconds(), a.n).Err(); err != nil {
		return b, fmt.Errorf("ratelimit: ban written, count offence %s: %w", logval.Quote(offKey), err)
	}
	return b, nil
}

// decide reads value's offences and makes its next ban, not yet written,
// and the count read.
func (l *Limiter) decide(ctx context.Context, scope keys.Scope, value, offKey string) (*Ban, int, error) {
	raw, err := l.rdb.Get(ctx, offKey).Result()
	switch {
	case errors.Is(err, redis.Nil):
		raw = "0"
	case rediserr.IsKeyReply(err):
		raw = "0" // a key of another type (atk70: no ban was ever written for that value)
	case err != nil:
		return nil, 0, fmt.Errorf("ratelimit: read offences %s: %w", logval.Quote(offKey), err)
	}
	// A value that is no count (an operator's stray string, or a key of
	// another type) is taken as none: the ban is still written, the first
	// step long (atk69: its parse error was taken for Redis down). Its
	// INCR below then fails with a reply that names the key.
	n, perr := strconv.Atoi(raw)
	if perr != nil {
		n = 0
	}
	offence := max(n, 0) + 1
	d := l.policy.banTTL(offence)

	now := time.Now()
	b := &Ban{
		Scope:    scope,
		Value:    value,
		Key:      l.kb.List(keys.Block, scope, value),
		Offence:  offence,
		Duration: d,
		Expires:  now.Add(d),
	}
	// A random number beside the time names this call's write (setOwn).
	b.Reason = fmt.Sprintf("%s %s (offence %d, %s) (ban %016x) at %s",
		keys.AutoBanMarker, l.policy.Rule(), offence, d, rand.Uint64(), now.UTC().Format(time.RFC3339))
	return b, n, nil
}

// incrExpire counts one offence and sets its expiry in one atomic step,
// unless the count is already past ARGV[2], the count read before the ban
// was written: then this call ran before and its reply was lost (go-redis
// sends a script again after EOF or a reset), and counting again would
// double the next ban. Only the broker whose write (setOwn) made the ban counts
// its offence, so no other broker's count can have come in between, but
// for one whose ban was written after this one's was deleted: that offence
// is then left uncounted, the next ban one step shorter, never longer. A
// value that is no count is left to INCR, which fails naming the key.
var incrExpire = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v and string.match(v, '^%-?%d+$') and tonumber(v) > tonumber(ARGV[2]) then
  return tonumber(v)
end
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return n`)

// anchor reads, once per Attempt, Redis's clock on key's node and sets
// a's end ttl after it there (endUs), and by this broker's clock (endBy:
// the reading's reply came after Redis's clock was read). A try after the
// end, by this broker's clock, returns ErrLapsed without a round trip;
// ttl <= 0 (a throttle's wait over before it) too.
//
// The reading also moves each try's deadline onto Redis's clock (tryEnd):
// read again after a write came back late (errLate), the end staying.
func (l *Limiter) anchor(ctx context.Context, key string, ttl time.Duration, a *Attempt) error {
	switch {
	case a.endUs != 0 && !time.Now().Before(a.endBy):
		return ErrLapsed
	case a.endUs == 0 && ttl <= 0:
		return ErrLapsed
	case a.clockUs != 0:
		return nil
	}
	sent := time.Now()
	now, err := clockScript.Run(ctx, l.rdb, []string{key}).Int64()
	if err != nil {
		return fmt.Errorf("read redis's clock: %w", err)
	}
	a.clockUs, a.clockAt = now, sent
	if a.endUs == 0 {
		a.endUs, a.endBy = now+ttl.Microseconds(), time.Now().Add(ttl)
	}
	return nil
}

// tryEnd is when, by Redis's clock, a try under ctx has given up: ctx's
// deadline moved onto it by a's clock reading (later than the deadline by
// at most that reading's round trip); 0 with no deadline. A copy of the
// try's write that Redis runs after it writes nothing: a copy held on its
// way (a stalled path, a retransmission) after a later try's write had
// landed and been logged, and an operator's DEL of it made, put the ban
// back (atk100: a DEL 1.7 s after event=banned undone, the ban held 26 s
// more).
func tryEnd(ctx context.Context, a *Attempt) int64 {
	dl, ok := ctx.Deadline()
	if !ok {
		return 0
	}
	return a.clockUs + dl.Sub(a.clockAt).Microseconds()
}

// errLate: Redis ran a try's write after the try's deadline (tryEnd) and
// wrote nothing: its clock ran ahead of this broker's since it was read,
// which the next try reads again.
var errLate = errors.New("redis ran it after its try's deadline, by its clock as read before")

// clockScript reads Redis's clock (µs of TIME) on KEYS[1]'s node: a
// Cluster runs a script where its key lives (TIME alone goes to any node).
var clockScript = redis.NewScript(`
local t = redis.call('TIME')
return tonumber(t[1]) * 1000000 + tonumber(t[2])`)

// setOwn writes value at key until endUs (Redis's clock, µs of TIME)
// unless the key exists, and reports whether this call wrote it: also
// when the write's reply was lost and go-redis sent it again (it does
// after EOF or a reset, though Redis ran it), or an earlier try of the
// same Attempt wrote it, and the write found that value there. So value
// must name this call's write: its caller puts a random number in it.
// left is how long the key has left when Redis ran the write (-1: no end,
// an operator's PERSIST), never more than length, whatever Redis's clock
// did since endUs was set (an NTP step back, a failover to a node whose
// clock is behind). ErrLapsed: Redis ran it at or after endUs, and wrote
// nothing. One script on the key, so nothing comes between the
// check, the write and the read-back (a PTTL read apart from its GET
// could find the key gone between them).
func (l *Limiter) setOwn(ctx context.Context, key, value string, endUs int64, length time.Duration, tryEndUs int64) (own bool, left time.Duration, err error) {
	n, err := setUntil.Run(ctx, l.rdb, []string{key}, value, endUs, length.Milliseconds(), tryEndUs).Int64()
	switch {
	case err != nil:
		return false, 0, err
	case n == setLapsed:
		return false, 0, ErrLapsed
	case n == setLate:
		return false, 0, errLate
	case n == setNotOurs:
		return false, 0, nil // another value, or not a string
	case n < 0:
		return true, -1, nil // ours, with no end
	}
	return true, time.Duration(n) * time.Millisecond, nil
}

// setOwnAs is setOwn for a's try under ctx: until a's end, refused once
// the try's deadline has passed by Redis's clock (tryEnd); after such a
// refusal (errLate) a's clock reading is dropped, for the next try to read
// it again.
func (l *Limiter) setOwnAs(ctx context.Context, key, value string, length time.Duration, a *Attempt) (own bool, left time.Duration, err error) {
	own, left, err = l.setOwn(ctx, key, value, a.endUs, length, tryEnd(ctx, a))
	if errors.Is(err, errLate) {
		a.clockUs = 0
	}
	return own, left, err
}

const (
	setLapsed  = -3
	setNotOurs = -4
	setLate    = -5
)

// setUntil writes ARGV[1] at KEYS[1] until ARGV[2] (µs of Redis's TIME),
// for at most ARGV[3] ms, unless the key exists: the milliseconds it has
// left then, or -3 with nothing written if that time has come, or -5 if
// ARGV[4] (µs; 0: none), its try's deadline, has. A key there
// holding ARGV[1] is this write's, sent before: the milliseconds it has
// left (-1: no end). Another value, or a key of another type
// (WRONGTYPE): -4; any other refusal of the GET (an ACL's NOPERM) is
// Redis's error, not "banned already". Effects replication (the default
// since Redis 5, asked for before it) carries the SET's PX, not the TIME
// read. PX is given as a string ('%d'): Redis 7.2.0 to 7.2.4 wrote some
// whole Lua numbers in exponent form (redis/redis#13113).
var setUntil = redis.NewScript(`
if redis.replicate_commands then redis.replicate_commands() end
local v = redis.pcall('GET', KEYS[1])
if type(v) == 'table' then
  if v.err and string.sub(v.err, 1, 9) == 'WRONGTYPE' then return -4 end
  return redis.error_reply(v.err or 'ERR GET failed')
end
if v then
  if v ~= ARGV[1] then return -4 end
  return redis.call('PTTL', KEYS[1])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local try = tonumber(ARGV[4])
if try and try > 0 and now > try then return -5 end
local left = math.floor((tonumber(ARGV[2]) - now) / 1000)
left = math.min(left, tonumber(ARGV[3]))
if left <= 0 then return -3 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', string.format('%d', left))
return left`)

// Debt is how many failures value's count in scope holds in Redis now, in
// failures not refilled yet (a fraction: part of one refilled), read with
// Redis's own clock on the key's own node: redis_rate's GCRA keeps the
// count as a theoretical arrival time (rate: key, seconds from 2017-01-01
// by Redis's TIME), one failure a fail_window. 0 for none, or for a value
// that is no count (an operator's stray string: counting it fails naming
// the key).
func (l *Limiter) Debt(ctx context.Context, scope keys.Scope, value string) (float64, error) {
	return l.debt(ctx, rateKey(l.kb.Fail(scope, value)))
}

// ThrottleDebt is Debt for a username's count toward its throttle, given
// in its keys.Tracking form.
func (l *Limiter) ThrottleDebt(ctx context.Context, tracked string) (float64, error) {
	return l.debt(ctx, rateKey(l.kb.ThrottleCountTracked(tracked)))
}

func (l *Limiter) debt(ctx context.Context, key string) (float64, error) {
	s, err := debtScript.Run(ctx, l.rdb, []string{key}).Text()
	if err != nil {
		return 0, fmt.Errorf("ratelimit: read count %s: %w", logval.Quote(key), err)
	}
	secs, err := strconv.ParseFloat(s, 64)
	if err != nil || l.policy.Window <= 0 {
		return 0, nil
	}
	return max(secs/l.policy.Window.Seconds(), 0), nil
}

// debtScript gives how far a redis_rate count's theoretical arrival time
// lies ahead of Redis's clock, in seconds (redis_rate's own epoch and
// units), on the key's node: "0" for no count, or a value that is none.
var debtScript = redis.NewScript(`
local v = tonumber(redis.call('GET', KEYS[1]))
if not v then return '0' end
local t = redis.call('TIME')
return tostring(v - ((tonumber(t[1]) - 1483228800) + tonumber(t[2]) / 1000000))`)

// Reset forgets the failures counted for value in scope (not its offences):
// an operator who lifts an automatic ban early gives the key a full allowance
// again, and the next ban still escalates.
func (l *Limiter) Reset(ctx context.Context, scope keys.Scope, value string) error {
	if err := l.rate.Reset(ctx, l.kb.Fail(scope, value)); err != nil {
		return fmt.Errorf("ratelimit: reset %s: %w", logval.Quote(rateKey(l.kb.Fail(scope, value))), err)
	}
	return nil
}

// Throttle is a username throttle that ThrottleFail wrote: not a ban (no
// block key), a key that refuses the username's attempts from sources it
// never authenticated from, until it expires by itself.
type Throttle struct {
	Username string // as ThrottleFail was given it: in its Tracking form from ThrottleFailTracked
	Key      string // the throttle key written, e.g. guard:throttle:username:bob
	Reason   string
	Duration time.Duration
}

// ThrottleFail counts one failed authentication of username from any
// source, on every broker, with the same shape as Fail: limit failures
// allowed, refilling 1 per Window. The failure that finds the allowance empty
// writes the throttle key (SET NX, so one broker writes it and logs it) for as
// long as the allowance needs to admit one more failure. It returns the
// throttle written, or nil.
func (l *Limiter) ThrottleFail(ctx context.Context, username string, limit int) (*Throttle, error) {
	t, err := l.ThrottleFailTracked(ctx, keys.Tracking(username), limit)
	if t != nil {
		t.Username = username
	}
	return t, err
}

// ThrottleFailTracked is ThrottleFail for a username already in its
// Tracking form (keys.Tracking): the same keys, and a caller that queues
// failures need not keep a username of up to 64 KB to count it.
func (l *Limiter) ThrottleFailTracked(ctx context.Context, tracked string, limit int) (*Throttle, error) {
	return l.ThrottleFailAttempt(ctx, tracked, limit, new(Attempt))
}

// ThrottleFailAttempt is ThrottleFailTracked, resuming a where an earlier
// call with it stopped (see Attempt): a try after an error writes the
// throttle value decided first.
func (l *Limiter) ThrottleFailAttempt(ctx context.Context, tracked string, limit int, a *Attempt) (*Throttle, error) {
	if a.thr == nil {
		lim := redis_rate.Limit{Rate: 1, Burst: limit, Period: l.policy.Window}
		ck := l.kb.ThrottleCountTracked(tracked)
		res, err := l.rate.Allow(ctx, ck, lim)
		if err != nil {
			return nil, fmt.Errorf("ratelimit: count username failure %s: %w", logval.Quote(rateKey(ck)), err)
		}
		if res.Allowed > 0 {
			return nil, nil
		}
		d := max(res.RetryAfter.Truncate(time.Millisecond), time.Second)
		a.thr = &Throttle{
			Username: tracked,
			Key:      l.kb.ThrottleTracked(tracked),
			Duration: d,
			// A random number beside the time names this call's write (setOwn).
			Reason: fmt.Sprintf("%s over %d failed authentications of this username from any source (%d allowed, refilling 1 per %s) (throttle %016x) at %s",
				keys.AutoBanMarker, limit, limit, l.policy.Window, rand.Uint64(), time.Now().UTC().Format(time.RFC3339)),
		}
		a.thrAt = time.Now()
	}
	// As long as the allowance's wait has left from when Redis's clock
	// was read on the throttle key's node (the wait less the time since
	// the count): a later try writes it shorter, and so does Redis if it
	// runs the write late, and none once the wait is over (the allowance
	// admits a failure again).
	t := a.thr
	if err := l.anchor(ctx, t.Key, t.Duration-time.Since(a.thrAt).Truncate(time.Millisecond), a); err != nil {
		return nil, fmt.Errorf("ratelimit: write throttle %s: %w", logval.Quote(t.Key), err)
	}
	sent := time.Now()
	own, left, err := l.setOwnAs(ctx, t.Key, t.Reason, t.Duration, a)
	if !own {
		// Another broker started this episode.
		if err != nil {
			err = fmt.Errorf("ratelimit: write throttle %s: %w", logval.Quote(t.Key), err)
		}
		return nil, err
	}
	if left >= 0 {
		t.Duration = left - time.Since(sent) // from before the send: never past Redis's end
	}
	t.Duration = max(t.Duration, time.Millisecond)
	return t, nil
}

// Ban is an automatic ban that Fail wrote.
type Ban struct {
	Scope    keys.Scope
	Value    string
	Key      string // the block key written, e.g. guard:block:ip:192.0.2.7
	Reason   string // the value stored at Key; starts with keys.AutoBanMarker
	Offence  int    // 1 for the first ban of this key
	Duration time.Duration
	Expires  time.Time // by the local clock, when the ban was written
}

// String describes the ban for logs. The value is client-supplied, so it is
// quoted and, past 200 bytes, cut with a note of its full length; Key, which
// embeds the value, is left out.
func (b Ban) String() string {
	return fmt.Sprintf("automatic ban of %s %s for %s until %s (offence %d)",
		b.Scope, logval.Quote(b.Value), b.Duration,
		b.Expires.UTC().Format(time.RFC3339), b.Offence)
}

// rateKey is the key redis_rate keeps a count under: its own prefix
// (unexported in redis_rate v10: "rate:") before the name it is given.
func rateKey(name string) string { return "rate:" + name }
