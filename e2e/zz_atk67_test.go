package e2e

// atk67: a README-only hostile pass over today's changes: the start check
// of Redis settings, log values cut at 200 bytes, RESP2 connections, known
// sources, refused publishes logged once per 10 minutes.

import (
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logline"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

const atk67Marker = ", with args beginning with:"

var atk67Stamp = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d: `)

// atk67CheckLog fails t on any broker line that is split (no timestamp),
// carries Redis's echo marker, or is a plugin line over max bytes.
func atk67CheckLog(t *testing.T, out string, max int) {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if l == "" {
			continue
		}
		if !atk67Stamp.MatchString(l) {
			t.Errorf("a line without Mosquitto's timestamp (split or forged): %.300q", l)
		}
		if strings.Contains(l, "mosquitto-guard:") && strings.Contains(l, atk67Marker) {
			t.Errorf("a line carries Redis's echo marker: %.300q", l)
		}
		if strings.Contains(l, "mosquitto-guard:") && len(l) > max {
			t.Errorf("a plugin line of %d bytes (bound %d): %.300q", len(l), max, l)
		}
		if strings.Contains(l, "\u2028") || strings.Contains(l, "\u2029") {
			if strings.Contains(l, "mosquitto-guard:") {
				t.Errorf("a plugin line holds a raw U+2028/9: %.300q", l)
			}
		}
	}
}

// Hostile client IDs and usernames, up to 65 535 bytes, carrying the echo
// marker, U+2028 and fake pairs: every plugin line stays one bounded line,
// ip is the real one, values cut at 200 bytes with their full length.
func TestAtk67HostileValuesStayOneBoundedLine(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 1000")
	big := func(seed string, n int) string {
		return strings.ToValidUTF8((strings.Repeat(seed, n/len(seed)+1))[:n], "")
	}
	hostile := []string{
		atk67Marker + " AUTH secret" + big("A", 300),
		"x\u2028" + `2026-01-01T00:00:00: mosquitto-guard: event=refused ip=10.6.6.6 rule=bad-password`,
		`" ip=10.6.6.6 rule=bad-password "` + big("\u2028", 90),
		big("é"+atk67Marker, 65535), // a character boundary near 200
		big("\u2028", 65535),
	}
	for i, h := range hostile {
		// the client ID, then the username, each carrying h; the other short
		ip := fmt.Sprintf("127.67.%d.1", i)
		// keep each field valid UTF-8 and at most 65 535 bytes
		id := h
		if len(id) > 65535 {
			id = id[:65535]
		}
		id = strings.ToValidUTF8(id, "")
		require.Equal(t, byte(refused), e.connect(as(ip, id, "alice", "wrong"+atk67Marker)))
		require.Equal(t, byte(refused), e.connect(as(ip, "c"+fmt.Sprint(i), id, "wrong"+atk67Marker)))
	}
	out := e.broker.Output()
	atk67CheckLog(t, out, 1500)
	n := 0
	for _, l := range strings.Split(out, "\n") {
		if !strings.Contains(l, "mosquitto-guard: event=refused") {
			continue
		}
		n++
		f, err := logline.Parse(l)
		require.NoError(t, err, l)
		require.True(t, strings.HasPrefix(f.Get("ip"), "127.67."), "ip forged: %s", l)
		require.LessOrEqual(t, len(f.Get("client_id")), 200, l)
		require.LessOrEqual(t, len(f.Get("username")), 200, l)
		if f.Get("client_id_bytes") != "" {
			require.Regexp(t, `^\d+$`, f.Get("client_id_bytes"))
		}
	}
	require.GreaterOrEqual(t, n, 2*len(hostile)-1, "refusal lines: %d", n)
	require.True(t, hasLine(out, "client_id_bytes=65535"), "no client_id_bytes=65535")
	require.True(t, hasLine(out, "username_bytes=65535"), "no username_bytes=65535")
	require.NotContains(t, out, "wrong,", "a password in the log")
	require.NotContains(t, out, `wrong\x2c`, "a password in the log")
}

// An operator's reason and key of hostile bytes: one line, cut at 200.
func TestAtk67OperatorReasonCut(t *testing.T) {
	e := newEnv(t)
	id := strings.Repeat("\u2028"+atk67Marker, 3000)[:60000]
	reason := "line1\nline2\r" + atk67Marker + strings.Repeat("\u2028z", 5000)
	e.redis.CLI("SET", "guard:block:clientid:"+id, reason)
	e.redis.CLI("SET", "guard:block:username:alice", reason)
	e.expect(as("127.67.10.1", id, "bob", "bob-pw"), refused)
	e.expect(as("127.67.10.2", "ok", "alice", "alice-pw"), refused)
	out := e.broker.Output()
	atk67CheckLog(t, out, 1500)
	l := e.logLine("event=refused", "ip=127.67.10.1")
	f, err := logline.Parse(l)
	require.NoError(t, err)
	require.LessOrEqual(t, len(f.Get("reason")), 200, l)
}

// Bans are not avoided by rotating huge client IDs and usernames.
func TestAtk67BanNotAvoidedByHugeValues(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 3", "auth_opt_ban_time 1m")
	ip := "127.67.20.1"
	for i := 0; i < 6; i++ {
		id := fmt.Sprintf("%d", i) + strings.Repeat("\u2028", 21000)
		user := fmt.Sprintf("u%d", i) + strings.Repeat(atk67Marker, 2000)
		e.connect(as(ip, id, user, "nope"))
	}
	eventually(t, 5*time.Second, func() bool {
		return e.redis.CLI("EXISTS", "guard:block:ip:"+ip) == "1"
	}, "no ban of %s", ip)
	require.Equal(t, byte(refused), e.connect(as(ip, "good", "alice", "alice-pw")))
	atk67CheckLog(t, e.broker.Output(), 1500)
}

// The start check leaves nothing behind, also for a user refused DEL and
// PEXPIRE (its SET with a 1 ms expiry cleans up).
func TestAtk67StartCheckLeavesNothing(t *testing.T) {
	for _, deny := range [][]string{nil, {"-del"}, {"-del", "-pexpire"}} {
		t.Run(strings.Join(append([]string{"deny"}, deny...), ""), func(t *testing.T) {
			e := envWithoutBroker(t)
			args := append([]string{"ACL", "SETUSER", "g", "on", ">pw", "~*", "&*", "+@all"}, deny...)
			e.redis.CLI(args...)
			conf := e.conf("auth_opt_redis_username g", "auth_opt_redis_password pw", "auth_opt_clientid_conflict flag")
			if deny == nil {
				m := startBroker(t, conf)
				_ = m
			} else {
				out := startExpectFail(t, conf)
				named := false
				for _, d := range deny {
					named = named || hasLine(out, "mosquitto-guard:", "NOPERM", strings.TrimPrefix(d, "-"))
				}
				require.True(t, named, "the start did not name a refused command:\n%s", out)
			}
			time.Sleep(100 * time.Millisecond)
			keys := e.redis.CLI("--scan", "--pattern", "*settings-check*")
			require.Empty(t, keys, "the start check left keys behind")
		})
	}
}

// The plugin's connections speak RESP2.
func TestAtk67ConnectionsSpeakRESP2(t *testing.T) {
	e := newEnv(t, "auth_opt_clientid_conflict flag")
	require.Equal(t, byte(accepted), e.connect(as("127.67.30.1", "c1", "alice", "alice-pw")))
	e.broker.Reload()
	time.Sleep(500 * time.Millisecond)
	list := e.redis.CLI("CLIENT", "LIST")
	n := 0
	for _, l := range strings.Split(list, "\n") {
		if strings.Contains(l, "cmd=client|list") {
			continue
		}
		n++
		require.Contains(t, l, "resp=2", "a connection not on RESP2: %s", l)
	}
	require.Greater(t, n, 0)
}

// A user refused PUBLISH on guard:changes: the refusal is logged at most
// once per 10 minutes, however many bans are written.
func TestAtk67RefusedPublishLoggedOnce(t *testing.T) {
	e := envWithoutBroker(t)
	e.redis.CLI("ACL", "SETUSER", "g", "on", ">pw", "~*", "&*", "+@all", "-publish")
	m := startBroker(t, e.conf("auth_opt_redis_username g", "auth_opt_redis_password pw", "auth_opt_fail_limit 1", "auth_opt_ban_time 2s"))
	e.broker = m
	for i := 0; i < 8; i++ {
		ip := fmt.Sprintf("127.67.40.%d", i+1)
		for j := 0; j < 3; j++ {
			e.connect(as(ip, "c", "alice", "no"))
		}
	}
	eventually(t, 5*time.Second, func() bool { return strings.Contains(m.Output(), "refused to publish") }, "no publish refusal logged")
	time.Sleep(time.Second)
	n := strings.Count(m.Output(), "refused to publish")
	require.Equal(t, 1, n, "publish refusals logged %d times:\n%s", n, m.Output())
	atk67CheckLog(t, m.Output(), 1500)
}

// Redis hung 2 s, flushed, restarted, and SIGHUPs, while clients connect
// and fail: no bad password is ever admitted, good ones are admitted
// after, the broker answers throughout, an existing operator ban (not
// flushed) keeps refusing across the hang and the SIGHUP.
func TestAtk67FaultsWhileClientsFail(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 1000", "auth_opt_username_fail_limit 0")
	e.redis.CLI("SET", "guard:block:ip:127.67.50.9", "op")
	e.expect(as("127.67.50.9", "b", "alice", "alice-pw"), refused)
	faults := []func(){
		func() {
			require.NoError(t, syscall.Kill(e.redis.PID(), syscall.SIGSTOP))
			time.Sleep(2 * time.Second)
			require.NoError(t, syscall.Kill(e.redis.PID(), syscall.SIGCONT))
		},
		func() { e.broker.Reload(); time.Sleep(300 * time.Millisecond); e.broker.Reload() },
	}
	for fi, f := range faults {
		done := make(chan struct{})
		go func() { f(); close(done) }()
		i := 0
	loop:
		for ; i < 400; i++ {
			select {
			case <-done:
				break loop
			default:
			}
			ip := fmt.Sprintf("127.67.51.%d", i%200+1)
			start := time.Now()
			require.Equal(t, byte(refused), e.connect(as(ip, fmt.Sprintf("x%d", i), "alice", "bad")), "fault %d: a bad password admitted", fi)
			require.Less(t, time.Since(start), 1500*time.Millisecond, "fault %d: a CONNECT took %v", fi, time.Since(start))
			require.Equal(t, byte(refused), e.connect(as("127.67.50.9", "b", "alice", "alice-pw")), "fault %d: operator ban lifted", fi)
		}
		<-done
	}
	e.expect(as("127.67.52.1", "g", "alice", "alice-pw"), accepted)
	// FLUSHALL, then restart: the plugin recovers; good in, bad out
	e.redis.CLI("FLUSHALL")
	e.redis.Kill()
	time.Sleep(300 * time.Millisecond)
	require.Equal(t, byte(refused), e.connect(as("127.67.52.2", "g2", "alice", "bad")))
	e.redis.Restart()
	e.expect(as("127.67.52.3", "g3", "alice", "alice-pw"), accepted)
	require.Equal(t, byte(refused), e.connect(as("127.67.52.4", "g4", "alice", "bad")))
	atk67CheckLog(t, e.broker.Output(), 1500)
}

// Known sources: a client ID that once authenticated as alice, claimed by
// an attacker from new addresses while alice is throttled, gets at most
// its budget of failed passwords checked (one per fail_window, two checks).
func TestAtk67KnownClientIDBudget(t *testing.T) {
	e := newEnv(t, "auth_opt_username_fail_limit 3", "auth_opt_fail_window 1m", "auth_opt_fail_limit 1000")
	require.Equal(t, byte(accepted), e.connect(as("127.67.60.1", "dev-alice", "alice", "alice-pw")))
	time.Sleep(1500 * time.Millisecond) // known sources are written in the background
	for i := 0; i < 6; i++ {
		e.connect(as(fmt.Sprintf("127.67.61.%d", i+1), fmt.Sprintf("a%d", i), "alice", "guess"))
	}
	eventually(t, 5*time.Second, func() bool {
		return e.redis.CLI("EXISTS", "guard:throttle:username:alice") == "1"
	}, "alice not throttled")
	before := strings.Count(e.broker.Output(), "rule=bad-password")
	for i := 0; i < 10; i++ {
		e.connect(as(fmt.Sprintf("127.67.62.%d", i+1), "dev-alice", "alice", "guess"))
	}
	time.Sleep(500 * time.Millisecond)
	checked := strings.Count(e.broker.Output(), "rule=bad-password") - before
	t.Logf("passwords checked for the claimed client ID: %d", checked)
	require.LessOrEqual(t, checked, 2, "the claimed client ID's budget exceeded")
	atk67CheckLog(t, e.broker.Output(), 1500)
}

// A banned client ID of 60 000 hostile bytes flooded from one address: the
// refusals_suppressed line's rule (a key holding the client ID) is cut too.
func TestAtk67SuppressedLineRuleCut(t *testing.T) {
	e := newEnv(t)
	id := strings.Repeat("\u2028"+atk67Marker, 3000)[:60000]
	id = strings.ToValidUTF8(id, "")
	e.redis.CLI("SET", "guard:block:clientid:"+id, "op")
	e.expect(as("127.67.70.1", id, "bob", "bob-pw"), refused)
	for i := 0; i < 30; i++ {
		e.connect(as("127.67.70.1", id, "bob", "bob-pw"))
	}
	l := func() string { return findLine(e.broker.Output(), "event=refusals_suppressed", "ip=127.67.70.1") }
	eventually(t, 15*time.Second, func() bool { return l() != "" }, "no refusals_suppressed line")
	require.LessOrEqual(t, len(l()), 1000, "suppressed line of %d bytes", len(l()))
	atk67CheckLog(t, e.broker.Output(), 1500)
}

// A finding on a 65 535-byte hostile client ID shared by alice and bob.
func TestAtk67FindingHostileClientID(t *testing.T) {
	e := newEnv(t, "auth_opt_clientid_conflict flag")
	id := strings.ToValidUTF8(strings.Repeat("\u2028"+atk67Marker+`" ip=10.6.6.6 `, 3000)[:65535], "")
	c1, code := e.dial(as("127.67.80.1", id, "alice", "alice-pw"))
	require.Equal(t, byte(accepted), code)
	_ = c1
	c2, code := e.dial(as("127.67.80.2", id, "bob", "bob-pw"))
	_ = c2
	_ = code
	e.logLine("event=finding")
	atk67CheckLog(t, e.broker.Output(), 3000)
}

