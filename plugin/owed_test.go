package plugin

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/ratelimit"
)

// owedGuard is a Guard on a real redis-server, whose failures of one
// source ip are made while Redis is hung (SIGSTOP), n of them, and which
// sees Redis answer again.
func owedGuard(t *testing.T, opts map[string]string, fail func(g *Guard)) (*Guard, *testenv.Redis, *logSink) {
	t.Helper()
	r := testenv.StartRedis(t)
	o := map[string]string{"redis_addr": r.Addr, "password_file": passwdFile(t), "fail_limit": "2", "fail_window": "3s",
		"ban_time": "10s", "fail_scopes": "ip"}
	for k, v := range opts {
		o[k] = v
	}
	cfg, err := config.Parse(o)
	require.NoError(t, err)
	ls := &logSink{}
	g, err := New(cfg, Output{Log: ls.log})
	require.NoError(t, err)
	t.Cleanup(g.Close)

	require.NoError(t, r.Process.Signal(syscall.SIGSTOP))
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			_ = r.Process.Signal(syscall.SIGCONT)
		}
	})
	require.Eventually(t, func() bool { return strings.Contains(ls.all(), "unreachable") }, 3*time.Second, 10*time.Millisecond,
		"control: the hung Redis seen down")
	fail(g)
	require.NoError(t, r.Process.Signal(syscall.SIGCONT))
	resumed = true
	require.Eventually(t, func() bool { return strings.Contains(ls.all(), "is back") }, 3*time.Second, 10*time.Millisecond)
	return g, r, ls
}

// Failures this broker counted while Redis did not answer are counted in
// Redis when it answers again. Before, they were counted on this broker
// only: its own count then let the source check one password per
// fail_window, the rate at which Redis's allowance refills, so Redis's
// count never went over and the source was never banned however long it
// guessed (atk97: a guesser whose first burst fell in a 1 s Redis stall,
// then one guess every 0.2 s for 30 s: 13 passwords checked, no ban; with
// no stall, 6 checked and two bans).
func TestFailuresDuringAnOutageCountWhenRedisIsBack(t *testing.T) {
	_, r, ls := owedGuard(t, nil, func(g *Guard) {
		for i := range 3 {
			assert.Equal(t, Deny, g.Authenticate(cl(uintptr(1+i), "192.0.2.80", fmt.Sprintf("a%d", i), "alice", "bad")).Result)
		}
		// Control: this broker's own count now refuses before the password.
		d := g.Authenticate(cl(9, "192.0.2.80", "a9", "alice", "bad"))
		assert.Equal(t, RuleFailLimit, d.Rule)
	})
	require.Eventually(t, func() bool { return r.CLI("EXISTS", "guard:block:ip:192.0.2.80") == "1" }, 5*time.Second, 20*time.Millisecond,
		"the outage's failures banned the source once counted: %s", ls.all())
	require.Eventually(t, func() bool { return strings.Contains(ls.all(), "event=banned") }, 2*time.Second, 10*time.Millisecond)
	assert.Equal(t, 1, strings.Count(ls.all(), "event=banned"))
	assert.Contains(t, ls.all(), `ip=192.0.2.80`)
	assert.Equal(t, "1", r.CLI("GET", "guard:offences:ip:192.0.2.80"))
}

