package plugin

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logline"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/ratelimit"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// failure is one failed authentication, waiting to be counted. It holds
// no string of the client's: a CONNECT's client ID and username are slices
// of one allocation of up to 128 KB (cgo's connectStrings.get), which any
// slice of either, kept, would keep whole. A failure keeps copies of what
// its count and its lines need, at most failureHeld bytes (newFailure).
type failure struct {
	ip netip.Addr
	// clientID and username are what the ban and throttle lines show of
	// them (logline.Kept: at most logval.Max+1 bytes), and their lengths.
	clientID, username           string
	clientIDBytes, usernameBytes int
	hasUsername                  bool
	userTracked                  string    // keys.Tracking(username), counted toward its throttle
	keys                         []failKey // the keys it counts under, one per fail scope
	throttle                     bool      // count it toward the username's throttle
	// reconcile: not one failure, but the keys (and username) of failures
	// Redis was not told of (owedFailures): count there what its counts
	// lack of this broker's own (owedOf).
	reconcile bool
	// bare: a reconcile of a key held past owedMax, with no client strings
	// kept: its ban's line names the address alone.
	bare bool
	// userLocal is the username as this broker's own count keeps it
	// (ratelimit.LocalKey), for a reconcile of its throttle's count.
	userLocal string
	// reset, when set, is not a failure: an automatic ban of this key was
	// lifted early, and its count is reset here, in order with the failures
	// queued before and after it (see Guard.liftedEarly).
	reset *failKey
}

// newFailure is the failure of c, from ip, counted under fk (failKeys,
// whose client ID and username values are replaced by copies) and toward
// the username's throttle when throttle is set. Its strings are its own,
// in one allocation: the client ID and the username each as its Tracking
// form when that is the value itself (at most keys.TrackingMax bytes), or
// else its first logval.Max+1 bytes beside the hashed form (keys.Tracking's
// own allocation, 71 bytes). So a queued failure holds at most
// failureHeld bytes beyond its slot in the queue, however long c's strings.
func newFailure(c *Client, ip netip.Addr, fk []failKey, throttle bool) failure {
	f := failure{ip: ip, clientIDBytes: len(c.ClientID), usernameBytes: len(c.Username), hasUsername: c.HasUsername,
		keys: fk, throttle: throttle}
	idK, userK := -1, -1
	var idT, userT string // the Tracking forms, from fk when it has them
	for i, k := range fk {
		switch k.scope {
		case keys.ClientID:
			idK, idT = i, k.value
		case keys.Username:
			userK, userT = i, k.value
		}
	}
	if throttle && c.HasUsername && userK < 0 {
		userT = keys.Tracking(c.Username)
	}
	// What to copy of each: the whole value when a Tracking form is the
	// value itself (the line's part is its start), else the line's part.
	idPart, userPart := logline.Kept(c.ClientID), logline.Kept(c.Username)
	idWhole := idT == c.ClientID // "" too: an empty slice of c's strings points into them
	if idWhole {
		idPart = c.ClientID
	}
	userWhole := userT == c.Username
	if userWhole {
		userPart = c.Username
	}
	var b strings.Builder // one allocation; never a slice of c's strings, as idPart+userPart may be
	b.Grow(len(idPart) + len(userPart))
	b.WriteString(idPart)
	b.WriteString(userPart)
	own := b.String()
	idOwn, userOwn := own[:len(idPart)], own[len(idPart):]
	f.clientID, f.username = logline.Kept(idOwn), logline.Kept(userOwn)
	if idWhole {
		idT = idOwn
	}
	if userWhole {
		userT = userOwn
	}
	if idK >= 0 {
		fk[idK].value = idT
	}
	if userK >= 0 {
		fk[userK].value = userT
	}
	f.userTracked = userT
	if throttle && c.HasUsername {
		// As this broker's own count keeps it: the username itself (then
		// its copy here) or its hash.
		if f.userLocal = ratelimit.LocalKey(c.Username); f.userLocal == c.Username {
			f.userLocal = userOwn
		}
	}
	return f
}

