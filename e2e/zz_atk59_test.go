package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// atk59: a hostile pass on 482b37e and 57d545c (the start check's key and
// PING refusals; a Redis username needs a password) and 50b92ff (log
// redaction outside double quotes).

// atk59ACLUserBans starts a broker (fail_limit 3) as the Redis ACL user
// guard59 with rules, makes four wrong guesses from 127.0.59.1 and then one
// right one; it returns whether the broker started, whether the IP's
// automatic ban reached Redis, the right guess's CONNACK and the broker's
// output.
func atk59ACLUserBans(t *testing.T, rules ...string) (started, banned bool, code byte, out string) {
	t.Helper()
	e := envWithoutBroker(t)
	e.redis.CLI(append([]string{"ACL", "SETUSER", "guard59", "on", ">k59-secret"}, rules...)...)
	return atk59Bans(t, e, "auth_opt_redis_username guard59", "auth_opt_redis_password k59-secret")
}

// atk59Bans is atk59ACLUserBans's run on e's Redis with extra options.
func atk59Bans(t *testing.T, e *env, extra ...string) (started, banned bool, code byte, out string) {
	t.Helper()
	conf := e.conf(append([]string{"auth_opt_fail_limit 3"}, extra...)...)
	exited, startOut := atk55Run(t, conf, 2500*time.Millisecond)
	if exited {
		return false, false, 255, startOut
	}
	e.broker = startBroker(t, conf)
	for i := range 4 {
		e.connect(as("127.0.59.1", fmt.Sprintf("atk59-guess-%d", i), "alice", "wrong"))
	}
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) && !banned {
		banned = e.redis.CLI("EXISTS", "guard:block:ip:127.0.59.1") == "1"
		time.Sleep(50 * time.Millisecond)
	}
	code = e.connect(as("127.0.59.1", "atk59-right", "alice", "alice-pw"))
	return true, banned, code, e.broker.Output()
}

// DEFECT (false negative of the start check; failed 3 of 3 runs, every
// case). README, Managed Redis: "the plugin then asks Redis once more at
// start ..., and stops the broker the same way when Redis's answer says
// the other settings are wrong" (before, such settings "let the broker
// start with Redis down for good, its bans never applied and no option
// named"); 482b37e: an ACL user that may not read the keys under
// key_prefix stops the broker naming redis_username, whose line asks for
// "a user that ... lets read and write the keys under key_prefix".
// Three Redis 7 users that PING and GET guard:settings-check pass, but that
// may not count a failure, no retry mending it:
//   - ~guard:* alone, the natural reading of "the keys under key_prefix":
//     the failure counters are rate:guard:... (redis_rate's own "rate:"
//     prefix; README's explain user lists ~rate:guard:* too);
//   - read-only key patterns (%R~guard:* %R~rate:guard:*): GET passes,
//     every write is refused;
//   - README's own guardctl-explain user (-@all +@read +time +ping, &*
//     added), reused for the plugin: EVALSHA and SET refused.
//
// Observed: the broker starts, no option named; each failure logs "redis at
// ... unreachable (ratelimit: count failure: NOPERM ...)" then "is back"
// (PING answers), and no automatic ban is ever written to Redis: the
// failures are counted on this broker only (its right guess is refused
// here), so no other broker, no restart and no guardctl list sees the ban,
// while the log calls an answering Redis unreachable.
// Expected: the broker stops naming redis_username (as for a GET refused),
// or else the IP's ban reaches Redis. Cause: store/settings.go
// CheckSettings tries one GET under key_prefix only, no write and no rate:
// key, and lets a refused command pass.
func TestAtk59ACLUserThatCannotCountFailuresStarts(t *testing.T) {
	testenv.Need(t, "mosquitto", "redis-server", "redis-cli", "stdbuf")
	for _, c := range []struct {
		name  string
		rules []string
	}{
		{"no rate keys", []string{"~guard:*", "&*", "+@all"}},
		{"read-only keys", []string{"%R~guard:*", "%R~rate:guard:*", "&*", "+@all"}},
		{"explain user", []string{"resetchannels", "~guard:*", "~rate:guard:*", "&*", "-@all", "+@read", "+time", "+ping"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			started, banned, code, out := atk59ACLUserBans(t, c.rules...)
			t.Logf("started=%v banned=%v CONNACK of the right guess=%d; %s; %s", started, banned, code,
				atk57OptionLine(out), findLine(out, "unreachable"))
			if !started {
				assert.Contains(t, atk57OptionLine(out), "option redis_username", "stopped, naming:\n%s", out)
				return
			}
			assert.True(t, banned, "the broker started with a Redis user that may not count failures, and 4 wrong guesses (fail_limit 3) banned nothing")
		})
	}
}