// Only what this broker's count has not refilled yet is counted: failures
// of an outage longer than their window are not counted again when it
// ends, and a source under its limit is not banned by being counted late.
func TestOwedFailuresOnlyWhatIsNotRefilled(t *testing.T) {
	_, r, ls := owedGuard(t, map[string]string{"fail_window": "1s", "username_fail_limit": "0"}, func(g *Guard) {
		for i := range 3 {
			assert.Equal(t, Deny, g.Authenticate(cl(uintptr(1+i), "192.0.2.81", fmt.Sprintf("a%d", i), "alice", "bad")).Result)
		}
		assert.Equal(t, Deny, g.Authenticate(cl(5, "192.0.2.82", "b", "alice", "bad")).Result)
		time.Sleep(3500 * time.Millisecond) // 192.0.2.81's three failures refilled
		assert.Equal(t, Deny, g.Authenticate(cl(6, "192.0.2.82", "b", "alice", "bad")).Result)
	})
	// Its count in Redis lasts a window (1 s): looked for at once.
	assert.Eventually(t, func() bool { return r.CLI("EXISTS", "rate:guard:fail:ip:192.0.2.82") == "1" }, time.Second, 5*time.Millisecond,
		"the failure not refilled is counted: %s", ls.all())
	assert.Equal(t, "0", r.CLI("EXISTS", "rate:guard:fail:ip:192.0.2.81"), "the refilled ones not")
	assert.Contains(t, ls.all(), "of 2 keys and usernames")
	time.Sleep(time.Second)
	assert.Equal(t, "0", r.CLI("EXISTS", "guard:block:ip:192.0.2.81"), "refilled before Redis was back: %s", ls.all())
	assert.Equal(t, "0", r.CLI("EXISTS", "guard:block:ip:192.0.2.82"), "under its limit")
	assert.NotContains(t, ls.all(), "event=banned")
}

// The same for a username's throttle: failures of it from any source,
// counted here alone during an outage, are counted toward its throttle in
// Redis when it is back, which throttles it on every broker.
func TestOwedFailuresCountTowardTheThrottle(t *testing.T) {
	_, r, ls := owedGuard(t, map[string]string{"username_fail_limit": "2", "fail_limit": "5"}, func(g *Guard) {
		for i := range 3 {
			ip := fmt.Sprintf("192.0.2.%d", 90+i)
			assert.Equal(t, Deny, g.Authenticate(cl(uintptr(1+i), ip, "a", "alice", "bad")).Result)
		}
	})
	require.Eventually(t, func() bool { return r.CLI("EXISTS", "guard:throttle:username:alice") == "1" }, 5*time.Second, 20*time.Millisecond,
		"throttled once counted: %s", ls.all())
	require.Eventually(t, func() bool { return strings.Contains(ls.all(), "event=throttled") }, 2*time.Second, 10*time.Millisecond)
	assert.NotContains(t, ls.all(), "event=banned", "no source over its own limit")
}

// Failures the counting queue dropped (a flood outran Redis) are held and
// counted later (the queue's next report, here called at once), as those
// of an outage. Before, they were reported as not counted and never were:
// each source's count in Redis short of this broker's own, which gates it
// to the rate Redis's allowance refills at, so that Redis never banned it.
func TestDroppedFailuresAreCountedLater(t *testing.T) {
	ct := &fakeCounter{gate: make(chan struct{})}
	cfg, err := config.Parse(map[string]string{"password_file": passwdFile(t), "fail_scopes": "ip", "username_fail_limit": "0"})
	require.NoError(t, err)
	ls := &logSink{}
	g, err := NewWith(cfg, Output{Log: ls.log}, Deps{Store: newFakeStore(), Counter: ct})
	require.NoError(t, err)
	released := false
	t.Cleanup(func() {
		if !released {
			close(ct.gate)
		}
		g.Close()
	})

	// The worker held at its first failure, the queue filled, and 50 more.
	n := failureQueueSize + 1 + 50
	for i := range n {
		ip := fmt.Sprintf("10.%d.%d.%d", i>>16, (i>>8)&255, i&255)
		require.Equal(t, Deny, g.Authenticate(cl(uintptr(1+i), ip, "a", "alice", "bad")).Result)
	}
	require.EqualValues(t, 0, g.failures.dropped.Load(), "none reported lost: held")
	require.False(t, g.owed.empty(), "control: the queue was full, and the rest held")
	close(ct.gate)
	released = true
	g.replayOwed()
	assert.Eventually(t, func() bool { return len(ct.counted()) == n }, 10*time.Second, 10*time.Millisecond)
	require.Equal(t, n, len(ct.counted()), "every failure counted")
	assert.Contains(t, ct.counted(), fmt.Sprintf("ip=10.%d.%d.%d", (n-1)>>16, ((n-1)>>8)&255, (n-1)&255), "the last dropped one too")
	assert.Contains(t, ls.all(), "counting in redis the failed authentications of 50 keys and usernames")
}