// failureHeld bounds the bytes a queued failure holds beyond its slot in
// the queue (newFailure): its strings (2 × (keys.TrackingMax bytes, or
// logval.Max+1 and a 71-byte hashed form, each in a size class)), its keys
// (3 of them, and an IP's or a network's text), rounded up.
const failureHeld = 1024

// failureQueue counts failed authentications off the broker thread: the
// failing client is refused whatever the count says, so nothing on the
// broker thread needs to wait for it. The queue is bounded; when a flood
// outruns Redis the excess is dropped and the drop is logged.
type failureQueue struct {
	failureDeps
	ch        chan failure
	dropped   atomic.Int64  // not queued: the queue was full
	uncounted atomic.Int64  // queued, but Redis did not count them
	lostTotal atomic.Uint64 // both, since start, for the metrics
	retryFor  time.Duration // 0: countRetryFor (tests make it shorter)
	pending   pendingCounts // the failures waiting in ch, by key and username
}

// failureDeps are what the failure worker needs of the guard.
type failureDeps struct {
	counter   FailCounter
	policy    ratelimit.Policy // fail_limit and the rest: named in the ban lines
	userLimit int              // username_fail_limit
	log       Logger
	now       func() time.Time
	down      func(error) // Redis failed to answer (health)
	// listed puts a ban or throttle this broker wrote into the local replica
	// and tells the other brokers.
	listed func(key, reason string, expires time.Time)
	spawn  func(name string, fn func()) // a goroutine the guard's Close waits for
	stop   <-chan struct{}              // closed when the guard closes
	m      *guardMetrics                // nil: no metrics
	// owe holds a failure Redis was not told of (the queue full, or given
	// up on), to be counted in it later (owedFailures); false: not held
	// (its bound reached). nil: none held.
	owe func(f failure) bool
	// replay counts the failures held, when Redis answers (every report).
	replay func()
	// up reports whether Redis answers (health); nil: taken as up.
	up func() bool
	// localDebt and userDebt read this broker's own counts (of a key, of a
	// username by its ratelimit.LocalKey): what a reconcile brings Redis's
	// up to.
	localDebt func(k failKey) float64
	userDebt  func(userLocal string) float64
}

// failureQueueSize bounds the failures queued: 4096 of them, each its
// slot in the queue (~140 bytes, allocated with it) and at most
// failureHeld (1 KB) of its own (newFailure), however long the client's
// strings: under 5 MB in all while Redis hangs.
const failureQueueSize = 4096

// newFailureQueue starts the failure worker.
func newFailureQueue(d failureDeps) *failureQueue {
	q := &failureQueue{failureDeps: d, ch: make(chan failure, failureQueueSize)}
	d.spawn("failure counting", q.run)
	return q
}

// add queues f, counted on this broker by own (its local counts) and as
// waiting in the queue in one step under the pending counts' lock, which a
// reconcile reads both under (ownOf): a reconcile falling between the two
// read this broker's count with f and the queue's without, and counted f,
// which its own entry then counted again (a review of ee3a01c).
func (q *failureQueue) add(f failure, own func()) {
	q.pending.raise(f, own)
	select {
	case q.ch <- f:
	default:
		q.pending.change(f, -1)
		// Counted later (the next report's replay) rather than never: a
		// flood's failures dropped here, counted on this broker alone,
		// would let its count gate each source to the rate Redis's
		// allowance refills at, and Redis would never ban it (owedFailures).
		if q.owe != nil && q.owe(f) {
			return
		}
		q.dropped.Add(1)
		q.lostTotal.Add(1)
	}
}

// addReset queues the reset of k's count behind the failures already queued.
// It never waits (it runs on the replica's goroutine, which must keep
// applying changes): with the queue full, during a flood, it resets at once,
// and a failure of k already queued may then land after the reset.
func (q *failureQueue) addReset(k failKey) {
	select {
	case q.ch <- failure{reset: &k}:
	default:
		q.spawn("failure count reset", func() { q.resetCount(k) })
	}
}

