package e2e

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// atk56: a hostile pass on 7abe520 (the settings check at start) and
// 1ecec4b (the re-check's offline-session match; one cleanup deadline for
// every instance).

// atk56Dial connects id as user from 127.0.56.1 to addr and keeps it open
// until the test ends; it returns the CONNACK code.
func atk56Dial(t *testing.T, addr, id, user, pw string) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: addr, SourceIP: "127.0.56.1", ClientID: id,
		Username: str(user), Password: str(pw)})
	require.NoError(t, err)
	if c != nil {
		t.Cleanup(func() { c.Close() })
	}
	return code
}

// atk56Broker starts a broker with per_listener_settings true and
// listeners listeners, each with the plugin (e's Redis, extra options),
// and returns it and its listeners' addresses.
func atk56Broker(t *testing.T, e *env, listeners int, extra ...string) (*testenv.Mosquitto, []string) {
	t.Helper()
	conf := "per_listener_settings true\nlistener {{PORT}} 127.0.0.1\n" + e.conf(extra...)
	var ports []int
	for i := 1; i < listeners; i++ {
		p := atk54FreePort(t)
		ports = append(ports, p)
		conf += fmt.Sprintf("listener %d 127.0.0.1\n", p) + e.conf(extra...)
	}
	b := startBroker(t, conf)
	addrs := []string{b.Addr}
	for _, p := range ports {
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", p))
	}
	for _, a := range addrs {
		require.NoError(t, b.WaitPort(a, 5*time.Second))
	}
	return b, addrs
}

// HOLDS. README, Redis down: at exit "the plugin's cleanup waits at most
// 1.5 s for background work ... and gives up removing this broker's live
// connections from Redis when Redis does not answer within that bound";
// 1ecec4b: every instance's cleanup shares one deadline (cgo
// cleanupDeadline). With Redis up, every instance of a broker with
// per_listener_settings true (four listeners) still removes its live
// client-ID entries at SIGTERM; and a second broker sharing the Redis
// under clientid_conflict deny then admits those client IDs for another
// principal at once (not after broker_lease).
func TestAtk56StopReapsEveryListenerRedisUp(t *testing.T) {
	e := envWithoutBroker(t)
	a, addrs := atk56Broker(t, e, 4, "auth_opt_clientid_conflict deny")
	e.broker = a
	b, baddrs := atk56Broker(t, e, 1, "auth_opt_clientid_conflict deny")
	var ids []string
	for i, ad := range addrs {
		id := fmt.Sprintf("atk56-reap-%d", i)
		ids = append(ids, id)
		require.EqualValues(t, accepted, atk56Dial(t, ad, id, "alice", "alice-pw"))
	}
	for _, id := range ids {
		e.waitLive(id, 1)
	}
	// control: under deny, bob is refused one of alice's live client IDs
	require.NotEqualValues(t, accepted, atk56Dial(t, baddrs[0], ids[3], "bob", "bob-pw"), "control: deny")

	start := time.Now()
	require.NoError(t, a.Signal(syscall.SIGTERM))
	_, done := a.Wait(8 * time.Second)
	took := time.Since(start)
	require.True(t, done, "broker a did not stop")
	t.Logf("SIGTERM to exit %v; tail:\n%s", took.Round(10*time.Millisecond), atk52Tail(a.Output(), 6))
	for _, id := range ids {
		assert.Equal(t, "0", e.redis.CLI("HLEN", "guard:conn:"+id), "%s: its live entry is left after the stop", id)
	}
	for i, id := range ids {
		assert.EqualValues(t, accepted, atk56Dial(t, baddrs[0], id, "bob", "bob-pw"),
			"broker b refuses bob %s (listener %d of the stopped broker) right after the stop", id, i)
	}
	assert.NotContains(t, a.Output(), "stopping without waiting", "Redis up: nothing left waiting")
	_ = b
}

