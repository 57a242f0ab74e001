package e2e

import (
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

func TestPasswords(t *testing.T) {
	e := newEnv(t)
	assert.EqualValues(t, accepted, e.connect(as("127.0.1.1", "dev-a", "alice", "alice-pw")))
	assert.EqualValues(t, refused, e.connect(as("127.0.1.2", "dev-b", "alice", "not-it")))
	line := e.logLine("event=refused", `client_id="dev-b"`, "ip=127.0.1.2", `username="alice"`, "rule=bad-password")
	assert.NotContains(t, line, "not-it", "a password must never be logged")
	assert.EqualValues(t, refused, e.connect(as("127.0.1.3", "dev-c", "mallory", "x")))
	e.logLine("refused", "ip=127.0.1.3", `username="mallory"`, "rule=unknown-user")
	// No username: past the lists, Mosquitto's allow_anonymous false decides.
	assert.EqualValues(t, refused, e.connect(client{ip: "127.0.1.4", id: "anon"}))
	assert.NotContains(t, e.broker.Output(), "alice-pw")
}

func TestAnonymousDeferredToAllowAnonymous(t *testing.T) {
	e := newEnv(t, "allow_anonymous true")
	assert.EqualValues(t, accepted, e.connect(client{ip: "127.0.1.5", id: "anon"}))
	e.redis.CLI("SET", "guard:block:ip:127.0.1.5", "no anonymous from here")
	e.expect(client{ip: "127.0.1.5", id: "anon"}, refused, "lists apply to anonymous clients too")
}

func TestBlockScopes(t *testing.T) {
	e := newEnv(t)
	cases := []struct {
		name, key string
		hit, miss client
	}{
		{"clientid", "guard:block:clientid:sensor-7",
			as("127.0.2.1", "sensor-7", "alice", "alice-pw"), as("127.0.2.1", "sensor-8", "alice", "alice-pw")},
		{"ip", "guard:block:ip:127.0.2.2",
			as("127.0.2.2", "x1", "alice", "alice-pw"), as("127.0.2.3", "x1", "alice", "alice-pw")},
		{"cidr", "guard:block:cidr:127.0.3.0/24",
			as("127.0.3.77", "x2", "alice", "alice-pw"), as("127.0.4.77", "x2", "alice", "alice-pw")},
		{"username", "guard:block:username:bob",
			as("127.0.2.5", "x3", "bob", "bob-pw"), as("127.0.2.5", "x3", "alice", "alice-pw")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			require.EqualValues(t, accepted, e.connect(c.hit), "before the ban")
			e.redis.CLI("SET", c.key, "operator says no")
			e.expect(c.hit, refused)
			assert.EqualValues(t, accepted, e.connect(c.miss), "a client the key does not name")
			e.logLine("refused", `rule="`+c.key+`"`, "origin=operator", "expires=never", `reason="operator says no"`)
			e.redis.CLI("DEL", c.key)
			e.expect(c.hit, accepted, "after DEL")
		})
	}
}

func TestAllowlist(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 2")
	e.redis.CLI("SET", "guard:block:cidr:127.0.5.0/24", "whole lab")
	e.redis.CLI("SET", "guard:allow:clientid:lab-gateway", "the gateway must stay up")
	e.expect(as("127.0.5.1", "lab-sensor", "alice", "alice-pw"), refused)
	assert.EqualValues(t, refused, e.connect(as("127.0.5.1", "lab-gateway", "alice", "alice-pw")), "a client ID is a claim: it never lifts a range ban")
	e.redis.CLI("SET", "guard:block:clientid:lab-gateway", "retired")
	time.Sleep(300 * time.Millisecond) // a redis-cli change reaches the replica within milliseconds
	assert.EqualValues(t, accepted, e.connect(as("127.0.6.200", "lab-gateway", "alice", "alice-pw")), "it lifts a client-ID ban")
	// Allowed clients still need the right password, but are never counted or banned.
	e.redis.CLI("SET", "guard:allow:ip:127.0.5.9", "")
	e.expect(as("127.0.5.9", "c", "alice", "alice-pw"), accepted, "the allow key reached the replica (it lifts the range ban)")
	for i := 0; i < 6; i++ {
		assert.EqualValues(t, refused, e.connect(as("127.0.5.9", "c"+strconv.Itoa(i), "alice", "wrong")))
	}
	time.Sleep(300 * time.Millisecond)
	assert.Equal(t, "0", e.redis.CLI("EXISTS", "guard:block:ip:127.0.5.9"))
	e.redis.CLI("DEL", "guard:allow:ip:127.0.5.9", "guard:block:cidr:127.0.5.0/24")
	e.expect(as("127.0.5.9", "c", "alice", "alice-pw"), accepted)
}