func (q *failureQueue) run() {
	report := time.NewTicker(10 * time.Second)
	defer report.Stop()
	for {
		select {
		case <-q.stop:
			return
		case f := <-q.ch:
			q.countSafely(f)
		case <-report.C:
			if q.replay != nil {
				q.replay()
			}
			if n := q.dropped.Swap(0); n > 0 {
				q.log(LevelWarning, fmt.Sprintf("mosquitto-guard: %d failed authentications not counted: the counting queue was full", n))
			}
			if n := q.uncounted.Swap(0); n > 0 {
				q.log(LevelWarning, fmt.Sprintf("mosquitto-guard: %d failed authentications not counted in redis, or under one of their keys: it did not answer, or answered about that key (counted on this broker)", n))
			}
		}
	}
}

// countSafely counts f; a panic is logged and the worker goes on.
func (q *failureQueue) countSafely(f failure) {
	defer func() {
		if r := recover(); r != nil {
			q.log(LevelError, fmt.Sprintf("mosquitto-guard: internal error in failure counting: %v", r))
		}
	}()
	q.count(f)
}

// countTimeout bounds one attempt at counting one key of a failure. It
// runs on the background client, so a Redis stall shorter than this (a
// BGSAVE fork, a failover) delays the count rather than losing it.
const countTimeout = 2 * time.Second

// countRetryFor bounds how long one failure is retried while Redis refuses
// the command before running it (down, restarting, loading): the worker
// waits meanwhile and the queue (failureQueueSize) holds the failures that
// follow.
const countRetryFor = 30 * time.Second

// count records f under every key it counts under, and toward its
// username's throttle, and logs any ban or throttle. An attempt that surely
// did not run in Redis is retried (see retry); one that may have run is
// not: counting it twice could ban on fewer failures than fail_limit allows.
// An error does not always say which: go-redis sends a command again
// after a lost reply, and its last error may then be a refused dial though
// Redis ran the first send. So one failure's tries share a
// ratelimit.Attempt: a try goes on from where the last stopped, a count
// that answered is not counted again, and a ban or throttle is written with
// the value decided first, which the try knows for its own when it finds it
// there (atk95b: a new value each try took the first try's ban for another
// broker's; it held unlogged, its offence uncounted).
func (q *failureQueue) count(f failure) {
	if f.reset != nil {
		q.resetCount(*f.reset)
		return
	}
	retryFor := countRetryFor
	if q.retryFor > 0 {
		retryFor = q.retryFor
	}
	deadline := time.Now().Add(retryFor) // one failure's, all its keys' and its throttle's tries
	if !f.reconcile {
		q.pending.change(f, -1) // counted in Redis from here on (owedOf)
	}
	if q.up != nil && !q.up() && q.owe != nil && q.owe(f) {
		// Redis down: held to be reconciled when it answers, at once,
		// where tries of 30 s each would hold the single worker (a replay
		// of 65 536 keys meeting Redis down again: days) and drop the
		// failures behind it into the holding anyway (a review).
		return
	}
keys:
	for i, k := range f.keys {
		times := 1
		if f.reconcile {
			var err error
			if times, err = q.owedOf(deadline, k); err != nil {
				if store.IsKeyReply(err) {
					q.lost(err)
					continue keys
				}
				q.giveUp(err, f, i)
				return
			}
		}
		for range times {
			var ban *ratelimit.Ban
			var at ratelimit.Attempt // one failure's tries go on from each other
			err := q.retry(deadline, &at, func(ctx context.Context) (err error) {
				ban, err = q.counter.FailAttempt(ctx, k.scope, k.value, &at)
				if ban != nil {
					return nil // written; an offence left uncounted only shortens the next ban
				}
				return err
			})
			if ban != nil {
				q.banned(ban, f, k)
				continue keys // banned: what is left of its count changes nothing
			}
			if err == nil && at.Resumable() {
				continue keys // over, and banned already (another broker, an operator): the same
			}
			if errors.Is(err, ratelimit.ErrLapsed) {
				q.lapsed(err, f)
				continue keys
			}
			if err != nil {
				if store.IsKeyReply(err) {
					// About this key alone (an operator's stray value under
					// it): the failure's other keys and its username's
					// throttle still count (atk69).
					q.lost(err)
					continue keys
				}
				q.giveUp(err, f, i)
				return
			}
		}
	}
	if !f.throttle || !f.hasUsername {
		return
	}
	times := 1
	if f.reconcile {
		var err error
		if times, err = q.owedOfUser(deadline, f); err != nil {
			q.giveUp(err, f, len(f.keys))
			return
		}
	}
	for range times {
		var th *ratelimit.Throttle
		var at ratelimit.Attempt
		err := q.retry(deadline, &at, func(ctx context.Context) (err error) {
			th, err = q.counter.ThrottleFailAttempt(ctx, f.userTracked, q.userLimit, &at)
			return err
		})
		if errors.Is(err, ratelimit.ErrLapsed) {
			q.lapsed(err, f)
			return
		}
		if err != nil {
			q.giveUp(err, f, len(f.keys))
			return
		}
		if th != nil {
			q.throttled(th, f)
			return
		}
		if at.Resumable() {
			return // over, and throttled already
		}
	}
}