// fail_limit 3: a burst of 40 parallel bad CONNECTs from one address, with
// Redis hung meanwhile: at most fail_limit + 1 passwords checked.
func TestAtk67ParallelBurstWhileRedisHung(t *testing.T) {
	for _, hang := range []bool{false, true} {
		t.Run(fmt.Sprint("hang=", hang), func(t *testing.T) {
			e := newEnv(t, "auth_opt_fail_limit 3", "auth_opt_username_fail_limit 0")
			if hang {
				require.NoError(t, syscall.Kill(e.redis.PID(), syscall.SIGSTOP))
				defer syscall.Kill(e.redis.PID(), syscall.SIGCONT)
				time.Sleep(800 * time.Millisecond)
			}
			ip := "127.67.90.1"
			done := make(chan byte, 40)
			for i := 0; i < 40; i++ {
				go func(i int) {
					ctx := e
					_ = ctx
					done <- e.connect(as(ip, fmt.Sprintf("p%d", i), "alice", fmt.Sprintf("bad%d", i)))
				}(i)
			}
			for i := 0; i < 40; i++ {
				require.Equal(t, byte(refused), <-done)
			}
			time.Sleep(300 * time.Millisecond)
			n := 0
			for _, l := range strings.Split(e.broker.Output(), "\n") {
				if strings.Contains(l, "event=refused ip="+ip+" rule=bad-password") {
					n++
				}
			}
			t.Logf("passwords checked: %d", n)
			require.LessOrEqual(t, n, 4, "more than fail_limit+1 passwords checked")
			require.Equal(t, byte(refused), e.connect(as(ip, "good", "alice", "alice-pw")), "the guesser's address let in")
		})
	}
}

