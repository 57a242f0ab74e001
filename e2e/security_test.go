package e2e

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logline"
	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// countLines counts the broker log lines containing every part.
func (e *env) countLines(parts ...string) int {
	n := 0
	for _, l := range strings.Split(e.broker.Output(), "\n") {
		ok := true
		for _, p := range parts {
			if !strings.Contains(l, p) {
				ok = false
				break
			}
		}
		if ok {
			n++
		}
	}
	return n
}

// waitKey waits until key exists (or, with want false, does not).
func (e *env) waitKey(key string, want bool, d time.Duration) {
	e.t.Helper()
	w := map[bool]string{true: "1", false: "0"}[want]
	eventually(e.t, d, func() bool { return e.redis.CLI("EXISTS", key) == w }, "EXISTS %s is not %s", key, w)
}

// An allow entry on a client ID or a username is a claim: it lifts only bans
// on claims, never an IP or range ban, and its failures are counted (by IP)
// like anyone's. An allow entry on an address is proof and lifts everything.
func TestClaimedAllowIsNotProof(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 3")
	e.redis.CLI("SET", "guard:allow:clientid:plant-gateway", "")
	e.redis.CLI("SET", "guard:allow:username:alice", "")
	e.redis.CLI("SET", "guard:block:ip:127.3.0.1", "scanner")
	e.redis.CLI("SET", "guard:block:clientid:plant-gateway", "would be lifted by the allow entry")
	e.expect(as("127.3.0.1", "other", "bob", "bob-pw"), refused)

	assert.EqualValues(t, refused, e.connect(as("127.3.0.1", "plant-gateway", "bob", "bob-pw")),
		"claiming an allowlisted client ID from a banned IP")
	e.logLine("refused", `client_id="plant-gateway"`, "ip=127.3.0.1", `rule="guard:block:ip:127.3.0.1"`)
	assert.EqualValues(t, accepted, e.connect(as("127.3.0.2", "plant-gateway", "bob", "bob-pw")),
		"the allow entry still lifts the client-ID ban")

	// Guessing under an allowlisted client ID, then username: the source IP is banned.
	for i, c := range []client{
		as("127.3.0.3", "plant-gateway", "bob", "guess"),
		as("127.3.0.4", "dev", "alice", "guess"),
	} {
		for j := 0; j < 10; j++ {
			e.connect(c)
		}
		e.waitKey("guard:block:ip:"+c.ip, true, 3*time.Second)
		assert.EqualValues(t, refused, e.connect(as(c.ip, c.id, *c.user, users[*c.user])), "case %d: banned, right password or not", i)
	}
	assert.LessOrEqual(t, e.countLines("rule=bad-password", "ip=127.3.0.3"), 4, "no more than fail_limit+1 checks")

	// An IP allow entry is proof: it lifts the IP ban, and its failures do not count.
	e.redis.CLI("SET", "guard:allow:ip:127.3.0.1", "the office")
	e.expect(as("127.3.0.1", "other", "bob", "bob-pw"), accepted)
	for j := 0; j < 8; j++ {
		assert.EqualValues(t, refused, e.connect(as("127.3.0.1", "other", "bob", "wrong")))
	}
	assert.EqualValues(t, accepted, e.connect(as("127.3.0.1", "other", "bob", "bob-pw")))
}

// 16 parallel connections from one IP, each guessing: on one broker no more
// than fail_limit+1 passwords are checked before the ban (before: 29).
func TestParallelGuessingBounded(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 5", "auth_opt_ban_time 10m")
	const ip = "127.3.1.1"
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				conn, _, err := mqttc.Dial(ctx, mqttc.Options{Addr: e.broker.Addr, SourceIP: ip,
					ClientID: fmt.Sprintf("g%d-%d", w, i), Username: str("alice"), Password: str(fmt.Sprintf("guess-%d-%d", w, i))})
				cancel()
				if err == nil && conn != nil {
					conn.Close()
				}
			}
		}(w)
	}
	wg.Wait()
	e.waitKey("guard:block:ip:"+ip, true, 3*time.Second)
	time.Sleep(200 * time.Millisecond) // let the log catch up
	checked := e.countLines("refused", "ip="+ip+" ", "rule=bad-password")
	assert.LessOrEqual(t, checked, 6, "passwords checked for one IP with fail_limit 5")
	assert.GreaterOrEqual(t, checked, 5)
}