func TestBanExpires(t *testing.T) {
	e := newEnv(t)
	c := as("127.0.6.1", "temp", "alice", "alice-pw")
	e.redis.CLI("SET", "guard:block:ip:127.0.6.1", "cool down", "PX", "800")
	e.expect(c, refused)
	line := e.logLine("refused", "ip=127.0.6.1", "origin=operator")
	assert.Contains(t, line, "expires_in=1s", "the expiry comes from the key's TTL")
	time.Sleep(900 * time.Millisecond)
	assert.EqualValues(t, accepted, e.connect(c))
}

func TestBruteForceIsBanned(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 3", "auth_opt_ban_time 10m", "auth_opt_ban_max 1h")
	attacker, bystander := "127.0.7.1", "127.0.7.2"
	for i := 0; i < 4; i++ {
		require.EqualValues(t, refused, e.connect(as(attacker, "guess"+strconv.Itoa(i), "alice", "guess"+strconv.Itoa(i))))
	}
	key := "guard:block:ip:" + attacker
	eventually(t, 3*time.Second, func() bool { return e.redis.CLI("EXISTS", key) == "1" }, "no automatic ban at %s", key)
	value := e.redis.CLI("GET", key)
	assert.True(t, strings.HasPrefix(value, "auto: "), "value %q", value)
	ttl, err := strconv.Atoi(e.redis.CLI("TTL", key))
	require.NoError(t, err)
	assert.InDelta(t, 600, ttl, 5)
	assert.Equal(t, "1", e.redis.CLI("GET", "guard:offences:ip:"+attacker))
	e.logLine("event=banned ip=127.0.7.1 scope=ip", `value="127.0.7.1"`, "origin=auto", "offence=1", `rule="`+key+`"`)

	// Banned now, even with the right password; others are not.
	assert.EqualValues(t, refused, e.connect(as(attacker, "real", "alice", "alice-pw")))
	e.logLine("refused", "ip="+attacker, "origin=auto")
	assert.EqualValues(t, accepted, e.connect(as(bystander, "real", "alice", "alice-pw")))
	assert.Equal(t, "0", e.redis.CLI("EXISTS", "guard:block:ip:"+bystander))
}

func TestBanEscalates(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 1", "auth_opt_ban_time 1m", "auth_opt_ban_max 3m")
	ip := "127.0.8.1"
	key := "guard:block:ip:" + ip
	for _, want := range []int{60, 120, 180, 180} {
		e.redis.CLI("DEL", key) // the ban ran out
		e.expect(as(ip, "ok", "alice", "alice-pw"), accepted, "the DEL reached the replica")
		require.EqualValues(t, refused, e.connect(as(ip, "a", "alice", "x")))
		require.EqualValues(t, refused, e.connect(as(ip, "b", "alice", "y")))
		eventually(t, 3*time.Second, func() bool { return e.redis.CLI("EXISTS", key) == "1" }, "no ban")
		ttl, _ := strconv.Atoi(e.redis.CLI("TTL", key))
		assert.InDelta(t, want, ttl, 3, "ban length")
		// Let the fail window's allowance come back before the next round.
		e.redis.CLI("DEL", "rate:guard:fail:ip:"+ip)
	}
	assert.Equal(t, "4", e.redis.CLI("GET", "guard:offences:ip:"+ip))
}