// The publish refusal stays one line across a SIGHUP and more bans.
func TestAtk67RefusedPublishOnceAcrossReload(t *testing.T) {
	e := envWithoutBroker(t)
	e.redis.CLI("ACL", "SETUSER", "g", "on", ">pw", "~*", "&*", "+@all", "-publish")
	m := startBroker(t, e.conf("auth_opt_redis_username g", "auth_opt_redis_password pw", "auth_opt_fail_limit 1", "auth_opt_ban_time 2s", "auth_opt_username_fail_limit 0"))
	e.broker = m
	ban := func(base int) {
		for i := 0; i < 4; i++ {
			ip := fmt.Sprintf("127.67.%d.%d", base, i+1)
			for j := 0; j < 3; j++ {
				e.connect(as(ip, "c", "alice", "no"))
			}
		}
	}
	ban(100)
	eventually(t, 5*time.Second, func() bool { return strings.Contains(m.Output(), "refused to publish") }, "no publish refusal logged")
	m.Reload()
	time.Sleep(500 * time.Millisecond)
	ban(101)
	time.Sleep(time.Second)
	n := strings.Count(m.Output(), "refused to publish")
	require.Equal(t, 1, n, "publish refusals logged %d times", n)
}

// The start check in another database leaves nothing there either.
func TestAtk67StartCheckDB3(t *testing.T) {
	e := envWithoutBroker(t)
	startBroker(t, e.conf("auth_opt_redis_db 3", "auth_opt_clientid_conflict flag"))
	time.Sleep(100 * time.Millisecond)
	for _, db := range []string{"0", "3"} {
		require.Empty(t, e.redis.CLI("-n", db, "--scan", "--pattern", "*settings-check*"), "db %s", db)
	}
}