// HOLDS (control; passed 4 of 4). The same with ~guard:* ~rate:guard:* +@all: the IP is
// banned and its right guess refused.
func TestAtk59ACLUserControlBans(t *testing.T) {
	testenv.Need(t, "mosquitto", "redis-server", "redis-cli", "stdbuf")
	started, banned, code, out := atk59ACLUserBans(t, "~guard:*", "~rate:guard:*", "&*", "+@all")
	assert.True(t, started && banned, "control: started=%v banned=%v\n%s", started, banned, out)
	assert.EqualValues(t, refused, code, "control: the banned IP's right guess")
}

// HOLDS (passed 3 of 3). 482b37e and 57d545c must not stop a broker whose Redis user has
// the rights the plugin needs: Redis 7 users without INFO or CONFIG
// (-@dangerous), with only the categories the plugin uses, with a
// redis_db other than 0 and +select, with the rate: keys in a selector,
// and with the key patterns read-write spelled %RW~. Each starts (no exit
// within 2.5 s, no option line).
func TestAtk59MinimalRedisUsersStart(t *testing.T) {
	testenv.Need(t, "mosquitto", "redis-server", "redis-cli", "stdbuf")
	e := envWithoutBroker(t)
	for i, c := range []struct {
		name  string
		rules []string
		extra []string
	}{
		{"no dangerous", []string{"~guard:*", "~rate:guard:*", "&*", "+@all", "-@dangerous"}, nil},
		// +time: redis_rate's script calls TIME, in no category above
		// (atk61: without it the first counted failure is refused).
		{"categories", []string{"~guard:*", "~rate:guard:*", "&*", "-@all", "+@read", "+@write", "+@scripting", "+@pubsub", "+@connection", "+@keyspace", "+@transaction", "+time"}, nil},
		{"db 3", []string{"~guard:*", "~rate:guard:*", "&*", "+@all"}, []string{"auth_opt_redis_db 3"}},
		{"selector", []string{"~guard:*", "&*", "+@all", "(~rate:guard:* +@all)"}, nil},
		{"RW patterns", []string{"%RW~guard:*", "%RW~rate:guard:*", "&*", "+@all"}, nil},
		{"other prefix", []string{"~t59:*", "~rate:t59:*", "&*", "+@all"}, []string{"auth_opt_key_prefix t59:"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			user := fmt.Sprintf("min59-%d", i)
			e.redis.CLI(append([]string{"ACL", "SETUSER", user, "on", ">m59-secret"}, c.rules...)...)
			conf := e.conf(append([]string{"auth_opt_redis_username " + user, "auth_opt_redis_password m59-secret"}, c.extra...)...)
			exited, out := atk55Run(t, conf, 2500*time.Millisecond)
			assert.False(t, exited, "a Redis user with the rights needed: the broker should start; %s\n%s", atk57OptionLine(out), out)
			assert.Contains(t, out, "mosquitto-guard: ready")
			_ = strings.Contains
		})
	}
}

// atk59EchoAfterStart starts a broker with password pw and extra options
// while its Redis (AUTH and HELLO renamed away: Redis echoes both
// commands' arguments, the password among them) is down, so that the start
// check finds nothing to say, then starts that Redis, and returns the
// broker's output after 4 s.
func atk59EchoAfterStart(t *testing.T, pw string, extra ...string) string {
	t.Helper()
	e := envWithoutBroker(t)
	e.redis.Stop()
	e.redis = testenv.StartRedis(t, "--rename-command", "AUTH", "", "--rename-command", "HELLO", "")
	e.redis.Stop()
	conf := e.conf(append([]string{"auth_opt_redis_password " + pw}, extra...)...)
	e.broker = startBroker(t, conf)
	e.redis.Restart()
	time.Sleep(4 * time.Second)
	return e.broker.Output()
}