// DEFECT (false positive; 7abe520; failed 3 of 3 runs). README, Managed Redis: the broker
// stops when "the sentinels monitor no master of that name"; "A Redis
// that does not answer at all is no configuration error: the broker
// starts, and redis_unavailable applies until it answers". Two sentinels:
// the one that monitors the master is down (restarting), the other was
// just started and not yet given SENTINEL MONITOR (here: SENTINEL REMOVE),
// so it answers nil. The master name is right.
// Observed: mosquitto exits at start: "mosquitto-guard: option
// redis_sentinel_master: bad value "mymaster": expected a master name that
// the sentinels at ... monitor (Redis said: redis: all sentinels specified
// in configuration are unreachable: dial tcp ...: connection refused;
// redis: nil)". store/settings.go:81 (errors.Is(err, redis.Nil) on
// go-redis's errors.Join of every sentinel's error: one nil among
// unreachable sentinels is enough).
// Expected: the broker starts (redis_unavailable until a sentinel names
// the master), as it does when every sentinel is down.
func TestAtk56SentinelNilWhileMonitoringSentinelDownStopsBroker(t *testing.T) {
	testenv.Need(t, "mosquitto", "redis-server", "redis-cli", "stdbuf")
	s := testenv.StartSentinel(t, testenv.SentinelOptions{Replicas: 0, Sentinels: 2, Quorum: 1})
	s.Sentinels[1].CLI("SENTINEL", "REMOVE", s.Name)
	s.Sentinels[0].Stop()
	conf := "allow_anonymous false\nauth_plugin " + pluginPath + "\nauth_opt_redis_addr " + s.Addrs +
		"\nauth_opt_redis_sentinel_master " + s.Name + "\n"
	exited, out := atk55Run(t, conf, 3*time.Second)
	line := ""
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "mosquitto-guard: option") {
			line = l
		}
	}
	t.Logf("exited=%v; %s", exited, line)
	assert.False(t, exited, "the right master name, its sentinel down: the broker should start:\n%s", out)
}

// DEFECT (regression with 1ecec4b; failed 3 of 3 runs, both cases;
// passed 3 of 3 with the parent 3199c44's plugin). README, Redis down: at exit "the
// plugin's cleanup waits at most 1.5 s for background work still dialling
// or retrying, and gives up removing this broker's live connections from
// Redis when Redis does not answer within that bound (the broker's lease
// running out clears them on the others)". With per_listener_settings
// true each listener has its own plugin options, its own Redis among them.
// Here the first listener's Redis is down (refusing, or hung), and the
// other listeners' Redis is up and answers at once.
// Observed: the first instance's cleanup uses up the one deadline all
// instances share (cgo/main.go:126 cleanupDeadline, plugin/guard.go:317
// waitGroup to the deadline, then guard.go:327 "ctx.Err() == nil" skips
// the reap): the instances whose Redis is up never remove their live
// client-ID entries, and a second broker on that Redis under
// clientid_conflict deny refuses those client IDs to another principal
// until broker_lease runs out. Before 1ecec4b each instance had its own
// 1.5 s and reaped.
// Expected: an instance whose Redis answers removes its live entries at
// the stop.
func TestAtk56StopOtherListenerRedisDownSkipsReap(t *testing.T) {
	for _, hung := range []bool{false, true} {
		t.Run(fmt.Sprintf("hung=%v", hung), func(t *testing.T) {
			e := envWithoutBroker(t)
			down := testenv.StartRedis(t)
			if hung {
				require.NoError(t, down.Process.Signal(syscall.SIGSTOP))
				t.Cleanup(func() { _ = down.Process.Signal(syscall.SIGCONT) })
			} else {
				down.Stop()
			}
			first := "allow_anonymous false\nauth_plugin " + pluginPath + "\nauth_opt_redis_addr " + down.Addr +
				"\nauth_opt_password_file " + e.passwd + "\nauth_opt_clientid_conflict deny\n"
			conf := "per_listener_settings true\nlistener {{PORT}} 127.0.0.1\n" + first
			var addrs []string
			for range 2 {
				p := atk54FreePort(t)
				addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", p))
				conf += fmt.Sprintf("listener %d 127.0.0.1\n", p) + e.conf("auth_opt_clientid_conflict deny")
			}
			a := startBroker(t, conf)
			for _, ad := range addrs {
				require.NoError(t, a.WaitPort(ad, 5*time.Second))
			}
			b, baddrs := atk56Broker(t, e, 1, "auth_opt_clientid_conflict deny")
			_ = b
			var ids []string
			for i, ad := range addrs {
				id := fmt.Sprintf("atk56-other-%d", i)
				ids = append(ids, id)
				require.EqualValues(t, accepted, atk56Dial(t, ad, id, "alice", "alice-pw"))
				e.waitLive(id, 1)
			}
			start := time.Now()
			require.NoError(t, a.Signal(syscall.SIGTERM))
			_, done := a.Wait(8 * time.Second)
			took := time.Since(start)
			require.True(t, done, "broker a did not stop")
			t.Logf("SIGTERM to exit %v; tail:\n%s", took.Round(10*time.Millisecond), atk52Tail(a.Output(), 6))
			for _, id := range ids {
				assert.Equal(t, "0", e.redis.CLI("HLEN", "guard:conn:"+id), "%s: its live entry (Redis up) is left after the stop", id)
			}
			for _, id := range ids {
				assert.EqualValues(t, accepted, atk56Dial(t, baddrs[0], id, "bob", "bob-pw"),
					"broker b (deny) refuses bob %s right after broker a stopped", id)
			}
		})
	}
}