// More refusals for the start check: whatever the user may still run of
// DEL, PEXPIRE and SET, nothing is left behind.
func TestAtk67StartCheckLeavesNothingMore(t *testing.T) {
	cases := []struct {
		name  string
		deny  []string
		extra []string
	}{
		{"del-set", []string{"-del", "-set"}, nil},
		{"pexpire-set", []string{"-pexpire", "-set"}, nil},
		{"del-set-flag", []string{"-del", "-set"}, []string{"auth_opt_clientid_conflict flag"}},
		{"defer-del-set-flag", []string{"-del", "-set"}, []string{"auth_opt_backend defer", "auth_opt_clientid_conflict flag"}},
		{"del-unlink", []string{"-del", "-unlink"}, []string{"auth_opt_clientid_conflict flag"}},
		{"keys-guard-only", []string{"resetkeys", "~guard:*"}, []string{"auth_opt_clientid_conflict flag"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := envWithoutBroker(t)
			args := append([]string{"ACL", "SETUSER", "g", "on", ">pw", "~*", "&*", "+@all"}, c.deny...)
			e.redis.CLI(args...)
			conf := e.conf(append([]string{"auth_opt_redis_username g", "auth_opt_redis_password pw"}, c.extra...)...)
			out := startExpectFail(t, conf)
			require.True(t, hasLine(out, "mosquitto-guard:", "NOPERM"), "no refusal named:\n%s", out)
			time.Sleep(100 * time.Millisecond)
			left := e.redis.CLI("--scan", "--pattern", "*settings-check*")
			for _, k := range strings.Fields(left) {
				t.Logf("left: %s type %s pttl %s", k, e.redis.CLI("TYPE", k), e.redis.CLI("PTTL", k))
			}
			require.Empty(t, left, "the start check left keys behind")
		})
	}
}