// A count Redis refused with a reply (NOPERM, OOM, a script's error) is not
// held: it would be refused again, and each replay would mark Redis down
// and back, a loop at the health probe's pace.
func TestRefusedCountIsNotHeld(t *testing.T) {
	ct := &flakyCounter{errs: []error{redisErr("NOPERM this user has no permissions to run the 'evalsha' command")}}
	cfg, err := config.Parse(map[string]string{"password_file": passwdFile(t), "fail_scopes": "ip", "username_fail_limit": "0"})
	require.NoError(t, err)
	ls := &logSink{}
	g, err := NewWith(cfg, Output{Log: ls.log}, Deps{Store: newFakeStore(), Counter: ct})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	assert.Equal(t, Deny, g.Authenticate(cl(1, "192.0.2.85", "a", "alice", "bad")).Result)
	require.Eventually(t, func() bool { return strings.Contains(ls.all(), "is back") }, 2*time.Second, 5*time.Millisecond,
		"control: marked down by the refusal, and back: %s", ls.all())
	g.replayOwed()
	time.Sleep(300 * time.Millisecond)
	assert.Equal(t, 1, ct.tries(), "not tried again")
	assert.True(t, g.owed.empty())
}

// A failure whose count timed out, though Redis ran it (its reply came
// 2.5 s late, past countTimeout), is given up on and held, and its
// reconcile counts nothing more: Redis's count already has it. Counting
// the held failures again instead (ad038b5) counted it twice: a ban one
// failure early, and in a hang one more for each countTimeout of it (a
// review of ad038b5).
func TestHeldFailureRedisRanIsNotCountedTwice(t *testing.T) {
	r := testenv.StartRedis(t)
	proxy := testenv.DelayingProxyN(t, r.Addr, "rate:guard:fail:ip:192.0.2.86", 2500*time.Millisecond, 1)
	cfg, err := config.Parse(map[string]string{"redis_addr": proxy, "password_file": passwdFile(t), "fail_limit": "3",
		"fail_window": "1m", "fail_scopes": "ip", "username_fail_limit": "0"})
	require.NoError(t, err)
	ls := &logSink{}
	g, err := New(cfg, Output{Log: ls.log})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	direct := ratelimit.New(redis.NewClient(&redis.Options{Addr: r.Addr}), keys.Builder{Prefix: "guard:"}, cfg.Policy)
	// redis_rate's script in Redis's cache: the delayed request is the
	// EVALSHA that runs it, not one answered NOSCRIPT.
	_, err = direct.Fail(context.Background(), keys.IP, "198.51.100.1")
	require.NoError(t, err)

	assert.Equal(t, Deny, g.Authenticate(cl(1, "192.0.2.86", "a", "alice", "bad")).Result)
	require.Eventually(t, func() bool { return strings.Contains(ls.all(), "counting in redis") }, 6*time.Second, 10*time.Millisecond,
		"control: given up on (timed out), held, and reconciled: %s", ls.all())
	time.Sleep(300 * time.Millisecond)
	d, err := direct.Debt(context.Background(), keys.IP, "192.0.2.86")
	require.NoError(t, err)
	assert.InDelta(t, 1, d, 0.2, "counted once")
}

// A count refused unrun (LOADING: a restart, READONLY: a failover) until
// the failure's deadline is held, as one that got no answer: it did not
// run. Before, any reply was taken for a refusal that would come again
// (NOPERM), and not held (a review of ad038b5).
func TestUnrunRefusalIsHeld(t *testing.T) {
	ct := &flakyCounter{}
	for range 50 {
		ct.errs = append(ct.errs, redisErr("LOADING Redis is loading the dataset in memory"))
	}
	var held []failure
	q := &failureQueue{failureDeps: failureDeps{counter: ct, policy: ratelimit.Policy{Limit: 5, Window: time.Minute}, userLimit: 3,
		log: (&logSink{}).log, now: time.Now, down: func(error) {}, listed: func(string, string, time.Time) {},
		owe: func(f failure) bool { held = append(held, f); return true }}, retryFor: 400 * time.Millisecond}
	ip := netip.MustParseAddr("192.0.2.87")
	cli := cl(1, ip.String(), "dev", "bob", "wrong")
	q.count(newFailure(&cli, ip, []failKey{{keys.IP, ip.String()}}, false))
	require.Len(t, held, 1)
	assert.Equal(t, []failKey{{keys.IP, "192.0.2.87"}}, held[0].keys)
	assert.Zero(t, q.uncounted.Load())
}