// DEFECT (a password in the broker's log; failed 3 of 3 runs). README,
// Managed Redis: "Redis echoes a refused command's arguments ...: no log
// line of the plugin carries that echo" (atk56; ac8eb06); 50b92ff:
// store.RedactArgsInLine cuts the echo only outside double quotes, on the
// ground that "Redis's errors are never quoted in the plugin's lines".
// But some lines put an operator's value unquoted before Redis's error:
// the replica's "cannot keep the flush mark "+key_prefix+"epoch (<error>)".
// A key_prefix holding one '"' (any byte is a valid key; README sets no
// rule on it) opens a "quote" the line never closes, and the echo after it
// is kept whole. Set-up: the broker starts while Redis is down (the start
// check, which would stop it for the missing AUTH, finds Redis unreachable
// and lets it start, as README says), then Redis comes up with AUTH and
// HELLO renamed away (a Redis restarted with another configuration).
// Observed, in the broker's log: "replica: cannot keep the flush mark
// g"59:epoch (ERR unknown command 'auth', with args beginning with:
// 'Pw59-Secret-Zq' ); ..." and "replica: Redis refused the subscription to
// keyspace notifications and g"59:changes (subscribe: failed to
// authenticate: ERR unknown command 'auth', with args beginning with:
// 'Pw59-Secret-Zq' ): ...". With key_prefix guard: (control) the same line shows
// "(arguments not shown)".
// Cause: store/store.go RedactArgsInLine (quote state carried in from a
// value the plugin does not quote), store/replica/flush.go (the flush
// mark's line) and store/replica/sync.go (the subscription's line): the
// prefix unquoted before the error.
func TestAtk59QuoteInKeyPrefixRevealsEchoedPassword(t *testing.T) {
	testenv.Need(t, "mosquitto", "redis-server", "redis-cli", "stdbuf")
	const pw = "Pw59-Secret-Zq"
	out := atk59EchoAfterStart(t, pw, `auth_opt_key_prefix g"59:`)
	t.Logf("lines with the echo's command:\n%s", grepLines(out, "unknown command"))
	assert.NotContains(t, out, pw, "the password in the broker's log")
}

// HOLDS (control of the above; passed 3 of 3). With the default key_prefix the same
// Redis's echo is cut from every line.
func TestAtk59EchoAfterStartRedacted(t *testing.T) {
	testenv.Need(t, "mosquitto", "redis-server", "redis-cli", "stdbuf")
	const pw = "Pw59-Secret-Zq"
	out := atk59EchoAfterStart(t, pw)
	t.Logf("lines with the echo's command:\n%s", grepLines(out, "unknown command"))
	assert.NotContains(t, out, pw, "the password in the broker's log")
	assert.Contains(t, out, "unknown command 'auth'", "the set-up: Redis refused AUTH after the start")
}

