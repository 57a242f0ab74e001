package plugin

import (
	"context"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/ratelimit"
)

// failure is one failed authentication, waiting to be counted.
type failure struct {
	clientID    string
	ip          netip.Addr
	username    string
	hasUsername bool
	keys        []failKey // the keys it counts under, one per fail scope
	knownUser   bool      // the username exists: its failures count toward its throttle
}

// failureQueue counts failed authentications off the broker thread: the
// failing client is refused whatever the count says, so nothing on the
// broker thread needs to wait for it. The queue is bounded; when a flood
// outruns Redis the excess is dropped and the drop is logged.
type failureQueue struct {
	g       *Guard
	ch      chan failure
	dropped atomic.Int64
}

const failureQueueSize = 4096

func newFailureQueue(g *Guard) *failureQueue {
	q := &failureQueue{g: g, ch: make(chan failure, failureQueueSize)}
	g.spawn("failure counting", q.run)
	return q
}

func (q *failureQueue) add(f failure) {
	select {
	case q.ch <- f:
	default:
		q.dropped.Add(1)
	}
}

func (q *failureQueue) run() {
	report := time.NewTicker(10 * time.Second)
	defer report.Stop()
	for {
		select {
		case <-q.g.stop:
			return
		case f := <-q.ch:
			q.countSafely(f)
		case <-report.C:
			if n := q.dropped.Swap(0); n > 0 {
				q.g.log(LevelWarning, fmt.Sprintf("mosquitto-guard: %d failed authentications not counted: the counting queue was full", n))
			}
		}
	}
}

// banned puts an automatic ban into the local replica at once, and tells
// the other brokers' replicas, for Redis without keyspace notifications.
func (g *Guard) banned(ban *ratelimit.Ban) {
	if g.replica != nil {
		_ = g.replica.Put(ban.Key, ban.Reason, ban.Expires)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = g.store.PublishChange(ctx, ban.Key)
}

// countSafely counts f; a panic is logged and the worker goes on.
func (q *failureQueue) countSafely(f failure) {
	defer func() {
		if r := recover(); r != nil {
			q.g.log(LevelError, fmt.Sprintf("mosquitto-guard: internal error counting a failure: %v", r))
		}
	}()
	q.count(f)
}

// count records f under every key it counts under, and toward its
// username's throttle, and logs any ban or throttle.
func (q *failureQueue) count(f failure) {
	g := q.g
	for _, k := range f.keys {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		ban, err := g.counter.Fail(ctx, k.scope, k.value)
		cancel()
		if err != nil {
			g.health.down(err)
			return
		}
		if ban != nil {
			g.banned(ban)
			c := Client{ClientID: f.clientID, Username: f.username, HasUsername: f.hasUsername}
			g.log(LevelWarning, fmt.Sprintf("mosquitto-guard: banned %s=%s: %s; last %s rule=%s origin=auto expires=%s offence=%d",
				k.scope, quote(k.value), g.cfg.Policy.Rule(), describeClient(c, f.ip),
				quote(ban.Key), expiry(g.now(), ban.Duration), ban.Offence))
		}
	}
	if f.knownUser && g.cfg.UsernameFailLimit > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		th, err := g.counter.ThrottleFail(ctx, f.username, g.cfg.UsernameFailLimit)
		cancel()
		if err != nil {
			g.health.down(err)
			return
		}
		if th != nil {
			g.throttled(th)
		}
	}
}

// throttled puts a new username throttle into the local replica and tells
// the other brokers, and logs the start of the episode (once, on the broker
// that wrote it).
func (g *Guard) throttled(th *ratelimit.Throttle) {
	expires := g.now().Add(th.Duration)
	if g.replica != nil {
		_ = g.replica.Put(th.Key, th.Reason, expires)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_ = g.store.PublishChange(ctx, th.Key)
	cancel()
	g.log(LevelWarning, fmt.Sprintf("mosquitto-guard: throttling username=%s: over %d failed authentications of it from any source (%d allowed, refilling 1 per %s); until %s its attempts from sources it never authenticated from are refused unchecked rule=%s",
		quote(th.Username), g.cfg.UsernameFailLimit, g.cfg.UsernameFailLimit, g.cfg.Policy.Window, expiry(g.now(), th.Duration), RuleUsernameThrottled))
}
