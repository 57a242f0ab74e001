package plugin

import (
	"context"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/ratelimit"
)

// refusedCounter refuses each key's count, and the throttle's, twice before
// it runs (a dial refused, as while Redis restarts), and keeps the time of
// each try.
type refusedCounter struct {
	fakeCounter
	mu    sync.Mutex
	seen  map[string]int
	tries []time.Time
}

func (r *refusedCounter) refuse(what string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tries = append(r.tries, time.Now())
	if r.seen == nil {
		r.seen = map[string]int{}
	}
	if r.seen[what]++; r.seen[what] <= 2 {
		return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	}
	return nil
}

func (r *refusedCounter) FailAttempt(ctx context.Context, scope keys.Scope, value string, a *ratelimit.Attempt) (*ratelimit.Ban, error) {
	if err := r.refuse(string(scope) + "=" + value); err != nil {
		return nil, err
	}
	return r.fakeCounter.FailAttempt(ctx, scope, value, a)
}

func (r *refusedCounter) ThrottleFailAttempt(ctx context.Context, username string, limit int, a *ratelimit.Attempt) (*ratelimit.Throttle, error) {
	if err := r.refuse("throttle"); err != nil {
		return nil, err
	}
	return r.fakeCounter.ThrottleFailAttempt(ctx, username, limit, a)
}

// One failure is retried for countRetryFor in all, whatever the number of
// keys it counts under and its throttle: the bound the README gives (30 s
// per failure while Redis is down) and that the queue's single worker is
// held for. Here 600 ms, and three keys and a throttle, each refused for
// its first 300 ms of tries (at 0, 100 and 300 ms: the waits double from
// 100 ms): the first key is counted, and the count gives up at the
// failure's deadline. With a deadline per key and one for the throttle
// (before 493a614), each had its own 600 ms: all four were counted, one
// after the other, holding the worker 1.2 s, and in production a failure
// with every scope up to two minutes.
func TestFailureRetriedWithinOneDeadline(t *testing.T) {
	ct := &refusedCounter{}
	var mu sync.Mutex
	downs := 0
	q := &failureQueue{failureDeps: failureDeps{counter: ct, policy: ratelimit.Policy{Limit: 5, Window: time.Minute}, userLimit: 3,
		log: (&logSink{}).log, now: time.Now, down: func(error) { mu.Lock(); downs++; mu.Unlock() },
		listed: func(string, string, time.Time) {}}, retryFor: 600 * time.Millisecond}
	ip := netip.MustParseAddr("192.0.2.9")
	cli := cl(1, ip.String(), "dev-9", "bob", "wrong")
	fk := []failKey{{keys.IP, ip.String()}, {keys.ClientID, "dev-9"}, {keys.Username, "bob"}}

	start := time.Now()
	q.count(newFailure(&cli, ip, fk, true))
	took := time.Since(start)

	ct.mu.Lock()
	defer ct.mu.Unlock()
	require.Equal(t, []string{"ip=192.0.2.9"}, ct.fails, "the first key counted on its third try, the others not tried past the failure's deadline")
	// The deadline, and one short try past it at most.
	assert.Less(t, took, 900*time.Millisecond, "one deadline for the whole failure, %d tries", len(ct.tries))
	assert.Less(t, ct.tries[len(ct.tries)-1].Sub(start), 800*time.Millisecond, "no try long past the deadline")
	assert.Empty(t, ct.throttles, "given up before the throttle")
	mu.Lock()
	assert.Equal(t, 1, downs, "given up once: Redis marked down")
	mu.Unlock()
	assert.EqualValues(t, 1, q.uncounted.Load(), "one failure not counted")
}

// A ban found lapsed (ratelimit.ErrLapsed: its time was over before a try
// could write it) ends the failure's tries at once. Before, it was taken
// for any error past the count and tried again until the failure's
// deadline: each try lapsed again at once, the queue's single worker held
// for the whole countRetryFor (30 s) with the failures behind it waiting,
// and the ban_lapsed line came that late (atk97: 23 s after Redis answered
// again).
func TestLapsedBanEndsItsTries(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	kb := keys.Builder{Prefix: "guard:"}
	p := ratelimit.Policy{Limit: 1, Window: time.Minute, BanTime: 300 * time.Millisecond, BanMax: time.Hour}
	direct := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { direct.Close() })
	_, err := ratelimit.New(direct, kb, p).Fail(ctx, keys.IP, "192.0.2.79") // the allowance spent
	require.NoError(t, err)
	// Every SET of the ban cut before Redis reads it; no resend of go-redis's own.
	cut := redis.NewClient(&redis.Options{Addr: testenv.ClosingProxy(t, r.Addr, "(ban ", false), MaxRetries: -1})
	t.Cleanup(func() { cut.Close() })
	ls := &logSink{}
	q := &failureQueue{failureDeps: failureDeps{counter: ratelimit.New(cut, kb, p), policy: p, userLimit: 3,
		log: ls.log, now: time.Now, down: func(error) {}, listed: func(string, string, time.Time) {}}, retryFor: 5 * time.Second}
	ip := netip.MustParseAddr("192.0.2.79")
	cli := cl(1, ip.String(), "dev", "bob", "wrong")

	start := time.Now()
	q.count(newFailure(&cli, ip, []failKey{{keys.IP, ip.String()}}, false))
	took := time.Since(start)

	assert.Contains(t, ls.all(), "event=ban_lapsed")
	assert.Less(t, took, 1500*time.Millisecond, "ended at the lapse, not at the failure's deadline (5 s)")
	assert.Equal(t, "0", r.CLI("EXISTS", "guard:block:ip:192.0.2.79"), "control: no SET ran")
}