// DEFECT (false negative of the start check; failed 3 of 3 runs). 57d545c:
// a Redis user that may not run PING, "a refusal no retry mends", stops
// the broker naming redis_username; README, Managed Redis: the start
// "stops the broker ... when Redis's answer says the other settings are
// wrong". On a Redis Cluster (several redis_addr), go-redis asks CLUSTER
// SLOTS before any command; a Redis 7 user given the categories the plugin
// uses (+@read +@write +@scripting +@pubsub +@connection +@keyspace
// +@transaction, which start a single Redis: TestAtk59MinimalRedisUsersStart)
// may not run it: every command, PING included, is refused with
// "NOPERM ... 'cluster|slots' command", and no retry mends it.
// Observed: the broker starts; "redis at <seeds> unreachable (store: ping:
// NOPERM this user has no permissions to run the 'cluster|slots'
// command)", for good (redis_unavailable allow: no ban applies; deny:
// every client refused), and the replica's line blames the channels ("give
// the plugin's Redis user the channels (ACL: &* or allchannels)"), no
// option named.
// Expected: the broker stops with one line naming redis_username, as for
// PING. Cause: store/settings.go settingsFault knows NOPERM for SELECT and
// PING only; CheckSettings returns nil for this PING error.
func TestAtk59ClusterUserWithoutClusterSlotsStarts(t *testing.T) {
	testenv.Need(t, "mosquitto", "redis-server", "redis-cli", "stdbuf")
	e := envWithoutBroker(t)
	c := testenv.StartRedisCluster(t, 2)
	for _, n := range c.Nodes {
		n.CLI("ACL", "SETUSER", "cl59", "on", ">c59-secret", "~guard:*", "~rate:guard:*", "&*", "-@all",
			"+@read", "+@write", "+@scripting", "+@pubsub", "+@connection", "+@keyspace", "+@transaction")
	}
	conf := "allow_anonymous false\nauth_plugin " + pluginPath + "\nauth_opt_redis_addr " + c.Addrs + "\nauth_opt_password_file " + e.passwd +
		"\nauth_opt_redis_username cl59\nauth_opt_redis_password c59-secret\n"
	exited, out := atk55Run(t, conf, 4*time.Second)
	t.Logf("exited=%v; option line %q; health line %q", exited, atk57OptionLine(out), findLine(out, "mosquitto-guard: redis at"))
	assert.True(t, exited && strings.Contains(atk57OptionLine(out), "option redis_username"),
		"a cluster user that may not run CLUSTER SLOTS: the broker should stop naming redis_username; exited=%v:\n%s", exited, out)
}

// DEFECT (false negative of the start check; failed 3 of 3 runs). As
// above, through sentinels: a sentinel ACL user (redis_sentinel_username,
// with its password) that may not run SENTINEL get-master-addr-by-name
// (here -@all +ping +auth +hello) is refused by every sentinel, for good.
// Observed: the broker starts, "redis at master "mymaster" of the
// sentinels ... unreachable (store: ping: redis: all sentinels specified
// in configuration are unreachable: NOPERM this user has no permissions to
// run the 'sentinel|get-master-addr-by-name' command)" and the replica's
// lines, no option named (the sentinels answered; they are not
// unreachable).
// Expected: the broker stops naming redis_sentinel_username. Cause:
// store/settings.go settingsFault (a NOPERM from the sentinels is none of
// its faults).
func TestAtk59SentinelUserWithoutSentinelCommandStarts(t *testing.T) {
	testenv.Need(t, "mosquitto", "redis-server", "redis-cli", "stdbuf")
	e := envWithoutBroker(t)
	s := testenv.StartSentinel(t, testenv.SentinelOptions{Sentinels: 1, Quorum: 1})
	for _, sn := range s.Sentinels {
		sn.CLI("ACL", "SETUSER", "sen59", "on", ">s59-secret", "-@all", "+ping", "+auth", "+hello")
	}
	conf := "allow_anonymous false\nauth_plugin " + pluginPath + "\nauth_opt_redis_addr " + s.Addrs + "\nauth_opt_password_file " + e.passwd +
		"\nauth_opt_redis_sentinel_master " + s.Name + "\nauth_opt_redis_sentinel_username sen59\nauth_opt_redis_sentinel_password s59-secret\n"
	exited, out := atk55Run(t, conf, 4*time.Second)
	t.Logf("exited=%v; option line %q; health line %q", exited, atk57OptionLine(out), findLine(out, "mosquitto-guard: redis at"))
	assert.True(t, exited && strings.Contains(atk57OptionLine(out), "option redis_sentinel_username"),
		"a sentinel user that may not ask for the master: the broker should stop naming redis_sentinel_username; exited=%v:\n%s", exited, out)
}