// An operator's lift of a key's ban leaves nothing of it to reconcile:
// the lift resets this broker's own count, which the reconcile brings
// Redis's up to, so failures held before the lift cannot ban the key again,
// even those a replay has already taken (a review of ad038b5: a replay
// waiting for room in the queue landed after the lift's reset).
func TestLiftLeavesNothingToReconcile(t *testing.T) {
	ct := &fakeCounter{}
	cfg, err := config.Parse(map[string]string{"password_file": passwdFile(t), "fail_scopes": "ip", "username_fail_limit": "0"})
	require.NoError(t, err)
	g, err := NewWith(cfg, Output{Log: (&logSink{}).log}, Deps{Store: newFakeStore(), Counter: ct})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	hold := func(ip string) {
		a := netip.MustParseAddr(ip)
		c := cl(1, ip, "a", "alice", "bad")
		for range 3 {
			g.local.Fail("ip:"+ip, g.now())
		}
		require.True(t, g.owed.add(newFailure(&c, a, []failKey{{keys.IP, ip}}, false)))
	}
	hold("192.0.2.88")
	hold("192.0.2.89") // control
	taken := g.owed.take()
	require.Equal(t, 2, taken.len())
	g.liftedEarly(keys.IP, "192.0.2.88")
	taken.each(func(f failure) bool { g.failures.ch <- f; return true })
	require.Eventually(t, func() bool { return len(ct.counted()) >= 3 }, 2*time.Second, 5*time.Millisecond)
	time.Sleep(100 * time.Millisecond)
	assert.Equal(t, []string{"ip=192.0.2.89", "ip=192.0.2.89", "ip=192.0.2.89"}, ct.counted(), "the control's three, none of the lifted key's")
}

func TestOwedCount(t *testing.T) {
	for _, c := range []struct {
		local, inRedis float64
		want           int
	}{
		{0, 0, 0}, {3, 0, 3}, {3, 3.2, 0}, {2.6, 0, 3}, {2.4, 0, 2}, {3, 1, 2}, {0.3, 0, 0}, {1, 5, 0},
	} {
		assert.Equal(t, c.want, owedCount(c.local, c.inRedis), "%v", c)
	}
}

// reconcileQueue is a failure queue on a real limiter whose own count is
// loc, as the guard builds it, without its worker: the test runs count.
func reconcileQueue(t *testing.T, p ratelimit.Policy) (*failureQueue, *ratelimit.Local, *ratelimit.Limiter, *testenv.Redis) {
	t.Helper()
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })
	lim := ratelimit.New(rdb, keys.Builder{Prefix: "guard:"}, p)
	loc := ratelimit.NewLocal(p, 0)
	q := &failureQueue{failureDeps: failureDeps{counter: lim, policy: p, userLimit: 3, log: (&logSink{}).log, now: time.Now,
		down: func(error) {}, listed: func(string, string, time.Time) {},
		localDebt: func(k failKey) float64 { return loc.Debt(k.local(), time.Now()) }}}
	return q, loc, lim, r
}

// A failure waiting in the queue behind a reconcile of its key is counted
// once: the reconcile leaves it to its own entry. Before, the reconcile
// read this broker's count, which has it, and counted it, and its own
// entry counted it again: a source at its limit (3 failures, fail_limit 3)
// was banned (a review of 88b62c2).
func TestFailureQueuedBehindAReconcileCountsOnce(t *testing.T) {
	p := ratelimit.Policy{Limit: 3, Window: time.Minute, BanTime: time.Minute}
	q, loc, lim, r := reconcileQueue(t, p)
	ip := netip.MustParseAddr("192.0.2.95")
	k := failKey{keys.IP, ip.String()}
	c := cl(1, ip.String(), "a", "alice", "bad")
	for range 3 { // two while Redis was down, one since
		loc.Fail(k.local(), time.Now())
	}
	third := newFailure(&c, ip, []failKey{k}, false)
	q.pending.change(third, 1) // queued (failureQueue.add), behind the reconcile
	q.count(failure{keys: []failKey{k}, reconcile: true, ip: ip})
	q.count(third)
	d, err := lim.Debt(context.Background(), keys.IP, ip.String())
	require.NoError(t, err)
	assert.InDelta(t, 3, d, 0.1, "three failures, three counted")
	assert.Equal(t, "0", r.CLI("EXISTS", "guard:block:ip:192.0.2.95"), "at its limit, not over it")
}

