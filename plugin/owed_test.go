package plugin

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
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
	assert.Contains(t, ls.all(), "counting in redis the 1 failed authentications (1 keys and usernames)")
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
	require.Eventually(t, func() bool { return len(ct.counted()) == n }, 10*time.Second, 10*time.Millisecond,
		"every failure counted: %d of %d", len(ct.counted()), n)
	assert.Contains(t, ct.counted(), fmt.Sprintf("ip=10.%d.%d.%d", (n-1)>>16, ((n-1)>>8)&255, (n-1)&255), "the last dropped one too")
	assert.Contains(t, ls.all(), "counting in redis the 50 failed authentications (50 keys and usernames)")
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