// fail_limit+1 failures inside one fail_window always ban, however they are
// spread in it (before: 4 failures inside 1 s with fail_limit 3 and
// fail_window 2s did not ban), and the ban line says what the rule is.
func TestFailLimitPlusOneInsideWindowBans(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 3", "auth_opt_fail_window 2s")
	const ip = "127.3.2.1"
	for i := 0; i < 4; i++ {
		if i > 0 {
			time.Sleep(300 * time.Millisecond)
		}
		e.connect(as(ip, "c"+strconv.Itoa(i), "alice", "guess"))
	}
	e.waitKey("guard:block:ip:"+ip, true, 2*time.Second)
	e.logLine("event=banned ip="+ip+" scope=ip", `reason="over 3 failed authentications (3 allowed, refilling 1 per 2s)"`, "origin=auto")
	assert.Contains(t, e.redis.CLI("GET", "guard:block:ip:"+ip), "auto: over 3 failed authentications (3 allowed, refilling 1 per 2s) (offence 1, 10m0s)")
}

// Many IPs each under the per-IP limit, all guessing one username: the
// username is throttled (not banned), its known devices keep connecting,
// sources it never authenticated from are refused unchecked, and the
// throttle lifts by itself.
func TestUsernameThrottle(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 50", "auth_opt_fail_window 3s", "auth_opt_username_fail_limit 5")
	device := as("127.3.3.1", "bob-device", "bob", "bob-pw")
	roaming := as("127.3.3.99", "bob-device", "bob", "bob-pw") // a known client ID from a new IP
	require.EqualValues(t, accepted, e.connect(device))
	eventually(t, 3*time.Second, func() bool { return e.redis.CLI("ZCARD", "guard:known:bob") == "2" }, "known sources recorded")

	for i := 0; i < 40; i++ {
		e.connect(as(fmt.Sprintf("127.3.4.%d", 1+i), "x"+strconv.Itoa(i), "bob", "guess"+strconv.Itoa(i)))
	}
	e.waitKey("guard:throttle:username:bob", true, 2*time.Second)
	assert.Equal(t, "0", e.redis.CLI("EXISTS", "guard:block:username:bob"), "a throttle is not a ban")
	assert.LessOrEqual(t, e.countLines("rule=bad-password", `username="bob"`), 6, "guesses checked from unknown sources: username_fail_limit+1")

	assert.EqualValues(t, refused, e.connect(as("127.3.5.1", "new", "bob", "bob-pw")), "an unknown source, even with the password")
	e.logLine("refused", `username="bob"`, "rule=username-throttled")
	assert.EqualValues(t, accepted, e.connect(device), "the known device")
	assert.EqualValues(t, accepted, e.connect(roaming), "a known client ID from a new IP")
	assert.EqualValues(t, accepted, e.connect(as("127.3.5.2", "a", "alice", "alice-pw")), "other usernames")
	assert.Equal(t, 1, e.countLines("event=throttled", `username="bob"`), "logged once per episode")
	assert.Equal(t, 1, e.countLines("event=refused", "rule=username-throttled"), "refusals logged once per episode")

	e.waitKey("guard:throttle:username:bob", false, 5*time.Second)
	e.expect(as("127.3.5.1", "new", "bob", "bob-pw"), accepted, "the throttle lifts by itself")
}

// A known source on one broker is known on another sharing the Redis.
func TestUsernameThrottleKnownAcrossBrokers(t *testing.T) {
	a, b := twoBrokers(t, "auth_opt_fail_limit 50", "auth_opt_fail_window 5s", "auth_opt_username_fail_limit 3")
	device := as("127.3.6.1", "fleet-17", "bob", "bob-pw")
	require.EqualValues(t, accepted, a.connect(device))
	eventually(t, 3*time.Second, func() bool { return a.redis.CLI("ZCARD", "guard:known:bob") == "2" }, "known sources recorded")
	for i := 0; i < 10; i++ {
		a.connect(as(fmt.Sprintf("127.3.7.%d", 1+i), "x", "bob", "guess"))
	}
	a.waitKey("guard:throttle:username:bob", true, 2*time.Second)
	b.expect(as("127.3.6.2", "other", "bob", "bob-pw"), refused, "the throttle reached broker B")
	b.expect(device, accepted, "the device succeeded on A: known on B")
}