// A reconcile counts at most the limit and one, and stops at a count over
// the limit that finds the key banned already: its round trips are
// bounded whatever this broker's count says (a review of 88b62c2: a
// username with 5 000 failures of its known sources made 4 997 calls).
func TestReconcileIsBounded(t *testing.T) {
	p := ratelimit.Policy{Limit: 3, Window: time.Minute, BanTime: time.Minute}
	q, loc, lim, r := reconcileQueue(t, p)
	ip := netip.MustParseAddr("192.0.2.96")
	k := failKey{keys.IP, ip.String()}
	for range 50 {
		loc.Fail(k.local(), time.Now())
	}
	r.CLI("SET", "guard:block:ip:192.0.2.96", "operator's", "EX", "60")
	for range 3 { // Redis's count at the limit
		_, err := lim.Fail(context.Background(), keys.IP, ip.String())
		require.NoError(t, err)
	}
	ct := &callCounter{FailCounter: q.counter}
	q.counter = ct
	q.count(failure{keys: []failKey{k}, reconcile: true, ip: ip})
	assert.Equal(t, 1, ct.calls, "over at once, and banned already: stop")

	// A counter that never says over: the cap alone.
	fc := &fakeCounter{}
	q.counter = fc
	q.count(failure{keys: []failKey{k}, reconcile: true, ip: ip})
	assert.Len(t, fc.counted(), 4, "at most the limit and one")
}

// callCounter counts FailAttempt calls, and reads Redis's counts as the
// limiter it wraps does.
type callCounter struct {
	FailCounter
	calls int
}

func (c *callCounter) FailAttempt(ctx context.Context, scope keys.Scope, value string, a *ratelimit.Attempt) (*ratelimit.Ban, error) {
	c.calls++
	return c.FailCounter.FailAttempt(ctx, scope, value, a)
}

func (c *callCounter) Debt(ctx context.Context, scope keys.Scope, value string) (float64, error) {
	return c.FailCounter.(debtReader).Debt(ctx, scope, value)
}

func (c *callCounter) ThrottleDebt(ctx context.Context, tracked string) (float64, error) {
	return c.FailCounter.(debtReader).ThrottleDebt(ctx, tracked)
}

// Past the owedMax keys held with their last failure, keys are still held
// (their last address alone), up to as many as this broker's own count
// keeps: a source its count gates is never left out of the reconcile.
// Before, the 4 097th source of an outage was never banned however long it
// went on guessing at its one check per fail_window (atk98: 4 500 sources,
// exactly 4 096 banned; the last, 16 passwords checked in 40 s, no ban).
func TestOwedPastItsFullEntriesStillReconciled(t *testing.T) {
	o := newOwedFailures()
	ip := netip.MustParseAddr("10.0.0.1")
	for i := range owedMax + 10 {
		k := failKey{keys.IP, fmt.Sprintf("10.1.%d.%d", i>>8, i&255)}
		require.True(t, o.add(failure{ip: ip, keys: []failKey{k}, clientID: "dev"}), "held %d", i)
	}
	taken := o.take()
	require.Equal(t, owedMax+10, taken.len())
	full, bare := 0, 0
	taken.each(func(f failure) bool {
		require.True(t, f.reconcile)
		require.Len(t, f.keys, 1)
		if f.clientID == "dev" {
			full++
		} else {
			bare++
		}
		return true
	})
	assert.Equal(t, owedMax, full)
	assert.Equal(t, 10, bare)
	assert.True(t, o.empty())
}