// debtReader reads how many failures a count in Redis holds
// (ratelimit.Limiter); a FailCounter without it is taken to hold none.
type debtReader interface {
	Debt(ctx context.Context, scope keys.Scope, value string) (float64, error)
	ThrottleDebt(ctx context.Context, tracked string) (float64, error)
}

// owedOf is how many failures to count in Redis under k, held since Redis
// was not told of some (owedFailures): as many as bring its count there up
// to this broker's own (localDebt), rounded to the nearest. Read, not
// remembered, so counting again what Redis already has never happens: a
// failure whose count timed out, that a hung Redis then ran when it
// resumed, is in both already; and a key whose ban an operator lifted
// here has no count left of its own (Guard.liftedEarly resets it).
//
// This broker's count is taken without the failures still waiting in the
// queue (pending), which their own entries count in Redis (a review of
// 88b62c2: a failure queued behind a reconcile was counted by both, and a
// source at its limit banned), and as the mean of its reads before and
// after Redis's answer, Redis's count being read in between (both refill
// alike meanwhile). At most the limit and one: what bans, and a bound on
// the round trips a reconcile makes whatever this broker's count says.
func (q *failureQueue) owedOf(deadline time.Time, k failKey) (int, error) {
	return q.owedAgainst(deadline, q.policy.Limit+1, func() float64 {
		return q.ownOf(k)
	}, func(ctx context.Context, dr debtReader) (float64, error) { return dr.Debt(ctx, k.scope, k.value) })
}

// owedOfUser is owedOf for f's username's count toward its throttle.
func (q *failureQueue) owedOfUser(deadline time.Time, f failure) (int, error) {
	return q.owedAgainst(deadline, q.userLimit+1, func() float64 {
		return q.ownOfUser(f)
	}, func(ctx context.Context, dr debtReader) (float64, error) { return dr.ThrottleDebt(ctx, f.userTracked) })
}

// ownOf is this broker's own count of k less the failures of k waiting in
// the queue, read under the lock add counts a failure in both under.
func (q *failureQueue) ownOf(k failKey) float64 {
	if q.localDebt == nil {
		return 0
	}
	q.pending.mu.Lock()
	defer q.pending.mu.Unlock()
	return q.localDebt(k) - float64(q.pending.keys[k])
}

// ownOfUser is ownOf for f's username's count toward its throttle.
func (q *failureQueue) ownOfUser(f failure) float64 {
	if q.userDebt == nil {
		return 0
	}
	q.pending.mu.Lock()
	defer q.pending.mu.Unlock()
	return q.userDebt(f.userLocal) - float64(q.pending.users[f.userTracked])
}

// owedAgainst is owedOf's reading: local (this broker's count, less the
// queue's) before and after read (Redis's), their mean against it, at
// most most.
func (q *failureQueue) owedAgainst(deadline time.Time, most int, local func() float64, read func(context.Context, debtReader) (float64, error)) (int, error) {
	before := local()
	var inRedis float64
	if dr, ok := q.counter.(debtReader); ok {
		var at ratelimit.Attempt
		err := q.retry(deadline, &at, func(ctx context.Context) (err error) {
			before = local()
			inRedis, err = read(ctx, dr)
			return err
		})
		if err != nil {
			return 0, err
		}
	}
	return min(owedCount((before+local())/2, inRedis), most), nil
}