// Under backend defer with clientid_conflict off a read-only user passes.
func TestAtk67StartCheckReadOnlyUserDefer(t *testing.T) {
	e := envWithoutBroker(t)
	e.redis.CLI("ACL", "SETUSER", "ro", "on", ">pw", "~*", "&*", "+@all", "-@write")
	m := testenv.StartMosquitto(t, e.conf("auth_opt_backend defer", "auth_opt_clientid_conflict off",
		"auth_opt_redis_username ro", "auth_opt_redis_password pw", "password_file "+e.passwd))
	require.True(t, m.WaitOutput("mosquitto-guard: ready", 5*time.Second), "a read-only user refused:\n%s", m.Output())
	require.Empty(t, e.redis.CLI("--scan", "--pattern", "*settings-check*"))
}

// A guard:known:<user> key of another type: its write errors are logged at
// most once per 10 minutes and never mark Redis down (redis_unavailable
// deny keeps admitting).
func TestAtk67KnownWrongTypeOnceNoOutage(t *testing.T) {
	e := newEnv(t, "auth_opt_redis_unavailable deny")
	e.redis.CLI("SET", "guard:known:alice", "not a zset")
	for i := 0; i < 30; i++ {
		ip := fmt.Sprintf("127.67.110.%d", i+1)
		require.Equal(t, byte(accepted), e.connect(as(ip, fmt.Sprintf("k%d", i), "alice", "alice-pw")), "attempt %d refused", i)
		require.Equal(t, byte(accepted), e.connect(as(ip, fmt.Sprintf("b%d", i), "bob", "bob-pw")), "bob %d refused", i)
		if i == 15 {
			e.broker.Reload()
		}
		time.Sleep(50 * time.Millisecond)
	}
	out := e.broker.Output()
	n := 0
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "mosquitto-guard:") && strings.Contains(l, "WRONGTYPE") {
			n++
		}
	}
	t.Logf("WRONGTYPE lines: %d", n)
	require.LessOrEqual(t, n, 1, "WRONGTYPE logged %d times:\n%s", n, out)
	require.False(t, hasLine(out, "rule=redis-unavailable"), "Redis marked down")
}

// atk67Monitor runs redis-cli MONITOR against e's Redis and returns a stop
// function giving the commands seen (upper case, per caller "lua" or not).
func atk67Monitor(t *testing.T, e *env) func() (plain, lua map[string]int) {
	cmd := exec.Command("redis-cli", "-p", fmt.Sprint(e.redis.Port), "MONITOR")
	var buf strings.Builder
	cmd.Stdout = &buf
	require.NoError(t, cmd.Start())
	time.Sleep(200 * time.Millisecond)
	return func() (map[string]int, map[string]int) {
		time.Sleep(300 * time.Millisecond)
		cmd.Process.Kill()
		cmd.Wait()
		plain, lua := map[string]int{}, map[string]int{}
		re := regexp.MustCompile(`^\d+\.\d+ \[\d+ ([^\]]+)\] "([^"]+)"`)
		for _, l := range strings.Split(buf.String(), "\n") {
			m := re.FindStringSubmatch(l)
			if m == nil {
				continue
			}
			c := strings.ToUpper(m[2])
			if m[1] == "lua" {
				lua[c]++
			} else {
				plain[c]++
			}
		}
		return plain, lua
	}
}