// Lifting an automatic ban early (redis-cli DEL, as guardctl unban does)
// resets the key's failure count; the offence count stays.
func TestLiftedBanResetsFailures(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 3", "auth_opt_ban_time 1m", "auth_opt_ban_max 1h")
	const ip = "127.3.8.1"
	key := "guard:block:ip:" + ip
	for i := 0; i < 4; i++ {
		e.connect(as(ip, "c", "alice", "guess"))
	}
	e.waitKey(key, true, 2*time.Second)
	e.redis.CLI("DEL", key)
	e.logLine("event=auto_ban_lifted scope=ip", `value="`+ip+`"`)
	e.expect(as(ip, "c", "alice", "alice-pw"), accepted)
	for i := 0; i < 3; i++ {
		assert.EqualValues(t, refused, e.connect(as(ip, "c", "alice", "guess")))
	}
	time.Sleep(300 * time.Millisecond)
	assert.Equal(t, "0", e.redis.CLI("EXISTS", key), "a full allowance after the lift")
	e.connect(as(ip, "c", "alice", "guess"))
	e.waitKey(key, true, 2*time.Second)
	assert.Contains(t, e.redis.CLI("GET", key), "(offence 2, 2m0s)", "escalation still works")
}

// redis_unavailable deny: a Redis that hangs (SIGSTOP) refuses every client
// within 1 s, logged once; answering again, clients are let in within 1 s.
func TestRedisHungDeny(t *testing.T) {
	e := newEnv(t, "auth_opt_redis_unavailable deny")
	c := as("127.3.9.1", "dev", "alice", "alice-pw")
	require.EqualValues(t, accepted, e.connect(c))
	require.NoError(t, e.redis.Signal(syscall.SIGSTOP))
	stopped := time.Now()
	t.Cleanup(func() { _ = e.redis.Signal(syscall.SIGCONT) })
	var refusedAfter time.Duration
	for time.Since(stopped) < 3*time.Second {
		if e.connect(c) == refused {
			refusedAfter = time.Since(stopped)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	require.NotZero(t, refusedAfter, "still accepting 3 s after Redis hung")
	assert.Less(t, refusedAfter, 1200*time.Millisecond, "deny mode within 1 s (+ test slack)")
	for i := 0; i < 20; i++ {
		assert.EqualValues(t, refused, e.connect(c))
	}
	assert.Equal(t, 1, e.countLines("unreachable", "redis_unavailable deny"), "said once")

	require.NoError(t, e.redis.Signal(syscall.SIGCONT))
	cont := time.Now()
	var acceptedAfter time.Duration
	for time.Since(cont) < 3*time.Second {
		if e.connect(c) == accepted {
			acceptedAfter = time.Since(cont)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	require.NotZero(t, acceptedAfter, "still refusing 3 s after Redis answered again")
	assert.Less(t, acceptedAfter, 1200*time.Millisecond)
	t.Logf("refusing after %s, accepting again after %s", refusedAfter, acceptedAfter)
}

// IPv6 failures are counted, and banned, per fail_ipv6_prefix network.
func TestIPv6FailuresPerPrefix(t *testing.T) {
	if l, err := net.Listen("tcp", "[::1]:0"); err != nil {
		t.Skip("no IPv6 loopback")
	} else {
		l.Close()
	}
	port := testenv.FreePort(t)
	e := newEnv(t, "auth_opt_fail_limit 2", fmt.Sprintf("listener %d ::1", port))
	addr := fmt.Sprintf("[::1]:%d", port)
	dial := func(pass string) byte {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: addr, ClientID: "v6", Username: str("alice"), Password: str(pass)})
		require.NoError(t, err)
		if conn != nil {
			conn.Close()
		}
		return code
	}
	require.EqualValues(t, accepted, dial("alice-pw"))
	for i := 0; i < 3; i++ {
		dial("guess")
	}
	e.waitKey("guard:block:cidr:::/64", true, 2*time.Second)
	assert.Equal(t, "0", e.redis.CLI("EXISTS", "guard:block:ip:::1"))
	e.logLine("event=banned", "scope=cidr", `value="::/64"`)
	assert.EqualValues(t, refused, dial("alice-pw"))
}

// A banned IP hammering the broker fills no disk: its first refusals are
// logged, then one summary line per 10 s (before: one line per attempt).
func TestRefusalLogFloodLimited(t *testing.T) {
	e := newEnv(t)
	const ip = "127.3.10.1"
	e.redis.CLI("SET", "guard:block:ip:"+ip, "scanner")
	e.expect(as(ip, "x", "alice", "alice-pw"), refused)
	for i := 0; i < 300; i++ {
		e.connect(as(ip, "x"+strconv.Itoa(i), "alice", "alice-pw"))
	}
	lines := e.countLines("event=refused", "ip="+ip+" ")
	assert.LessOrEqual(t, lines, 10, "refusal lines for one source and rule within 10 s")
	assert.GreaterOrEqual(t, lines, 1, "the first refusal is always logged")
	var line string
	eventually(t, 13*time.Second, func() bool { // the summary comes when the 10 s window ends
		for _, l := range strings.Split(e.broker.Output(), "\n") {
			if strings.Contains(l, "event=refusals_suppressed ip="+ip+" ") && strings.Contains(l, `rule="guard:block:ip:`+ip+`"`) {
				line = l
				return true
			}
		}
		return false
	}, "no summary line")
	f, err := logline.Parse(line)
	require.NoError(t, err, line)
	n, err := strconv.Atoi(f.Get("suppressed"))
	require.NoError(t, err, line)
	assert.Equal(t, 301, lines+n, "every refusal is logged or counted")
	// Another source is not held back by this one.
	assert.EqualValues(t, refused, e.connect(as("127.3.10.2", "y", "alice", "wrong")))
	e.logLine("refused", "ip=127.3.10.2 ", "rule=bad-password")
}

// Device IDs are no secret: claiming a known client ID from new addresses
// during a throttle gets a shared budget of one failure per fail_window on a
// broker, not a password check per attempt (before: 200 of 200 checked).
func TestThrottleClaimedClientIDBudget(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 50", "auth_opt_fail_window 5s", "auth_opt_username_fail_limit 3")
	device := as("127.3.11.1", "fleet-1", "bob", "bob-pw")
	require.EqualValues(t, accepted, e.connect(device))
	eventually(t, 3*time.Second, func() bool { return e.redis.CLI("ZCARD", "guard:known:bob") == "2" }, "known sources recorded")
	for i := 0; i < 6; i++ {
		e.connect(as(fmt.Sprintf("127.3.12.%d", 1+i), "x", "bob", "guess"))
	}
	e.waitKey("guard:throttle:username:bob", true, 2*time.Second)
	before := e.countLines("rule=bad-password", `username="bob"`)
	for i := 0; i < 40; i++ {
		e.connect(as(fmt.Sprintf("127.3.13.%d", 1+i), "fleet-1", "bob", "guess"+strconv.Itoa(i)))
	}
	checked := e.countLines("rule=bad-password", `username="bob"`) - before
	assert.LessOrEqual(t, checked, 2, "passwords checked for sources known by client ID only")
	assert.EqualValues(t, accepted, e.connect(device), "the device at its known address")
}

// A throttle must not tell which usernames exist: unknown usernames are
// throttled the same way (before: never, so a fast refusal meant "exists").
func TestThrottleUnknownUsernamesToo(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 50", "auth_opt_fail_window 5s", "auth_opt_username_fail_limit 3")
	for _, u := range []string{"bob", "nosuchuser"} {
		for i := 0; i < 6; i++ {
			e.connect(as(fmt.Sprintf("127.3.14.%d", 1+i), "x", u, "guess"))
		}
		e.waitKey("guard:throttle:username:"+u, true, 2*time.Second)
		assert.EqualValues(t, refused, e.connect(as("127.3.15.1", "y", u, "guess")))
	}
	e.logLine("refused", `username="nosuchuser"`, "rule=username-throttled")
	e.logLine("refused", `username="bob"`, "rule=username-throttled")
}

// With fail_scopes clientid, a 65 000-byte client ID is counted and banned
// by its tracking form: no counter, offence or ban key of 65 KB (before:
// 200 such clients added 40 MB to Redis for a day), and the ban still works.
func TestLongClaimsCountedByTrackingForm(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_scopes ip,clientid", "auth_opt_fail_limit 2")
	long := strings.Repeat("L", 65000)
	for i := 0; i < 5; i++ {
		e.connect(as(fmt.Sprintf("127.3.16.%d", 1+i), long, "alice", "guess"))
	}
	var bans []string
	eventually(t, 3*time.Second, func() bool {
		bans = strings.Fields(e.redis.CLI("--scan", "--pattern", "guard:block:clientid:*"))
		return len(bans) == 1
	}, "no automatic client-ID ban")
	assert.True(t, strings.HasPrefix(bans[0], "guard:block:clientid:sha256:"), bans[0])
	for _, k := range strings.Fields(e.redis.CLI("--scan")) {
		assert.Less(t, len(k), 300, "key %.80s...", k)
	}
	assert.EqualValues(t, refused, e.connect(as("127.3.17.1", long, "alice", "alice-pw")), "the ban refuses the long client ID from anywhere")
	assert.EqualValues(t, accepted, e.connect(as("127.3.17.1", "short", "alice", "alice-pw")))
}

// clientid_conflict deny refusals are refusal lines like any other: bounded
// per source (before: 500 of 500 logged).
func TestConflictRefusalLogBounded(t *testing.T) {
	e := newEnv(t, "auth_opt_clientid_conflict deny")
	holder, _ := e.dial(as("127.3.18.1", "victim-dev", "alice", "alice-pw"))
	require.NotNil(t, holder)
	e.expect(as("127.3.18.2", "victim-dev", "bob", "bob-pw"), refused)
	for i := 0; i < 100; i++ {
		e.connect(as("127.3.18.2", "victim-dev", "bob", "bob-pw"))
	}
	assert.LessOrEqual(t, e.countLines("event=refused", "ip=127.3.18.2 ", "rule=clientid-conflict"), 10)
}

// Health never stays down for good: after Redis is stopped and continued ten
// times (SIGSTOP/SIGCONT), a brute force is banned within 1 s as usual
// (before, a down() racing the probe's success could leave the flag down,
// silently ending automatic bans).
func TestHealthRecoversAfterFlapping(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 3")
	for i := 0; i < 10; i++ {
		require.NoError(t, e.redis.Signal(syscall.SIGSTOP))
		e.connect(as("127.3.19.1", "flap", "alice", "alice-pw")) // traffic meanwhile
		time.Sleep(300 * time.Millisecond)
		require.NoError(t, e.redis.Signal(syscall.SIGCONT))
		time.Sleep(300 * time.Millisecond)
	}
	eventually(t, 3*time.Second, func() bool { return e.connect(as("127.3.19.1", "flap", "alice", "alice-pw")) == accepted }, "accepting again")
	const ip = "127.3.19.2"
	start := time.Now()
	for i := 0; i < 5; i++ {
		e.connect(as(ip, "guess", "alice", "guess"))
	}
	e.waitKey("guard:block:ip:"+ip, true, time.Second)
	t.Logf("banned %s after the first guess", time.Since(start))
}

// The known-source record of a username is bounded by known_sources_max,
// the least recently successful sources dropped first.
func TestKnownSourcesBounded(t *testing.T) {
	e := newEnv(t, "auth_opt_known_sources_max 4")
	for i := 1; i <= 10; i++ {
		require.EqualValues(t, accepted, e.connect(as(fmt.Sprintf("127.3.20.%d", i), fmt.Sprintf("dev-%d", i), "bob", "bob-pw")))
		time.Sleep(30 * time.Millisecond) // distinct success times
	}
	eventually(t, 3*time.Second, func() bool {
		return e.redis.CLI("ZSCORE", "guard:known:bob", "ip:127.3.20.10") != ""
	}, "the last device recorded")
	assert.Equal(t, "4", e.redis.CLI("ZCARD", "guard:known:bob"))
	members := e.redis.CLI("ZRANGE", "guard:known:bob", "0", "-1")
	assert.Contains(t, members, "clientid:dev-10")
	assert.NotContains(t, members, "dev-1\n")
	ttl, err := strconv.Atoi(e.redis.CLI("TTL", "guard:known:bob"))
	require.NoError(t, err)
	assert.Greater(t, ttl, 30*24*3600, "kept conflict_window (31d)")
}

// A FLUSHALL (or an empty restart of Redis) is no operator lifting a ban: it
// must not give a guesser a fresh fail_limit+1 checks on the broker (README
// attacker: 4 more checks per flush, and a log line blaming an early lift).
func TestFlushDoesNotResetLocalCount(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 3", "auth_opt_username_fail_limit 0")
	const ip = "127.3.21.1"
	for round := 0; round < 3; round++ {
		for i := 0; i < 8; i++ {
			e.connect(as(ip, "g", "bob", "guess"))
		}
		if round == 0 {
			e.waitKey("guard:block:ip:"+ip, true, 2*time.Second)
		}
		if round < 2 {
			e.redis.CLI("FLUSHALL")
			eventually(t, 3*time.Second, func() bool { return e.redis.CLI("EXISTS", "guard:epoch") == "1" }, "the flush noticed")
			time.Sleep(300 * time.Millisecond)
		}
	}
	assert.LessOrEqual(t, e.countLines("rule=bad-password", "ip="+ip+" "), 4, "fail_limit+1 checks in the window, flushes or not")
	assert.Zero(t, e.countLines("event=auto_ban_lifted"), "a flush is not an operator's lift")
}