// The spilled keys' stated cost: about 150 bytes an address's key, map
// and strings (the README's bound: 9 MB for 61 440 addresses, under 28 MB
// for keys of up to 450 bytes each).
func TestOwedSpillBytesPerKey(t *testing.T) {
	o := newOwedFailures()
	ip := netip.MustParseAddr("10.0.0.1")
	for i := range owedMax { // the full entries first, not measured
		o.add(failure{ip: ip, keys: []failKey{{keys.IP, fmt.Sprintf("10.2.%d.%d", i>>8, i&255)}}})
	}
	n := owedKeysMax - owedMax
	ks := make([]failKey, n) // the keys' strings, as failKeys makes them, counted too
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range n {
		ks[i] = failKey{keys.IP, fmt.Sprintf("10.%d.%d.%d", 3+i>>16, (i>>8)&255, i&255)}
		o.add(failure{ip: ip, keys: ks[i : i+1]})
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
	t.Logf("%.0f bytes a spilled address's key (%d keys)", per, n)
	assert.Less(t, per, 200.0)
	assert.False(t, o.add(failure{ip: ip, keys: []failKey{{keys.IP, "10.99.0.1"}}}), "past owedKeysMax: not held")
	runtime.KeepAlive(ks)
}

// A ban a reconcile of a spilled key wrote names the address and says that
// no client strings were kept; it does not claim the client had no
// username (a review of ee3a01c).
func TestBareReconcileBanLine(t *testing.T) {
	p := ratelimit.Policy{Limit: 1, Window: time.Minute, BanTime: time.Minute}
	q, loc, _, _ := reconcileQueue(t, p)
	ls := &logSink{}
	q.log = ls.log
	ip := netip.MustParseAddr("192.0.2.97")
	k := failKey{keys.IP, ip.String()}
	for range 2 {
		loc.Fail(k.local(), time.Now())
	}
	q.count(failure{ip: ip, keys: []failKey{k}, reconcile: true, bare: true})
	assert.Contains(t, ls.all(), "event=banned ip=192.0.2.97")
	assert.Contains(t, ls.all(), "client=not_kept")
	assert.NotContains(t, ls.all(), "username=<none>")
}

// While Redis is down, a failure the worker takes is held at once, to be
// reconciled when Redis answers, not tried for 30 s: a replay of tens of
// thousands of keys meeting Redis down again held the single worker for
// days of tries (a review of ee3a01c).
func TestFailureHeldAtOnceWhileRedisIsDown(t *testing.T) {
	ct := &refusedCounter{}
	var held []failure
	q := &failureQueue{failureDeps: failureDeps{counter: ct, policy: ratelimit.Policy{Limit: 5, Window: time.Minute}, userLimit: 3,
		log: (&logSink{}).log, now: time.Now, down: func(error) {}, listed: func(string, string, time.Time) {},
		up: func() bool { return false }, owe: func(f failure) bool { held = append(held, f); return true }}}
	ip := netip.MustParseAddr("192.0.2.98")
	cli := cl(1, ip.String(), "dev", "bob", "wrong")
	start := time.Now()
	q.count(newFailure(&cli, ip, []failKey{{keys.IP, ip.String()}}, true))
	q.count(failure{ip: ip, keys: []failKey{{keys.IP, ip.String()}}, reconcile: true})
	assert.Less(t, time.Since(start), 500*time.Millisecond) // a try would wait seconds: ct.tries says it was not made
	assert.Empty(t, ct.tries, "not tried")
	assert.Len(t, held, 2)
}

// While Redis answers, what the queue dropped is reconciled at its next
// report (every 10 s) with nothing else to prompt it: no health change
// comes. Without the report's replay the dropped failures waited for the
// next outage's end, and never came while Redis stayed up.
func TestDroppedFailuresReconciledAtTheReport(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the queue's 10 s report")
	}
	ct := &fakeCounter{gate: make(chan struct{})}
	cfg, err := config.Parse(map[string]string{"password_file": passwdFile(t), "fail_scopes": "ip", "username_fail_limit": "0"})
	require.NoError(t, err)
	g, err := NewWith(cfg, Output{Log: (&logSink{}).log}, Deps{Store: newFakeStore(), Counter: ct})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	n := failureQueueSize + 1 + 5
	for i := range n {
		ip := fmt.Sprintf("10.%d.%d.%d", i>>16, (i>>8)&255, i&255)
		require.Equal(t, Deny, g.Authenticate(cl(uintptr(1+i), ip, "a", "alice", "bad")).Result)
	}
	require.False(t, g.owed.empty(), "control: some held")
	close(ct.gate)
	assert.Eventually(t, func() bool { return len(ct.counted()) == n }, 13*time.Second, 20*time.Millisecond)
	require.Equal(t, n, len(ct.counted()), "every failure counted by the report's replay")
}