// The commands the plugin runs in a busy scenario, against the README's
// start-check table for this configuration.
func TestAtk67CommandsRunVersusStartCheck(t *testing.T) {
	e := envWithoutBroker(t)
	stop := atk67Monitor(t, e)
	e.broker = startBroker(t, e.conf("auth_opt_clientid_conflict flag", "auth_opt_fail_limit 2", "auth_opt_username_fail_limit 3", "auth_opt_ban_time 2s"))
	c1, _ := e.dial(as("127.67.120.1", "shared", "alice", "alice-pw"))
	c2, _ := e.dial(as("127.67.120.2", "shared", "bob", "bob-pw"))
	for i := 0; i < 6; i++ {
		e.connect(as(fmt.Sprintf("127.67.121.%d", i+1), fmt.Sprintf("z%d", i), "alice", "bad"))
		e.connect(as("127.67.122.1", fmt.Sprintf("y%d", i), "bob", "bad"))
	}
	e.connect(as("127.67.120.1", "shared", "alice", "bad"))
	e.connect(as("127.67.120.3", "other", "alice", "alice-pw"))
	if c1 != nil {
		c1.Close()
	}
	if c2 != nil {
		c2.Close()
	}
	e.broker.Reload()
	time.Sleep(1500 * time.Millisecond)
	plain, lua := stop()
	t.Logf("plain: %v", plain)
	t.Logf("lua: %v", lua)
	table := map[string]bool{}
	for _, c := range strings.Fields("SCAN GET PTTL PEXPIRE DEL EVAL EVALSHA SET INCR TIME ZADD ZREMRANGEBYRANK ZRANGE HSET HINCRBY HGET HMGET HGETALL HEXISTS HDEL SADD SSCAN SREM ZSCORE ZRANGEBYSCORE ZREM XADD ZCARD ZREMRANGEBYSCORE HSETNX HLEN") {
		table[c] = true
	}
	// connection and replica upkeep the table does not claim to list
	for _, c := range strings.Fields("HELLO AUTH PING INFO CLIENT CONFIG SUBSCRIBE PSUBSCRIBE PUBLISH CLUSTER SELECT READONLY") {
		table[c] = true
	}
	var missing []string
	for c := range plain {
		if !table[c] {
			missing = append(missing, c)
		}
	}
	for c := range lua {
		if !table[c] {
			missing = append(missing, "lua:"+c)
		}
	}
	require.Empty(t, missing, "commands run that the start check's table does not list")
}

// Each command of the table, refused alone, stops the start naming it, and
// leaves no probe key behind for longer than a moment.
func TestAtk67EachTableCommandRefusedStops(t *testing.T) {
	cmds := strings.Fields("SCAN GET PTTL PEXPIRE DEL EVAL EVALSHA SET INCR TIME ZADD ZREMRANGEBYRANK ZRANGE HSET HINCRBY HGET HMGET HGETALL HEXISTS HDEL SADD SSCAN SREM ZSCORE ZRANGEBYSCORE ZREM XADD ZCARD ZREMRANGEBYSCORE HSETNX HLEN")
	for _, c := range cmds {
		t.Run(c, func(t *testing.T) {
			e := envWithoutBroker(t)
			e.redis.CLI("ACL", "SETUSER", "g", "on", ">pw", "~*", "&*", "+@all", "-"+strings.ToLower(c))
			conf := e.conf("auth_opt_redis_username g", "auth_opt_redis_password pw", "auth_opt_clientid_conflict flag")
			out := startExpectFail(t, conf)
			require.True(t, hasLine(out, "mosquitto-guard:", "NOPERM", strings.ToLower(c)), "%s not named:\n%s", c, out)
			time.Sleep(100 * time.Millisecond)
			require.Empty(t, e.redis.CLI("--scan", "--pattern", "*settings-check*"), "probe keys left")
		})
	}
}