// DEFECT (a password in the broker's log; failed 3 of 3 runs). README,
// From mosquitto-go-auth: "an unknown option's value is never shown, so a
// misspelt password option does not leak; nor is redis_password's". A tab
// between the option and its value (a config aligned with tabs) does not
// separate them for Mosquitto, which splits on spaces only: with a space
// further on the line ("auth_opt_redis_password<TAB>S3cretTab59 x", or any
// password holding a space), Mosquitto hands the plugin an option named
// "redis_password\tS3cretTab59" and says nothing itself.
// Observed: `mosquitto-guard: option "redis_password\tS3cretTab59":
// unknown option (known options: ...)`: the password, in the broker's log.
// (Without the space, Mosquitto itself logs "Empty redis_password
// S3cretTab59 value": not the plugin's line.)
// guardctl --config on the same file prints the same line on stderr, and on
// the file without the space its own "empty redis_password\tS3cretTab59
// value (a tab does not separate an option from its value)".
// Expected: the unknown option named without what follows its tab (or the
// line refused without showing it). Cause: config/unknown.go UnknownOption
// (quoteOdd shows the whole name); config/brokerconf.go option (the empty
// value's line shows the name whole).
func TestAtk59TabSeparatedPasswordOptionShown(t *testing.T) {
	testenv.Need(t, "mosquitto", "stdbuf")
	conf := "allow_anonymous false\nauth_plugin " + pluginPath + "\nauth_opt_redis_addr 127.0.0.1:1\n" +
		"auth_opt_redis_password\tS3cretTab59 x\n"
	exited, out := atk55Run(t, conf, 3*time.Second)
	t.Logf("exited=%v; %s", exited, findLine(out, "S3cretTab59"))
	assert.True(t, exited, "the broker should stop on the unknown option")
	assert.NotContains(t, out, "S3cretTab59", "the password in the broker's log")
	gc := guardctlPath(t)
	for _, c := range []string{conf, strings.TrimSuffix(conf, " x\n") + "\n"} {
		path := t.TempDir() + "/m.conf"
		require.NoError(t, os.WriteFile(path, []byte(c), 0o600))
		b, _ := exec.Command(gc, "list", "--config", path).CombinedOutput()
		t.Logf("guardctl: %.160q", b)
		assert.NotContains(t, string(b), "S3cretTab59", "the password in guardctl's output")
	}
}

// DEFECT (false negative of the start check; failed 3 of 3 runs, both
// cases). 57d545c stops the broker for a user that may not run PING, "a
// refusal no retry mends" (the health probe asks PING every 200 ms); README,
// Managed Redis: the start stops the broker "when Redis's answer says the
// other settings are wrong" (no AUTH command is such an answer). Managed
// and hardened Redis servers rename or disable commands:
//   - PING renamed away: "ERR unknown command 'ping'" at every probe, for
//     good; the broker starts, logs "redis at ... unreachable (store: ping:
//     ERR unknown command 'ping' (arguments not shown))" and runs with Redis
//     down for ever (redis_unavailable deny: every client refused), no
//     option named;
//   - EVAL and EVALSHA renamed away (Lua scripting disabled): the broker
//     starts silently ("connected to redis"), and no failure is counted in
//     Redis: 4 wrong guesses with fail_limit 3 write no ban (the broker
//     counts them alone, as while Redis is down).
//
// Expected: the broker stops with one line naming an option (redis_addr:
// this Redis cannot serve the plugin), as for a Redis without AUTH.
// Cause: store/settings.go settingsFault knows unknown 'select' and 'auth'
// only; CheckSettings runs no script.
func TestAtk59RenamedCommandsStart(t *testing.T) {
	testenv.Need(t, "mosquitto", "redis-server", "redis-cli", "stdbuf")
	t.Run("PING renamed", func(t *testing.T) {
		r := testenv.StartRedis(t, "--rename-command", "PING", "")
		conf := "allow_anonymous false\nauth_plugin " + pluginPath + "\nauth_opt_redis_addr " + r.Addr + "\nauth_opt_redis_unavailable deny\n"
		exited, out := atk55Run(t, conf, 3*time.Second)
		t.Logf("exited=%v; option line %q; health line %q", exited, atk57OptionLine(out), findLine(out, "mosquitto-guard: redis at"))
		assert.True(t, exited && atk57OptionLine(out) != "", "PING renamed away: the broker should stop naming an option; exited=%v:\n%s", exited, out)
	})
	t.Run("scripting disabled", func(t *testing.T) {
		e := envWithoutBroker(t)
		e.redis.Stop()
		e.redis = testenv.StartRedis(t, "--rename-command", "EVALSHA", "", "--rename-command", "EVAL", "")
		started, banned, code, out := atk59Bans(t, e)
		t.Logf("started=%v banned=%v CONNACK of the right guess=%d; %s; %s", started, banned, code,
			atk57OptionLine(out), findLine(out, "unreachable"))
		if !started {
			assert.NotEmpty(t, atk57OptionLine(out), "stopped, naming:\n%s", out)
			return
		}
		assert.True(t, banned, "the broker started on a Redis without scripting, and 4 wrong guesses (fail_limit 3) banned nothing in Redis")
	})
}