// A failure is counted on this broker and in the queue's pending counts as
// one step for a reconcile's reading of them (ownOf): before, a reading
// falling between the two saw this broker's count with the failure and the
// queue's without, and the reconcile counted in Redis a failure its own
// entry counts too (a review of ee3a01c). Here the reading is made from
// inside the broker's counting: it waits for the step to end.
func TestReconcileReadsAFailureCountedAndQueuedAsOne(t *testing.T) {
	p := ratelimit.Policy{Limit: 3, Window: time.Minute, BanTime: time.Minute}
	q, loc, _, _ := reconcileQueue(t, p)
	q.ch = make(chan failure, 1)
	ip := netip.MustParseAddr("192.0.2.97")
	k := failKey{keys.IP, ip.String()}
	c := cl(1, ip.String(), "a", "alice", "bad")
	read := make(chan float64, 1)
	q.add(newFailure(&c, ip, []failKey{k}, false), func() {
		loc.Fail(k.local(), time.Now())
		go func() { read <- q.ownOf(k) }()
		select {
		case v := <-read: // read inside the step
			read <- v
		case <-time.After(200 * time.Millisecond): // waiting for it to end
		}
	})
	assert.InDelta(t, 0, <-read, 0.01, "the failure is this broker's and the queue's: nothing owed")
	assert.InDelta(t, 0, q.ownOf(k), 0.01)
}

// A reconcile compares Redis's count with the mean of this broker's count
// read before and after Redis's answer: both refill meanwhile, and Redis
// reads its count at some moment in between, near the start when the
// reply is what is slow and near the end when the request is. Each half
// alone is wrong by the slow part over fail_window: before alone, a
// request held 0.7 of fail_window counts a failure Redis has (a false
// ban at the limit); after alone, a reply held as long misses one owed (a
// guesser's half failure, enough to evade Redis's ban: owedCount).
func TestReconcileReadsThisBrokersCountAroundRedis(t *testing.T) {
	p := ratelimit.Policy{Limit: 5, Window: 2 * time.Second, BanTime: time.Minute}
	const slow = 1400 * time.Millisecond // 0.7 of fail_window, under countTimeout
	kb := keys.Builder{Prefix: "guard:"}
	for _, c := range []struct {
		name        string
		ip          string
		owed        int
		slowRequest bool
	}{
		{"request held, nothing owed", "192.0.2.98", 0, true},
		{"reply held, one owed", "192.0.2.99", 1, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			q, loc, lim, r := reconcileQueue(t, p)
			k := failKey{keys.IP, c.ip}
			trigger := "rate:guard:fail:ip:" + c.ip
			for range 3 + c.owed {
				loc.Fail(k.local(), time.Now())
			}
			for range 3 {
				_, err := lim.Fail(context.Background(), keys.IP, c.ip)
				require.NoError(t, err)
			}
			addr := testenv.DelayingProxyN(t, r.Addr, trigger, slow, 1)
			if c.slowRequest {
				addr, _ = testenv.HoldingProxy(t, r.Addr, trigger, slow)
			}
			rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, ReadTimeout: 5 * time.Second})
			t.Cleanup(func() { rdb.Close() })
			q.counter = ratelimit.New(rdb, kb, p)
			_, err := ratelimit.New(rdb, kb, p).Debt(context.Background(), keys.IP, "198.51.100.1") // its script loaded
			require.NoError(t, err)

			start := time.Now()
			q.count(failure{keys: []failKey{k}, reconcile: true, ip: netip.MustParseAddr(c.ip)})
			require.GreaterOrEqual(t, time.Since(start), slow, "control: the read was slow")
			inRedis, err := lim.Debt(context.Background(), keys.IP, c.ip)
			require.NoError(t, err)
			assert.InDelta(t, loc.Debt(k.local(), time.Now()), inRedis, 0.5, "Redis's count, reconciled, is this broker's")
		})
	}
}