// A ban flushed from Redis (FLUSHALL, then an empty restart), with SIGHUPs
// between: the guesser gets no fresh password checks on this broker.
func TestAtk67FlushGivesNoFreshChecks(t *testing.T) {
	for _, how := range []string{"flushall", "restart", "sighup+flushall"} {
		t.Run(how, func(t *testing.T) {
			e := newEnv(t, "auth_opt_fail_limit 3", "auth_opt_username_fail_limit 0", "auth_opt_ban_time 1m")
			ip := "127.67.130.1"
			for i := 0; i < 4; i++ {
				e.connect(as(ip, fmt.Sprintf("g%d", i), "alice", fmt.Sprintf("bad%d", i)))
			}
			eventually(t, 5*time.Second, func() bool { return e.redis.CLI("EXISTS", "guard:block:ip:"+ip) == "1" }, "no ban")
			checks := func() int {
				n := 0
				for _, l := range strings.Split(e.broker.Output(), "\n") {
					if strings.Contains(l, "event=refused ip="+ip+" rule=bad-password") {
						n++
					}
				}
				return n
			}
			before := checks()
			switch how {
			case "flushall":
				e.redis.CLI("FLUSHALL")
			case "restart":
				e.redis.Kill()
				e.redis.Restart()
			case "sighup+flushall":
				e.broker.Reload()
				e.redis.CLI("FLUSHALL")
				e.broker.Reload()
			}
			time.Sleep(1500 * time.Millisecond)
			for i := 0; i < 8; i++ {
				e.connect(as(ip, fmt.Sprintf("h%d", i), "alice", fmt.Sprintf("again%d", i)))
			}
			time.Sleep(300 * time.Millisecond)
			t.Logf("fresh checks after %s: %d", how, checks()-before)
			require.Equal(t, 0, checks()-before, "fresh password checks after %s", how)
		})
	}
}

// banned, auto_ban_lifted, throttled and kicked lines on hostile 65 535-byte
// client IDs and usernames stay bounded and parse.
func TestAtk67OtherEventLinesBounded(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_scopes ip,clientid,username", "auth_opt_fail_limit 2", "auth_opt_username_fail_limit 2", "auth_opt_ban_time 1m")
	id := strings.ToValidUTF8(strings.Repeat("\u2028"+atk67Marker+`" ip=10.6.6.6 `, 3000)[:65535], "")
	user := strings.ToValidUTF8(strings.Repeat(atk67Marker+"\u2029", 3000)[:65535], "")
	for i := 0; i < 5; i++ {
		e.connect(as(fmt.Sprintf("127.67.140.%d", i+1), id, user, "bad"))
	}
	eventually(t, 5*time.Second, func() bool { return hasLine(e.broker.Output(), "event=banned", "scope=clientid") }, "no clientid ban")
	// lift every automatic ban: auto_ban_lifted lines
	for _, k := range strings.Split(e.redis.CLI("--scan", "--pattern", "guard:block:*"), "\n") {
		if k != "" {
			e.redis.CLI("DEL", k)
		}
	}
	// a live hostile connection kicked by an operator's ban
	c, code := e.dial(as("127.67.141.1", id[:60000], "alice", "alice-pw"))
	require.Equal(t, byte(accepted), code)
	_ = c
	e.redis.CLI("SET", "guard:block:username:alice", "x")
	eventually(t, 5*time.Second, func() bool { return hasLine(e.broker.Output(), "event=kicked") }, "no kick")
	time.Sleep(500 * time.Millisecond)
	out := e.broker.Output()
	for _, ev := range []string{"event=banned", "event=auto_ban_lifted", "event=kicked"} {
		require.True(t, hasLine(out, ev), "no %s line", ev)
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "event=") {
			t.Logf("%d bytes: %.160s", len(l), l)
		}
	}
	atk67CheckLog(t, out, 1500)
}

// Redis hung while the broker starts: the broker starts (no configuration
// error), checks passwords meanwhile, and once Redis resumes bans work and
// no probe key is left.
func TestAtk67StartWithRedisHung(t *testing.T) {
	e := envWithoutBroker(t)
	require.NoError(t, syscall.Kill(e.redis.PID(), syscall.SIGSTOP))
	resumed := false
	defer func() {
		if !resumed {
			syscall.Kill(e.redis.PID(), syscall.SIGCONT)
		}
	}()
	m := testenv.StartMosquitto(t, e.conf("auth_opt_fail_limit 2", "auth_opt_username_fail_limit 0", "auth_opt_clientid_conflict flag"))
	e.broker = m
	require.True(t, m.WaitOutput("mosquitto-guard: ready", 15*time.Second), "not ready with Redis hung:\n%s", m.Output())
	require.Equal(t, byte(accepted), e.connect(as("127.67.160.1", "a", "alice", "alice-pw")))
	require.Equal(t, byte(refused), e.connect(as("127.67.160.2", "b", "alice", "bad")))
	require.NoError(t, syscall.Kill(e.redis.PID(), syscall.SIGCONT))
	resumed = true
	time.Sleep(1500 * time.Millisecond)
	ip := "127.67.161.1"
	for i := 0; i < 4; i++ {
		e.connect(as(ip, fmt.Sprintf("g%d", i), "alice", "bad"))
	}
	eventually(t, 5*time.Second, func() bool { return e.redis.CLI("EXISTS", "guard:block:ip:"+ip) == "1" }, "no ban after Redis resumed")
	left := e.redis.CLI("--scan", "--pattern", "*settings-check*")
	for _, k := range strings.Fields(left) {
		t.Logf("left: %s type %s pttl %s", k, e.redis.CLI("TYPE", k), e.redis.CLI("PTTL", k))
	}
	require.Empty(t, left, "probe keys left")
	atk67CheckLog(t, m.Output(), 1500)
}