// HOLDS (passed 3 of 3). ac8eb06/50b92ff: no guardctl output carries
// Redis's echo of the password. atk57 ran list; here every other command
// (explain, ban, unban, allow, unallow, audit, with --json where it has
// it) against a Redis with AUTH and HELLO renamed away, a username set and
// the password from GUARD_REDIS_PASSWORD and from --config (a
// mosquitto.conf whose redis_password holds a '"', which
// RedactArgsInLine would take for a quote). Exit status 1, no part of the
// password on stdout or stderr.
func TestAtk59GuardctlCommandsNeverEchoPassword(t *testing.T) {
	testenv.Need(t, "redis-server", "redis-cli")
	gc := guardctlPath(t)
	r := testenv.StartRedis(t, "--rename-command", "AUTH", "", "--rename-command", "HELLO", "")
	const pw = `Gc59"Sec ret`
	confPath := t.TempDir() + "/m.conf"
	require.NoError(t, os.WriteFile(confPath, []byte("auth_plugin /x/mosquitto_guard.so\nauth_opt_redis_addr "+r.Addr+
		"\nauth_opt_redis_username gc59\nauth_opt_redis_password "+pw+"\nauth_opt_key_prefix g\"59:\n"), 0o600))
	cmds := [][]string{
		{"explain", "--ip", "192.0.2.9", "--clientid", "d1", "--username", "alice"},
		{"ban", "ip", "192.0.2.9", "--for", "1h"},
		{"unban", "ip", "192.0.2.9"},
		{"allow", "clientid", "d1"},
		{"unallow", "clientid", "d1"},
		{"audit"},
		{"audit", "--json"},
		{"list", "--json"},
	}
	for _, c := range cmds {
		for _, how := range []string{"env", "config"} {
			args := append([]string{}, c...)
			cmd := exec.Command(gc)
			cmd.Env = os.Environ()
			if how == "env" {
				args = append(args, "--redis-addr", r.Addr, "--redis-username", "gc59")
				cmd.Env = append(cmd.Env, "GUARD_REDIS_PASSWORD="+pw)
			} else {
				args = append(args, "--config", confPath)
			}
			cmd.Args = append([]string{gc}, args...)
			b, _ := cmd.CombinedOutput()
			t.Logf("%s %v: rc %d: %.200q", how, c, cmd.ProcessState.ExitCode(), b)
			assert.Equal(t, 1, cmd.ProcessState.ExitCode(), "%s %v: a runtime error", how, c)
			for _, part := range []string{"Gc59", "Sec ret"} {
				assert.NotContains(t, string(b), part, "%s %v: a part of the password in guardctl's output", how, c)
			}
		}
	}
}

// HOLDS (passed 3 of 3). 50b92ff: a client's own quoted values are kept
// whole, so that a client cannot trim its refusal line. Clients whose IDs
// and usernames hold Redis's marker text, lone and escaped quotes and
// backslashes, one over 200 bytes (cut by the line), refused for a wrong
// password (an unknown user): each refusal line in the broker's log keeps its ip=, rule=,
// client_id= and username= fields, the username after the crafted ID.
func TestAtk59CraftedClientValuesKeepRefusalLine(t *testing.T) {
	e := newEnv(t)
	m := ", with args beginning with:"
	ids := []string{"a" + m + " 'x'", `q"` + m, `b\` + m + `"`, strings.Repeat(`"`, 210) + m, m}
	for i, id := range ids {
		user := fmt.Sprintf(`u59-%d"%s`, i, m)
		code := e.connect(client{ip: "127.0.59.7", id: id, user: str(user), pass: str("wrong")})
		require.EqualValues(t, refused, code)
		wantUser := "username=" + logval.Go(user) // Go syntax, the echo's comma escaped (83fef8b)
		l := e.logLine(wantUser)
		t.Logf("%.300s", l)
		assert.Contains(t, l, "ip=127.0.59.7", "the IP hidden")
		assert.Contains(t, l, "rule=unknown-user", "the rule hidden")
		assert.Contains(t, l, "client_id=", "the client ID hidden")
		assert.NotContains(t, l, "(arguments not shown)", "a client's value cut as Redis's echo")
	}
}