// atk56ReadyAfter starts a broker whose Redis is r's address and returns
// how long it took to log "mosquitto-guard: ready".
func atk56ReadyAfter(t *testing.T, e *env, extra ...string) time.Duration {
	t.Helper()
	start := time.Now()
	b := startBroker(t, "listener {{PORT}} 127.0.0.1\n"+e.conf(extra...))
	require.True(t, b.WaitOutput("mosquitto-guard: ready", 15*time.Second), "not ready:\n%s", b.Output())
	took := time.Since(start)
	b.Stop()
	return took
}

// HOLDS. README, Redis down: "An unreachable Redis at start does not stop
// the broker (a hung one delays its start by the start checks' bounds:
// 1.5 s, 2 s more with redis_tls)". The broker is ready within about 1.5 s
// more with Redis hung (SIGSTOP) than with Redis refusing.
//
// A start's own time spreads from run to run (300 ms allowed for it), both
// ways: the least difference of up to three pairs of starts is taken, so a
// slow start of the broker with Redis refusing cannot hide a longer check
// (a check of 2 s, or a second check, exceeds 1.8 s in every pair).
func TestAtk56HungRedisStartDelay(t *testing.T) {
	e := envWithoutBroker(t)
	e.redis.Stop()
	e2 := envWithoutBroker(t)
	require.NoError(t, e2.redis.Process.Signal(syscall.SIGSTOP))
	t.Cleanup(func() { _ = e2.redis.Process.Signal(syscall.SIGCONT) })
	least := time.Duration(1<<63 - 1)
	for try := 0; try < 3 && least >= 1800*time.Millisecond; try++ {
		refusing := atk56ReadyAfter(t, e)
		hung := atk56ReadyAfter(t, e2)
		t.Logf("ready after: Redis refusing %v, hung %v", refusing.Round(10*time.Millisecond), hung.Round(10*time.Millisecond))
		least = min(least, hung-refusing)
	}
	assert.Less(t, least, 1800*time.Millisecond, "a hung Redis delays the start by the check's 1.5 s")
}

// DEFECT (failed 3 of 3 runs; older than 7abe520: fails with 3199c44's
// plugin too). README, Managed Redis: redis_password is "never shown"; the
// start check's line quotes "Redis's own words (which never hold the
// password)" (config/managed.go). A Redis that does not know AUTH or HELLO
// (renamed away, as hardening guides suggest for dangerous commands)
// answers "ERR unknown command 'AUTH', with args beginning with: '<pw>'".
// Observed: the broker starts (the answer is no fault CheckSettings knows:
// a false negative too) and logs "mosquitto-guard: redis at ...
// unreachable (store: ping: ERR unknown command 'auth', with args
// beginning with: 'odd-Secret-42')" (plugin/health.go:107 prints Redis's
// error as is).
// Expected: no password in any line.
func TestAtk56RenamedAuthEchoesPassword(t *testing.T) {
	testenv.Need(t, "mosquitto", "redis-server", "redis-cli", "stdbuf")
	r := testenv.StartRedis(t, "--rename-command", "AUTH", "", "--rename-command", "HELLO", "")
	conf := "allow_anonymous false\nauth_plugin " + pluginPath + "\nauth_opt_redis_addr " + r.Addr +
		"\nauth_opt_redis_password odd-Secret-42\n"
	exited, out := atk55Run(t, conf, 2500*time.Millisecond)
	t.Logf("exited=%v; lines with the password: %q", exited, findLine(out, "odd-Secret-42"))
	assert.NotContains(t, out, "odd-Secret-42", "the password in the broker's log")
}