// username_fail_limit 3: 60 parallel guesses at alice from 60 addresses,
// with and without Redis hung: at most 4 passwords checked.
func TestAtk67ParallelUsernameThrottle(t *testing.T) {
	for _, hang := range []bool{false, true} {
		t.Run(fmt.Sprint("hang=", hang), func(t *testing.T) {
			e := newEnv(t, "auth_opt_username_fail_limit 3", "auth_opt_fail_limit 1000")
			if hang {
				require.NoError(t, syscall.Kill(e.redis.PID(), syscall.SIGSTOP))
				defer syscall.Kill(e.redis.PID(), syscall.SIGCONT)
				time.Sleep(800 * time.Millisecond)
			}
			done := make(chan byte, 60)
			for i := 0; i < 60; i++ {
				go func(i int) {
					done <- e.connect(as(fmt.Sprintf("127.67.170.%d", i+1), fmt.Sprintf("q%d", i), "alice", fmt.Sprintf("bad%d", i)))
				}(i)
			}
			for i := 0; i < 60; i++ {
				require.Equal(t, byte(refused), <-done)
			}
			time.Sleep(300 * time.Millisecond)
			n := strings.Count(e.broker.Output(), "rule=bad-password")
			t.Logf("passwords checked: %d", n)
			require.LessOrEqual(t, n, 4)
		})
	}
}

// A Redis (or proxy) without HELLO: Redis echoes HELLO's arguments, AUTH
// and the password among them; no line carries them, and the plugin works.
func TestAtk67NoHelloEchoesPassword(t *testing.T) {
	testenv.Need(t, "mosquitto", "mosquitto_passwd", "redis-server", "redis-cli")
	e := &env{t: t, dir: t.TempDir()}
	e.redis = testenv.StartRedis(t, "--rename-command", "HELLO", "", "--requirepass", "Pw-atk67-SECRET")
	e.passwd = e.dir + "/passwd"
	for u, p := range users {
		e.addUser(u, p)
	}
	m := testenv.StartMosquitto(t, e.conf("auth_opt_redis_password Pw-atk67-SECRET", "auth_opt_fail_limit 2", "auth_opt_username_fail_limit 0"))
	e.broker = m
	ready := m.WaitOutput("mosquitto-guard: ready", 15*time.Second)
	time.Sleep(500 * time.Millisecond)
	require.NotContains(t, m.Output(), "Pw-atk67-SECRET", "the password in the broker's log")
	require.NotContains(t, m.Output(), "atk67-SECRET")
	if ready {
		require.Equal(t, byte(accepted), e.connect(as("127.67.180.1", "a", "alice", "alice-pw")))
	}
	t.Logf("ready=%v", ready)
	for _, l := range strings.Split(m.Output(), "\n") {
		if strings.Contains(l, "mosquitto-guard:") {
			t.Logf("%.250s", l)
		}
	}
}

// The 200-byte cut at a character boundary: valid UTF-8, the full length
// given exactly when cut, never for a value of 200 bytes.
func TestAtk67CutAtCharacterBoundary(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 1000", "auth_opt_username_fail_limit 0")
	cases := map[string]string{
		"200":  strings.Repeat("a", 200),
		"201":  strings.Repeat("a", 201),
		"199e": strings.Repeat("a", 199) + "\u2028",  // 202 bytes, char straddles 200
		"198e": strings.Repeat("a", 198) + "é" + "z", // 201: é ends at 200
	}
	i := 0
	for name, id := range cases {
		i++
		ip := fmt.Sprintf("127.67.190.%d", i)
		require.Equal(t, byte(refused), e.connect(as(ip, id, "alice", "bad")))
		l := e.logLine("event=refused", "ip="+ip+" ")
		f, err := logline.Parse(l)
		require.NoError(t, err)
		v := f.Get("client_id")
		require.True(t, utf8.ValidString(v), "%s: invalid UTF-8 %q", name, v)
		require.True(t, strings.HasPrefix(id, v), "%s: not a prefix", name)
		require.LessOrEqual(t, len(v), 200, name)
		if len(id) > 200 {
			require.Equal(t, fmt.Sprint(len(id)), f.Get("client_id_bytes"), "%s: %s", name, l)
		} else {
			require.Equal(t, id, v, name)
			require.Empty(t, f.Get("client_id_bytes"), "%s: %s", name, l)
		}
	}
}