// pendingCounts counts the failures waiting in the queue, by key and by
// username (tracked), so that a reconcile does not count them too
// (owedOf). At most one entry per key of a failure queued: failureQueueSize
// failures of up to 3 keys and a username.
type pendingCounts struct {
	mu    sync.Mutex
	keys  map[failKey]int
	users map[string]int
}

// raise runs own (nil: nothing) and adds f to the counts, under one lock
// (failureQueue.add).
func (p *pendingCounts) raise(f failure, own func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if own != nil {
		own()
	}
	p.changeLocked(f, 1)
}

// change adds d of f (a failure, not a reconcile or reset) to the counts.
func (p *pendingCounts) change(f failure, d int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.changeLocked(f, d)
}

func (p *pendingCounts) changeLocked(f failure, d int) {
	if f.reconcile || f.reset != nil {
		return
	}
	if p.keys == nil {
		p.keys, p.users = map[failKey]int{}, map[string]int{}
	}
	for _, k := range f.keys {
		if n := p.keys[k] + d; n > 0 {
			p.keys[k] = n
		} else {
			delete(p.keys, k)
		}
	}
	if f.throttle && f.hasUsername {
		if n := p.users[f.userTracked] + d; n > 0 {
			p.users[f.userTracked] = n
		} else {
			delete(p.users, f.userTracked)
		}
	}
}

// owedCount is how many failures bring a count holding inRedis up to one
// holding local, rounded to the nearest: the two follow the same failures
// at the same refill, so a difference under half a failure is timing (the
// queue counts in Redis after this broker's own count), and half a failure
// short is enough for Redis to ban where this broker's own count refuses:
// the check this broker lets through once its count refills to the limit
// finds Redis's over it.
func owedCount(local, inRedis float64) int {
	return max(int(math.Floor(local-inRedis+0.5)), 0)
}