// DEFECT (false negative of the start check; failed 3 of 3 runs). README,
// Managed Redis: "the one redis_addr is a read-only replica (role:slave)"
// stops the broker naming redis_addr. The check reads the role from INFO,
// and "a user without INFO rights is not checked further" (store/settings.go);
// +@all -@dangerous, a common hardened user (README's Sentinel section names
// users "without @dangerous"), has no INFO. Such a user on a replica:
// Observed: the broker starts ("connected to redis", "ready"), no option
// named; its writes are refused ("replica: cannot keep the flush mark
// guard:epoch (READONLY You can't write against a read only replica.)").
// Expected: the broker stops naming redis_addr, as with INFO. Cause:
// store/settings.go CheckSettings (the replica is told by INFO alone; no
// write is tried).
func TestAtk59ReplicaUserWithoutInfoStarts(t *testing.T) {
	testenv.Need(t, "mosquitto", "redis-server", "redis-cli", "stdbuf")
	e := envWithoutBroker(t)
	master := e.redis
	replica := testenv.StartRedis(t, "--replicaof", "127.0.0.1", strconv.Itoa(master.Port))
	eventually(t, 10*time.Second, func() bool {
		return strings.Contains(replica.CLI("INFO", "replication"), "master_link_status:up")
	}, "the replica did not sync")
	replica.CLI("ACL", "SETUSER", "rep59", "on", ">r59-secret", "~*", "&*", "+@all", "-@dangerous")
	conf := e.conf("auth_opt_redis_username rep59", "auth_opt_redis_password r59-secret")
	conf = strings.Replace(conf, "auth_opt_redis_addr "+master.Addr, "auth_opt_redis_addr "+replica.Addr, 1)
	exited, out := atk55Run(t, conf, 3*time.Second)
	t.Logf("exited=%v; option line %q; %q", exited, atk57OptionLine(out), findLine(out, "READONLY"))
	assert.True(t, exited && strings.Contains(atk57OptionLine(out), "option redis_addr"),
		"a read-only replica, as a user without INFO: the broker should stop naming redis_addr; exited=%v:\n%s", exited, out)
}

// HOLDS (passed 3 of 3). 57d545c through sentinels: the master's user
// (redis_username) may not run PING; the sentinels answer, the master
// refuses PING: the broker stops naming redis_username, the password not
// shown.
func TestAtk59NoPingUserThroughSentinelsStops(t *testing.T) {
	testenv.Need(t, "mosquitto", "redis-server", "redis-cli", "stdbuf")
	e := envWithoutBroker(t)
	s := testenv.StartSentinel(t, testenv.SentinelOptions{Sentinels: 1, Quorum: 1})
	s.Master().CLI("ACL", "SETUSER", "np59", "on", ">np59-Secret", "~*", "&*", "+@all", "-ping")
	conf := "allow_anonymous false\nauth_plugin " + pluginPath + "\nauth_opt_redis_addr " + s.Addrs + "\nauth_opt_password_file " + e.passwd +
		"\nauth_opt_redis_sentinel_master " + s.Name + "\nauth_opt_redis_username np59\nauth_opt_redis_password np59-Secret\n"
	exited, out := atk55Run(t, conf, 4*time.Second)
	t.Logf("exited=%v; option line %q", exited, atk57OptionLine(out))
	assert.True(t, exited && strings.Contains(atk57OptionLine(out), "option redis_username"), "exited=%v:\n%s", exited, out)
	assert.NotContains(t, out, "np59-Secret")
}