func TestOddClientIDs(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_scopes clientid", "auth_opt_fail_limit 1")
	long := strings.Repeat("L", 20000)
	ids := []string{"*", "dev*", "a:b", "with space", "[x]?", "ünï-cødé", long}
	for _, id := range ids {
		require.EqualValues(t, accepted, e.connect(as("127.0.9.1", id, "alice", "alice-pw")), "id %.40q", id)
	}
	// Glob characters never widen a match: a ban of "dev*" refuses only "dev*".
	e.redis.CLI("SET", "guard:block:clientid:dev*", "literal")
	e.expect(as("127.0.9.1", "dev*", "alice", "alice-pw"), refused)
	assert.EqualValues(t, accepted, e.connect(as("127.0.9.1", "dev1", "alice", "alice-pw")))
	assert.EqualValues(t, accepted, e.connect(as("127.0.9.1", "*", "alice", "alice-pw")))
	// ':' cannot make a client ID look like another scope's key.
	e.redis.CLI("SET", "guard:block:ip:127.0.9.2", "ip ban")
	e.expect(as("127.0.9.2", "x", "alice", "alice-pw"), refused)
	assert.EqualValues(t, accepted, e.connect(as("127.0.9.1", "ip:127.0.9.2", "alice", "alice-pw")))

	// A 20 000-byte client ID is banned under exactly its own tracking form
	// (its SHA-256: an automatic ban must not keep 20 000 bytes a key).
	require.EqualValues(t, refused, e.connect(as("127.0.9.3", long, "alice", "x")))
	require.EqualValues(t, refused, e.connect(as("127.0.9.3", long, "alice", "y")))
	key := "guard:block:clientid:" + keys.Tracking(long)
	require.Len(t, keys.Tracking(long), 71)
	eventually(t, 3*time.Second, func() bool { return e.redis.CLI("EXISTS", key) == "1" }, "no ban of the long id")
	// Refused by the ban once the replica has it (until then, by this
	// broker's own failure count: rule=fail-limit).
	eventually(t, 3*time.Second, func() bool {
		return e.connect(as("127.0.9.4", long, "alice", "alice-pw")) == refused &&
			findLine(e.broker.Output(), "refused", "ip=127.0.9.4", "origin=auto") != ""
	}, "no refusal by the long id's automatic ban")
	assert.EqualValues(t, accepted, e.connect(as("127.0.9.4", long[:19999], "alice", "alice-pw")))
	line := e.logLine("refused", "ip=127.0.9.4", "origin=auto")
	assert.Less(t, len(line), 2000, "hostile values are cut in log lines")
	assert.Contains(t, line, "client_id_bytes=20000")
}

func TestHostileBytesInLogs(t *testing.T) {
	e := newEnv(t)
	// Mosquitto itself refuses control characters in client IDs (malformed
	// UTF-8 to it); a username with a quote and a backslash reaches the plugin.
	assert.EqualValues(t, refused, e.connect(as("127.0.9.9", "q", `ev"il\name`, "x")))
	line := e.logLine("refused", "ip=127.0.9.9")
	assert.Contains(t, line, `username="ev\"il\\name"`)
}

func TestBadOptionStopsBroker(t *testing.T) {
	testenv := []struct{ line, want string }{
		{"auth_opt_fail_limit abc", `option fail_limit: bad value "abc": expected a whole number`},
		{"auth_opt_ban_time 10", `option ban_time: bad value "10": expected a duration`},
		{"auth_opt_backend ldap", `option backend: bad value "ldap": expected one of files, redis, defer`},
		{"auth_opt_fali_limit 3", `option fali_limit: unknown option`},
	}
	for _, c := range testenv {
		t.Run(c.line, func(t *testing.T) {
			e := &env{t: t, dir: t.TempDir()}
			e.passwd = e.dir + "/passwd"
			e.addUser("alice", "alice-pw")
			out := startExpectFail(t, e.conf(c.line))
			assert.Contains(t, out, c.want)
		})
	}
	t.Run("unreadable password file", func(t *testing.T) {
		e := &env{t: t, dir: t.TempDir()}
		e.passwd = e.dir + "/missing"
		out := startExpectFail(t, e.conf())
		assert.Contains(t, out, `option password_file: bad value "`+e.passwd+`"`)
	})
}

func TestMalformedRangeKeyIsLogged(t *testing.T) {
	e := newEnv(t)
	// Written while the broker runs: the replica sees it at once.
	e.redis.CLI("SET", "guard:block:cidr:127.0.10.5/24", "typo")
	e.logLine(`range key "guard:block:cidr:127.0.10.5/24" can never match`, "127.0.10.0/24")
	// Present at start: the replica's load reports it.
	e.redis.CLI("SET", "guard:allow:cidr:2001:DB8::/32", "typo")
	e.broker.Stop()
	e.broker = startBroker(t, e.conf())
	e.logLine(`range key "guard:allow:cidr:2001:DB8::/32" can never match`, "2001:db8::/32")
}

