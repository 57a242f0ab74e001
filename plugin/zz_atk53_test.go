package plugin

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/ratelimit"
)

// atk53: a README audit (the README as the product's contract, commit
// 648f3ea). Each test quotes the claim it checks.

// Was a DEFECT of the README (fixed there): it said "deny: refuse every
// client meanwhile (within 1 s of Redis not answering, hung or down)" and
// "a Redis that stops answering ... is noticed within 700 ms", but the
// health probe's deadline is max(redis_timeout, 500 ms)
// (plugin/health.go), and redis_timeout may be up to 10 s: with
// redis_timeout 3s a hung Redis is seen after about 3.2 s, and a CONNECT
// 1.5 s into the hang is let in. The README now gives that bound:
// redis_timeout + 200 ms when redis_timeout is above 500 ms.
func TestAtk53DenyWithinTheProbesBoundUnderALongerRedisTimeout(t *testing.T) {
	g, r, _, lines := revGuard(t, 1, map[string]string{
		"redis_unavailable": "deny", "redis_timeout": "3s", "clientid_conflict": "off"})
	t.Cleanup(func() { _ = r.Signal(syscall.SIGCONT) }) // before the guard's Close
	require.Equal(t, Allow, g.Authenticate(cl(1, "192.0.2.1", "dev-1", "u0", "pw")).Result)

	require.NoError(t, r.Signal(syscall.SIGSTOP))
	hung := time.Now()
	seen := time.Duration(0)
	for time.Since(hung) < 6*time.Second {
		if !g.health.up() {
			seen = time.Since(hung)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("hung Redis seen after %v; lines: %d unreachable", seen, countLines(lines(), "unreachable"))
	require.NotZero(t, seen, "never seen down")
	assert.LessOrEqual(t, seen, 3*time.Second+200*time.Millisecond+300*time.Millisecond,
		"README: with redis_timeout 3s a hung Redis is noticed within 3.2 s (300 ms slack for the test)")
	assert.Greater(t, seen, time.Second, "the probe waits redis_timeout, as the README says: not flapping on a slow Redis")
	d := g.Authenticate(cl(2, "192.0.2.2", "dev-2", "u0", "pw"))
	assert.Equal(t, RuleRedisUnavailable, d.Rule, "refused once seen")
}

// HOLDS (control). The same with the default redis_timeout (100ms): the
// hung Redis is seen within 700 ms and the CONNECT is refused.
func TestAtk53DenyWithin1sOfAHungRedisDefaultTimeout(t *testing.T) {
	g, r, _, _ := revGuard(t, 1, map[string]string{"redis_unavailable": "deny", "clientid_conflict": "off"})
	t.Cleanup(func() { _ = r.Signal(syscall.SIGCONT) })
	require.Equal(t, Allow, g.Authenticate(cl(1, "192.0.2.1", "dev-1", "u0", "pw")).Result)
	require.NoError(t, r.Signal(syscall.SIGSTOP))
	hung := time.Now()
	require.Eventually(t, func() bool { return !g.health.up() }, 2*time.Second, 5*time.Millisecond)
	t.Logf("hung Redis seen after %v", time.Since(hung))
	assert.Less(t, time.Since(hung), time.Second)
	d := g.Authenticate(cl(2, "192.0.2.2", "dev-2", "u0", "pw"))
	assert.Equal(t, RuleRedisUnavailable, d.Rule)
}

// Was a DEFECT of the README (fixed there): Metrics said
// "`mosquitto_guard_kicks_total` | | connections disconnected because a ban
// matched them while connected, or at first sight on an identity listener". The kicks of a password file read late
// after a SIGHUP (rule=user-changed, no ban) go through the same
// Guard.kick (plugin/userreload.go:219), which counts them
// (plugin/kicks.go:180, g.metrics.kicked): a dashboard reading the counter
// as "bans of connected clients" counts password-file changes.
func TestAtk53KicksTotalCountsUserChangedKicks(t *testing.T) {
	cfg, err := config.Parse(map[string]string{"password_file": passwdFile(t)})
	require.NoError(t, err)
	cfg.MetricsAddr = "127.0.0.1:0"
	var kr kickRecorder
	ls := &logSink{}
	g, err := NewWith(cfg, Output{Log: ls.log, Kick: kr.kick}, Deps{Store: newFakeStore(), Counter: &fakeCounter{}})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	require.Equal(t, Allow, g.Authenticate(cl(1, "192.0.2.1", "dev-alice", "alice", "alice-pw")).Result)

	// What kickChangedUsers does once a late file removed alice (as in
	// TestReloadOfALargePasswordFileHoldsNoBrokerThread, end to end).
	g.scanConns(false, func(lc *liveConn) bool { return lc.username() == "alice" },
		func(c []*liveConn) { g.kick(RuleUserChanged, false, c) })
	g.scanDone()
	require.Equal(t, []string{"dev-alice"}, kr.all())
	require.Contains(t, ls.all(), "rule=user-changed")
	assert.Equal(t, 1.0, sample(t, g.metrics.reg, "mosquitto_guard_kicks_total"),
		"README: kicks_total counts every event=kicked, rule=user-changed included")
}

// panicCounter panics when it counts a failure.
type panicCounter struct{ fakeCounter }

func (p *panicCounter) FailAttempt(context.Context, keys.Scope, string, *ratelimit.Attempt) (*ratelimit.Ban, error) {
	panic(errors.New("atk53 boom"))
}

// DEFECT. README, Log lines: "Beside the events, two plain lines concern
// the plugin itself: `mosquitto-guard: internal error in <where>: <the
// panic's value>` (error level) when a callback or a background task of the
// plugin panicked". The failure-counting worker's recovered panic is
// written "mosquitto-guard: internal error counting a failure: ..."
// (plugin/failures.go:192), without "in <where>:"; so are the password
// file's read (userreload.go:177), its kicks (userreload.go:228), the known
// sources' rewrite (known.go:857), the relist (relist.go:80) and the
// conflict tracker's (conflicts/tracker.go:640, 649).
func TestAtk53InternalErrorLineShape(t *testing.T) {
	cfg, err := config.Parse(map[string]string{"password_file": passwdFile(t)})
	require.NoError(t, err)
	ls := &logSink{}
	g, err := NewWith(cfg, Output{Log: ls.log}, Deps{Store: newFakeStore(), Counter: &panicCounter{}})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	assert.Equal(t, Deny, g.Authenticate(cl(1, "192.0.2.1", "dev-1", "alice", "wrong")).Result)
	require.Eventually(t, func() bool { return strings.Contains(ls.all(), "atk53 boom") }, 5*time.Second, 10*time.Millisecond)
	var line string
	for _, l := range strings.Split(ls.all(), "\n") {
		if strings.Contains(l, "atk53 boom") {
			line = l
		}
	}
	t.Logf("%s", line)
	assert.True(t, strings.HasPrefix(line, "mosquitto-guard: internal error in "),
		"README: a background task's panic is logged as `mosquitto-guard: internal error in <where>: <the panic's value>`")
}

// DEFECT. README, Reloads (line 1286-1291): "mosquitto-guard recognises
// these re-checks: a refusal then is logged but never counted toward bans,
// and a pass admits nothing. ... The re-check refuses by operators' bans
// only: automatic bans do not kick (below) ... its refusals are logged with
// `reauth=true`." Under redis_unavailable deny with Redis down, the
// re-check of a connected client is refused with rule=redis-unavailable
// (so Mosquitto drops every connected client at a SIGHUP while Redis is
// down), and that refusal is logged without reauth=true
// (plugin/connect.go:59-60 passes false, not reauth).
func TestAtk53ReCheckRefusalWhileRedisDownIsLoggedAsReauth(t *testing.T) {
	g, st, _, ls := newGuard(t, map[string]string{"redis_unavailable": "deny"})
	require.Equal(t, Allow, g.Authenticate(cl(1, "192.0.2.1", "dev-1", "alice", "alice-pw")).Result)
	st.mu.Lock()
	st.down = true
	st.mu.Unlock()
	require.Eventually(t, func() bool { return !g.health.up() }, 3*time.Second, 5*time.Millisecond)
	d := g.Reauthenticate(cl(1, "192.0.2.1", "dev-1", "alice", "alice-pw"))
	var line string
	for _, l := range strings.Split(ls.all(), "\n") {
		if strings.Contains(l, "event=refused") {
			line = l
		}
	}
	t.Logf("re-check: %v %q; line: %s", d.Result, d.Rule, line)
	assert.NotEqual(t, Deny, d.Result, "README: the re-check refuses by operators' bans only")
	if d.Result == Deny {
		assert.Contains(t, line, "reauth=true", "README: the re-check's refusals are logged with reauth=true")
	}
}

// Was a DEFECT of the README (fixed there): "Background work (failure
// counting, client-ID tracking, the replica, known sources, the health
// probe) runs on a second Redis client". The health probe asks the broker
// thread's client (plugin/guard.go, probe: g.store.Ping), whose waits it
// stands for; the README now says so. Here: the broker thread's store down
// is Redis down; the background store down alone is not.
func TestAtk53HealthProbeRunsOnTheBrokerThreadsClient(t *testing.T) {
	for _, which := range []string{"broker thread's", "background"} {
		cfg, err := config.Parse(map[string]string{"password_file": passwdFile(t)})
		require.NoError(t, err)
		fg, bg := newFakeStore(), newFakeStore()
		g, err := NewWith(cfg, Output{Log: func(Level, string) {}}, Deps{Store: fg, Background: bg, Counter: &fakeCounter{}})
		require.NoError(t, err)
		require.True(t, g.health.up())
		down := fg
		if which == "background" {
			down = bg
		}
		down.mu.Lock()
		down.down = true
		down.mu.Unlock()
		time.Sleep(600 * time.Millisecond) // three probes
		assert.Equal(t, which == "background", g.health.up(), "the %s store down", which)
		g.Close()
	}
}