// retry runs attempt, each try bounded by countTimeout, until it succeeds,
// fails in a way that may have reached Redis, countRetryFor has passed, or
// the guard stops. While Redis refuses, the health probe reports it. Past
// its count (at.Resumable), a try is made
// again after any error but a reply of Redis's own that says it ran or
// will fail again: what is left cannot count twice. at is the tries'
// Attempt.
func (q *failureQueue) retry(deadline time.Time, at *ratelimit.Attempt, attempt func(ctx context.Context) error) error {
	wait := 100 * time.Millisecond
	for {
		// Each try within countTimeout, and within the failure's deadline
		// but for one short try past it (a key after a slow one is tried).
		end, least := time.Now().Add(countTimeout), time.Now().Add(wait)
		if deadline.Before(end) {
			end = deadline
		}
		if end.Before(least) {
			end = least
		}
		ctx, cancel := context.WithDeadline(context.Background(), end)
		err := attempt(ctx)
		cancel()
		// A lapsed ban or throttle is over: trying again lapses again
		// (atk97: the worker held for the whole deadline).
		again := notRun(err) || (at.Resumable() && !store.IsReply(err) && !errors.Is(err, ratelimit.ErrLapsed))
		if err == nil || !again || time.Now().Add(wait).After(deadline) {
			return err
		}
		select {
		case <-q.stop:
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// notRun reports whether err says the command never ran in Redis, so that
// running it again cannot count it twice: the connection was never made
// (dial refused or timed out), no pooled connection was free, or Redis
// refused it unrun (still loading its dataset, a replica, no master, a
// cluster without quorum or moving slots, too many clients).
func notRun(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	if errors.Is(err, redis.ErrPoolTimeout) || errors.Is(err, syscall.ECONNREFUSED) {
		return true
	}
	return store.Unavailable(err)
}

// lapsed says that a ban or throttle a failure went over was not written:
// its time was over before Redis answered. Redis answers now (this try did
// not ask it), so it is not marked down; the failure counts as not counted.
func (q *failureQueue) lapsed(err error, f failure) {
	q.uncounted.Add(1)
	q.lostTotal.Add(1)
	q.log(LevelWarning, clientLine("ban_lapsed", &Client{}, f.ip).Str("error", err.Error()).String())
}

// lost gives up on a failure that could not be counted: Redis is marked
// down (the health probe says when it is back), and the loss is logged with
// the next report of the queue.
func (q *failureQueue) lost(err error) {
	q.down(err)
	q.uncounted.Add(1)
	q.lostTotal.Add(1)
}

// giveUp is lost, for a failure whose keys from the i-th on (and its
// throttle) are held to be reconciled with Redis when it answers again, as
// far as the holding's bound allows. Not when Redis answered and refused
// (NOPERM, OOM, a script error) but for a refusal unrun (LOADING, READONLY,
// MASTERDOWN): it would refuse again, and each replay would mark it down
// and back, a loop at the health probe's pace.
func (q *failureQueue) giveUp(err error, f failure, i int) {
	left := f
	left.keys = f.keys[min(i, len(f.keys)):]
	if q.owe != nil && (!store.IsReply(err) || store.Unavailable(err)) && q.owe(left) {
		q.down(err)
		return
	}
	q.lost(err)
}

// banned spreads an automatic ban this broker wrote, and logs it with the
// failure f that caused it, under its key k.
func (q *failureQueue) banned(ban *ratelimit.Ban, f failure, k failKey) {
	q.listed(ban.Key, ban.Reason, ban.Expires)
	q.m.banned(k.scope)
	// ip is the last failing client's; scope and value name the key banned
	// (an IPv6 network, a client ID, a username: not always that ip).
	// As clientLine and clientFields write them, from what f keeps.
	// Its end in Redis: a later try writes less than its length.
	left := ban.Duration
	if !ban.Expires.IsZero() {
		left = max(min(left, time.Until(ban.Expires)), time.Millisecond)
	}
	l := clientLine("banned", &Client{}, f.ip).Tok("scope", string(k.scope)).Str("rule", ban.Key).Tok("origin", "auto").
		Expires(q.now(), left).Int("offence", int64(ban.Offence))
	switch {
	case f.bare:
		l.Tok("client", "not_kept") // a reconcile past the first owedMax keys held (owedFailures)
	default:
		l.StrKept("client_id", f.clientID, f.clientIDBytes)
		if f.hasUsername {
			l.StrKept("username", f.username, f.usernameBytes)
		} else {
			l.Tok("username", "<none>")
		}
	}
	l.Str("value", k.value).Str("reason", q.policy.Rule())
	q.log(LevelWarning, l.String())
}

// throttled spreads a new username throttle, and logs the start of the
// episode (once, on the broker that wrote it).
func (q *failureQueue) throttled(th *ratelimit.Throttle, f failure) {
	q.listed(th.Key, th.Reason, q.now().Add(th.Duration))
	q.m.throttled()
	// Until it ends, the username's attempts from sources it never
	// authenticated from are refused unchecked.
	q.log(LevelWarning, logline.Event("throttled").Tok("rule", RuleUsernameThrottled).Expires(q.now(), th.Duration).
		Int("limit", int64(q.userLimit)).Dur("window", q.policy.Window).StrKept("username", f.username, f.usernameBytes).
		Str("reason", fmt.Sprintf("over %d failed authentications of it from any source (%d allowed, refilling 1 per %s)", q.userLimit, q.userLimit, q.policy.Window)).String())
}

// resetCount resets k's count in Redis, whose automatic ban was lifted
// early (see Guard.liftedEarly).
func (q *failureQueue) resetCount(k failKey) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := q.counter.Reset(ctx, k.scope, k.value); err != nil {
		q.down(err)
		return
	}
	// Its automatic ban was lifted before its time: its failure count starts again.
	q.log(LevelNotice, logline.Event("auto_ban_lifted").Tok("scope", string(k.scope)).Tok("count", "reset").Str("value", k.value).String())
}