func TestReloadReadsPasswordFile(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 1")
	conn, code := e.dial(as("127.0.11.1", "alice-dev", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	assert.EqualValues(t, refused, e.connect(as("127.0.11.2", "carol-dev", "carol", "carol-pw")))

	e.addUser("carol", "carol-pw")
	e.addUser("alice", "rotated")
	e.broker.Reload()
	e.logLine("loaded 3 users")
	assert.EqualValues(t, accepted, e.connect(as("127.0.11.2", "carol-dev", "carol", "carol-pw")))
	// The broker re-checks connected clients after a reload and drops alice's
	// old session: that is not an attack and must not ban her address.
	assert.True(t, conn.Closed(3*time.Second), "alice's connection with the old password should be closed")
	e.logLine("refused", "ip=127.0.11.1", "reauth=true")
	time.Sleep(300 * time.Millisecond)
	assert.Equal(t, "0", e.redis.CLI("EXISTS", "guard:block:ip:127.0.11.1"))
	assert.EqualValues(t, accepted, e.connect(as("127.0.11.1", "alice-dev", "alice", "rotated")))
}

func TestRedisBackend(t *testing.T) {
	e := newEnv(t, "auth_opt_backend redis")
	hash := strings.SplitN(strings.TrimSpace(readFileLine(t, e.passwd, "alice:")), ":", 2)[1]
	e.redis.CLI("SET", "guard:user:dave", hash)
	e.expect(as("127.0.12.1", "d", "dave", "alice-pw"), accepted)
	assert.EqualValues(t, refused, e.connect(as("127.0.12.1", "d", "dave", "nope")))
	assert.EqualValues(t, refused, e.connect(as("127.0.12.1", "d", "alice", "alice-pw")), "alice is only in the file")
	e.logLine("refused", `username="alice"`, "rule=unknown-user")
	e.redis.CLI("SET", "guard:user:eve", "$6$garbage")
	eventually(t, 2*time.Second, func() bool {
		e.connect(as("127.0.12.1", "e", "eve", "x"))
		return strings.Contains(e.broker.Output(), `stored hash of username="eve"`)
	}, "a malformed stored hash is logged")
}

func TestDeferBackend(t *testing.T) {
	e := &env{t: t, dir: t.TempDir()}
	e.passwd = e.dir + "/passwd"
	e.addUser("alice", "alice-pw")
	e.redis = startRedis(t)
	e.broker = startBroker(t, e.conf("auth_opt_backend defer", "password_file "+e.passwd))
	assert.EqualValues(t, accepted, e.connect(as("127.0.13.1", "a", "alice", "alice-pw")), "mosquitto's password_file decides")
	assert.EqualValues(t, refused, e.connect(as("127.0.13.1", "a", "alice", "bad")))
	e.redis.CLI("SET", "guard:block:username:alice", "x")
	e.expect(as("127.0.13.1", "a", "alice", "alice-pw"), refused, "the lists still apply")
}

func TestRedisDown(t *testing.T) {
	t.Run("allow", func(t *testing.T) {
		e := newEnv(t)
		e.redis.CLI("SET", "guard:block:ip:127.0.14.1", "x")
		e.redis.CLI("SET", "guard:block:ip:127.0.14.5", "short", "PX", "1500")
		e.expect(as("127.0.14.1", "a", "alice", "alice-pw"), refused)
		e.expect(as("127.0.14.5", "a", "alice", "alice-pw"), refused)
		e.redis.Stop()
		start := time.Now()
		assert.EqualValues(t, refused, e.connect(as("127.0.14.1", "a", "alice", "alice-pw")), "the last known lists still apply while Redis is down")
		assert.EqualValues(t, accepted, e.connect(as("127.0.14.3", "a", "alice", "alice-pw")), "credentials still checked")
		assert.EqualValues(t, refused, e.connect(as("127.0.14.2", "a", "alice", "bad")), "credentials still checked")
		assert.Less(t, time.Since(start), 2*time.Second, "a dead Redis never stalls the broker")
		e.logLine("unreachable", "redis_unavailable allow")
		e.expect(as("127.0.14.5", "a", "alice", "alice-pw"), accepted, "a ban expires locally, Redis or not")
		e.redis.Restart() // empty: no persistence
		e.logLine("list checks resume")
		e.expect(as("127.0.14.1", "a", "alice", "alice-pw"), accepted, "the replica reloads the (now empty) lists")
		e.redis.CLI("SET", "guard:block:ip:127.0.14.1", "x")
		e.expect(as("127.0.14.1", "a", "alice", "alice-pw"), refused, "checks resume")
	})
	t.Run("deny", func(t *testing.T) {
		e := newEnv(t, "auth_opt_redis_unavailable deny")
		require.EqualValues(t, accepted, e.connect(as("127.0.14.3", "a", "alice", "alice-pw")))
		e.redis.Stop()
		// The lost subscription tells the plugin within milliseconds.
		e.expect(as("127.0.14.3", "a", "alice", "alice-pw"), refused)
		e.logLine("refused", "ip=127.0.14.3", "rule=redis-unavailable")
		e.redis.Restart()
		e.logLine("list checks resume")
		e.expect(as("127.0.14.3", "a", "alice", "alice-pw"), accepted)
	})
	t.Run("unreachable at start", func(t *testing.T) {
		e := &env{t: t, dir: t.TempDir()}
		e.passwd = e.dir + "/passwd"
		e.addUser("alice", "alice-pw")
		e.redis = startRedis(t)
		e.redis.Stop()
		e.broker = startBroker(t, e.conf())
		e.logLine("unreachable")
		assert.EqualValues(t, accepted, e.connect(as("127.0.14.4", "a", "alice", "alice-pw")))
		e.redis.Restart()
		e.logLine("list checks resume")
		e.redis.CLI("SET", "guard:block:username:alice", "x")
		e.expect(as("127.0.14.4", "a", "alice", "alice-pw"), refused)
	})
}

func readFileLine(t *testing.T, path, prefix string) string {
	t.Helper()
	out, err := exec.Command("grep", "^"+prefix, path).Output()
	require.NoError(t, err)
	return string(out)
}

// With per_listener_settings true the broker initialises the plugin once
// per listener in one process, and Mosquitto 2.0.11 delivers no TICK: the
// instances must not mix, and queued log lines must still come out.
func TestPerListenerSettings(t *testing.T) {
	testenv.Need(t, "mosquitto", "mosquitto_passwd", "redis-server")
	e := &env{t: t, dir: t.TempDir()}
	e.passwd = e.dir + "/passwd"
	e.addUser("alice", "alice-pw")
	e.redis = startRedis(t)
	port2 := testenv.FreePort(t)
	conf := strings.Join([]string{
		"per_listener_settings true",
		"listener {{PORT}} 127.0.0.1",
		"allow_anonymous false",
		"auth_plugin " + pluginPath,
		"auth_opt_redis_addr " + e.redis.Addr,
		"auth_opt_password_file " + e.passwd,
		"auth_opt_fail_limit 1",
		"listener " + strconv.Itoa(port2) + " 127.0.0.1",
		"allow_anonymous false",
		"auth_plugin " + pluginPath,
		"auth_opt_redis_addr " + e.redis.Addr,
		"auth_opt_password_file " + e.passwd,
		"auth_opt_key_prefix second:",
	}, "\n")
	e.broker = testenv.StartMosquitto(t, conf)
	require.True(t, e.broker.WaitOutput("mosquitto-guard: ready", 5*time.Second))
	second := *e
	second.broker = &testenv.Mosquitto{Process: e.broker.Process, Addr: "127.0.0.1:" + strconv.Itoa(port2)}
	require.NoError(t, e.broker.WaitPort(second.broker.Addr, 5*time.Second))

	assert.EqualValues(t, accepted, e.connect(as("127.0.15.1", "a", "alice", "alice-pw")))
	assert.EqualValues(t, accepted, second.connect(as("127.0.15.1", "a", "alice", "alice-pw")))
	e.redis.CLI("SET", "second:block:username:alice", "only on the second listener")
	second.expect(as("127.0.15.1", "a", "alice", "alice-pw"), refused)
	assert.EqualValues(t, accepted, e.connect(as("127.0.15.1", "a", "alice", "alice-pw")))

	// Counting runs in a goroutine; its ban line is queued and must be
	// written by a later callback even without TICK.
	e.connect(as("127.0.15.2", "x", "alice", "bad1"))
	e.connect(as("127.0.15.2", "x", "alice", "bad2"))
	eventually(t, 3*time.Second, func() bool { return e.redis.CLI("EXISTS", "guard:block:ip:127.0.15.2") == "1" }, "no ban")
	e.connect(as("127.0.15.3", "y", "alice", "alice-pw"))
	e.logLine("event=banned", "127.0.15.2")
}

// The broker stops promptly on SIGTERM: cleanup stops every goroutine.
func TestCleanShutdown(t *testing.T) {
	e := newEnv(t)
	assert.EqualValues(t, accepted, e.connect(as("127.0.16.1", "a", "alice", "alice-pw")))
	require.NoError(t, e.broker.Signal(syscall.SIGTERM))
	err, done := e.broker.Wait(3 * time.Second)
	require.True(t, done, "mosquitto did not stop within 3s")
	assert.NoError(t, err)
}
