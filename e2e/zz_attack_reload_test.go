package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
)

// zzWriteUsers rewrites the password file, by rename, as lines plus n
// filler users (200 000 take about a second to read).
func (e *env) zzWriteUsers(n int, lines ...string) {
	e.t.Helper()
	f, err := os.Create(e.passwd + ".zz")
	require.NoError(e.t, err)
	w := bufio.NewWriter(f)
	for _, l := range lines {
		fmt.Fprintln(w, l)
	}
	filler := "$7$101$AAAAAAAAAAAAAAAA$" + strings.Repeat("A", 86) + "=="
	for i := 0; i < n; i++ {
		fmt.Fprintf(w, "filler%07d:%s\n", i, filler)
	}
	require.NoError(e.t, w.Flush())
	require.NoError(e.t, f.Close())
	require.NoError(e.t, os.Rename(e.passwd+".zz", e.passwd))
}

// zzPingWorst pings c every 10 ms until stop is closed and returns the
// longest wait for a PINGRESP.
func zzPingWorst(ctx context.Context, c interface {
	Ping(context.Context) error
}, stop <-chan struct{}) <-chan time.Duration {
	res := make(chan time.Duration, 1)
	go func() {
		var worst time.Duration
		for {
			select {
			case <-stop:
				res <- worst
				return
			default:
			}
			start := time.Now()
			if err := c.Ping(ctx); err != nil {
				res <- time.Hour
				return
			}
			if d := time.Since(start); d > worst {
				worst = d
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	return res
}

// TestZZRehashDuringLateReadCachedClientIsKicked: alice's password is
// changed in a file whose read outlasts the 100 ms. A client that connects
// with the OLD password while the file is read is admitted (README: "Until
// then CONNECTs are checked against the users loaded before"), here from
// the verification cache; once the file is in force it must be kicked
// ("the clients whose password the plugin checked as a user that file ...
// rehashes are disconnected") and the old password must be refused.
func TestZZRehashDuringLateReadCachedClientIsKicked(t *testing.T) {
	e := newEnv(t)
	aliceOld := passwdLine(t, "alice", "alice-pw")
	aliceNew := passwdLine(t, "alice", "alice-NEW")
	bob := passwdLine(t, "bob", "bob-pw")
	e.zzWriteUsers(200_000, aliceOld, bob)
	e.reloaded()
	e.logLine("loaded 200002 users")

	before, code := e.dial(as("127.0.71.1", "alice-before", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)

	e.zzWriteUsers(200_000, aliceNew, bob)
	start := time.Now()
	e.reloaded()
	during, code := e.dial(as("127.0.71.2", "alice-during", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code, "old password refused before the file was in force")
	require.NotContains(t, e.broker.Output(), "loaded 200002 users\n", "no window")
	eventually(t, 20*time.Second, func() bool { return strings.Count(e.broker.Output(), "loaded 200002 users") >= 2 }, "never loaded")
	t.Logf("file in force %v after SIGHUP", time.Since(start).Round(time.Millisecond))
	assert.True(t, before.Closed(5*time.Second), "alice connected before the SIGHUP with the old password stays")
	assert.True(t, during.Closed(5*time.Second), "alice connected during the read with the old password stays")
	assert.EqualValues(t, refused, e.connect(as("127.0.71.3", "alice-after", "alice", "alice-pw")), "old password still works")
	assert.EqualValues(t, accepted, e.connect(as("127.0.71.4", "alice-new", "alice", "alice-NEW")))
}

// TestZZPasswordFileReplacedByAFifo: a FIFO is never waited on (README
// Options: "a named pipe or device is refused at once, never waited on").
// The file swapped between a regular file and a FIFO while SIGHUPs arrive
// must leave the broker answering and a later regular file in force.
func TestZZPasswordFileReplacedByAFifo(t *testing.T) {
	e := newEnv(t)
	alice, code := e.dial(as("127.0.72.1", "alice-dev", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	fifo := filepath.Join(e.dir, "fifo")
	regular := filepath.Join(e.dir, "regular")
	data, err := os.ReadFile(e.passwd)
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	stop := make(chan struct{})
	worst := zzPingWorst(ctx, alice, stop)
	deadline := time.Now().Add(3 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		_ = os.Remove(fifo)
		require.NoError(t, syscall.Mkfifo(fifo, 0o600))
		require.NoError(t, os.Rename(fifo, e.passwd))
		if i%3 == 0 {
			e.broker.Reload()
		}
		require.NoError(t, os.WriteFile(regular, data, 0o600))
		require.NoError(t, os.Rename(regular, e.passwd))
		if i%3 == 1 {
			e.broker.Reload()
		}
		time.Sleep(2 * time.Millisecond)
	}
	close(stop)
	w := <-worst
	t.Logf("worst PING during the FIFO storm: %v", w.Round(time.Millisecond))
	assert.Less(t, w, 500*time.Millisecond)

	// A regular file with carol, then SIGHUP: carol gets in.
	e.addUser("carol", "carol-pw")
	time.Sleep(500 * time.Millisecond)
	e.reloaded()
	eventually(t, 10*time.Second, func() bool {
		return e.connect(as("127.0.72.2", "carol-dev", "carol", "carol-pw")) == accepted
	}, "a regular file after the FIFO storm is never put in force:\n%s", tail(e.broker.Output(), 40))
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	l := strings.Split(s, "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// TestZZBadLinesNeverLogSecrets: a password file with bad lines (a
// plaintext password, broken hashes) is loaded; README: "A malformed line
// is skipped with one log line naming the file and line number (never its
// content)"; Log lines: "Never a password".
func TestZZBadLinesNeverLogSecrets(t *testing.T) {
	e := newEnv(t)
	good := passwdLine(t, "alice", "alice-pw")
	lines := []string{
		"mallory:PlainSecret1",
		"trent:$7$101$SaltSecret2$HashSecret3",
		"victor:$6$SaltSecret4$HashSecret5",
		"walter:$2b$04$SaltSecret6",
		"PlainSecret7",
		"peggy:$7$abc$" + strings.Repeat("Q", 20) + "SecretEight$xx",
		"oscar:PBKDF2$sha512$100000$SaltSecret9$HashSecretTen",
		"zed:$argon2id$v=19$m=65536,t=3,p=2$SaltSecretEleven$HashSecretTwelve",
		"u\x00ser:SecretThirteen",
		"user with space:SecretFourteen",
		":SecretFifteen",
		good,
		good,
	}
	e.zzWriteUsers(0, lines...)
	e.reloaded()
	e.logLine("loaded ")
	out := e.broker.Output()
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "mosquitto-guard") && strings.Contains(l, e.passwd) {
			t.Log(l)
		}
	}
	for _, s := range []string{"PlainSecret1", "SaltSecret2", "HashSecret3", "SaltSecret4", "HashSecret5", "SaltSecret6",
		"PlainSecret7", "SecretEight", "SaltSecret9", "HashSecretTen", "SaltSecretEleven", "HashSecretTwelve",
		"SecretThirteen", "SecretFourteen", "SecretFifteen", strings.SplitN(good, "$", 4)[3]} {
		assert.NotContains(t, out, s)
	}
	assert.EqualValues(t, accepted, e.connect(as("127.0.73.1", "a", "alice", "alice-pw")))
}

// zzHash returns the $7$ hash mosquitto_passwd writes for pass.
func zzHash(t *testing.T, pass string) string {
	return strings.SplitN(passwdLine(t, "x", pass), ":", 2)[1]
}

// zzUntil connects c until its CONNACK is want (at most d) and returns how
// long that took, or d+ when it never did.
func (e *env) zzUntil(c client, want byte, d time.Duration) (time.Duration, int) {
	e.t.Helper()
	start := time.Now()
	n, base := 0, c.id
	for time.Since(start) < d {
		n++
		if !strings.HasPrefix(base, "banned") {
			c.id = fmt.Sprintf("%s-%d", base, n)
		}
		if e.connect(c) == want {
			return time.Since(start), n
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start), n
}

// TestZZRedisUserChangedOrDeleted: redis backend; README: "So a
// `redis-cli SET` or `DEL` takes effect for new connections within
// milliseconds on every broker sharing the Redis"; the auth_cache: "a
// changed password takes effect at once".
func TestZZRedisUserChangedOrDeleted(t *testing.T) {
	e := envWithoutBroker(t)
	e.redis.CLI("SET", "guard:user:alice", zzHash(t, "old-pw"))
	e.broker = startBroker(t, e.conf("auth_opt_backend redis"))
	require.True(t, e.broker.WaitOutput("replica loaded", 10*time.Second))
	conn, code := e.dial(as("127.0.74.1", "alice-live", "alice", "old-pw"))
	require.EqualValues(t, accepted, code)
	require.EqualValues(t, accepted, e.connect(as("127.0.74.2", "alice-2", "alice", "old-pw")), "cached now")

	e.redis.CLI("SET", "guard:user:alice", zzHash(t, "new-pw"))
	took, n := e.zzUntil(as("127.0.74.3", "alice-old", "alice", "old-pw"), refused, 10*time.Second)
	t.Logf("SET: old password refused after %v (%d tries)", took.Round(time.Millisecond), n)
	assert.Less(t, took, time.Second)
	assert.EqualValues(t, accepted, e.connect(as("127.0.74.4", "alice-new", "alice", "new-pw")))

	// Lost notification: the subscription is killed just before the change.
	require.EqualValues(t, accepted, e.connect(as("127.0.74.4", "alice-new", "alice", "new-pw")))
	e.redis.CLI("CLIENT", "KILL", "TYPE", "pubsub")
	e.redis.CLI("SET", "guard:user:alice", zzHash(t, "third-pw"))
	took, n = e.zzUntil(as("127.0.74.5", "alice-new2", "alice", "new-pw"), refused, 10*time.Second)
	t.Logf("SET after the subscription was killed: previous password refused after %v (%d tries)", took.Round(time.Millisecond), n)
	assert.Less(t, took, 2*time.Second)

	e.redis.CLI("DEL", "guard:user:alice")
	took, n = e.zzUntil(as("127.0.74.6", "alice-del", "alice", "third-pw"), refused, 10*time.Second)
	t.Logf("DEL: password refused after %v (%d tries)", took.Round(time.Millisecond), n)
	assert.Less(t, took, time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	t.Logf("alice connected before the change still connected after SET and DEL: %v", conn.Ping(ctx) == nil)
}

// TestZZRedisUserChangedWithoutChannels: the plugin's Redis user has no
// pub/sub channel (Redis 7's default for a new ACL user). README: the
// replica loads anyway and "while Redis answers, each CONNECT asks Redis
// for its lists ... a ban applies to the next CONNECT". A user deleted or
// changed meanwhile: how long do the old credentials work?
func TestZZRedisUserChangedWithoutChannels(t *testing.T) {
	e := envWithoutBroker(t)
	e.redis.CLI("SET", "guard:user:alice", zzHash(t, "old-pw"))
	e.redis.CLI("ACL", "SETUSER", "guard", "on", ">guard-pw", "~guard:*", "~rate:guard:*", "+@all")
	e.broker = startBroker(t, e.conf("auth_opt_backend redis", "auth_opt_redis_username guard", "auth_opt_redis_password guard-pw"))
	require.True(t, e.broker.WaitOutput("replica loaded", 10*time.Second))
	require.EqualValues(t, accepted, e.connect(as("127.0.75.1", "alice-1", "alice", "old-pw")))

	e.redis.CLI("SET", "guard:block:clientid:banned", "x")
	took, _ := e.zzUntil(as("127.0.75.2", "banned", "alice", "old-pw"), refused, 3*time.Second)
	t.Logf("ban: refused after %v", took.Round(time.Millisecond))
	assert.Less(t, took, 2*time.Second, "README: a ban applies to the next CONNECT")

	e.redis.CLI("SET", "guard:user:alice", zzHash(t, "new-pw"))
	took, n := e.zzUntil(as("127.0.75.3", "alice-old", "alice", "old-pw"), refused, 10*time.Second)
	t.Logf("SET without channels: old password refused after %v (%d tries)", took.Round(time.Millisecond), n)
	assert.Less(t, took, 2*time.Second, "a changed password: the old one still works")
	e.redis.CLI("DEL", "guard:user:alice")
	took, n = e.zzUntil(as("127.0.75.4", "alice-del", "alice", "old-pw"), refused, 5*time.Second)
	t.Logf("DEL without channels: refused after %v (%d tries)", took.Round(time.Millisecond), n)
	took, n = e.zzUntil(as("127.0.75.5", "alice-del2", "alice", "new-pw"), refused, 5*time.Second)
	t.Logf("DEL without channels: new password refused after %v (%d tries)", took.Round(time.Millisecond), n)
	assert.Less(t, took, 2*time.Second, "a deleted user still gets in")
}

// TestZZRedisBackendStartWhileRedisDown: README Timing: "Until the replica
// has first loaded the users (a broker started while Redis did not answer
// ...) the redis backend checks no password: known and unknown users alike
// are refused unchecked with rule=redis-unavailable". Redis refusing, then
// hung, at start.
func TestZZRedisBackendStartWhileRedisDown(t *testing.T) {
	for _, mode := range []string{"refusing", "hung"} {
		t.Run(mode, func(t *testing.T) {
			e := envWithoutBroker(t)
			e.redis.CLI("SET", "guard:user:alice", zzHash(t, "alice-pw"))
			e.redis.CLI("SAVE")
			if mode == "refusing" {
				e.redis.Stop()
			} else {
				require.NoError(t, e.redis.Signal(syscall.SIGSTOP))
				t.Cleanup(func() { _ = e.redis.Signal(syscall.SIGCONT) })
			}
			start := time.Now()
			e.broker = startBroker(t, e.conf("auth_opt_backend redis"))
			t.Logf("ready after %v", time.Since(start).Round(time.Millisecond))
			var good, unknown []time.Duration
			for i := 0; i < 20; i++ {
				s := time.Now()
				assert.EqualValues(t, refused, e.connect(as("127.0.76.1", fmt.Sprintf("a%d", i), "alice", "alice-pw")), "a password accepted before the users loaded")
				good = append(good, time.Since(s))
				s = time.Now()
				assert.EqualValues(t, refused, e.connect(as("127.0.76.2", fmt.Sprintf("u%d", i), fmt.Sprintf("nobody%d", i), "alice-pw")))
				unknown = append(unknown, time.Since(s))
			}
			t.Logf("alice refused in %v; unknown in %v", good[:5], unknown[:5])
			assert.Contains(t, e.broker.Output(), "rule=redis-unavailable")
			// README Timing: "... refused unchecked with rule=redis-unavailable,
			// as while Redis is down, not counted as failures, and one warning
			// says why". The only line says the opposite: "the last known
			// lists and the passwords still apply".
			assert.True(t, hasLine(e.broker.Output(), "mosquitto-guard:", "once the replica has loaded the users"),
				"no warning says why every password is refused; the log says %q", findLine(e.broker.Output(), "unreachable ("))
			if mode == "refusing" {
				e.redis.Restart()
				e.redis.CLI("SET", "guard:user:alice", zzHash(t, "alice-pw"))
			} else {
				require.NoError(t, e.redis.Signal(syscall.SIGCONT))
			}
			back := time.Now()
			took, n := e.zzUntil(as("127.0.76.3", "alice-back", "alice", "alice-pw"), accepted, 15*time.Second)
			t.Logf("Redis back: alice accepted after %v (%d tries)", took.Round(time.Millisecond), n)
			_ = back
			assert.Less(t, took, 5*time.Second)
			for _, l := range strings.Split(e.broker.Output(), "\n") {
				if strings.Contains(l, "mosquitto-guard:") && !strings.Contains(l, "logged=") {
					t.Log(l)
				}
			}
		})
	}
}

// TestZZStormWhileConnectingWithTheOldPassword: alice's password is changed
// back and forth in a file whose read takes about the 100 ms the broker
// thread waits, SIGHUPs arrive at random, and alice connects with the old
// password all along. Once the last file (the new password) is in force,
// no connection admitted with the old password may be left: README, "the
// clients whose password the plugin checked as a user that file removes or
// rehashes are disconnected".
func TestZZStormWhileConnectingWithTheOldPassword(t *testing.T) {
	for _, n := range []int{30_000, 150_000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) { zzStorm(t, n) })
	}
}

func zzStorm(t *testing.T, n int) {
	e := newEnv(t)
	oldL, newL, bobL := passwdLine(t, "alice", "alice-pw"), passwdLine(t, "alice", "alice-NEW"), passwdLine(t, "bob", "bob-pw")
	e.zzWriteUsers(n, oldL, bobL)
	e.reloaded()
	e.logLine(fmt.Sprintf("loaded %d users", n+2))

	type held struct {
		id   string
		conn interface{ Closed(time.Duration) bool }
	}
	var conns []held
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			id := fmt.Sprintf("old-%d", i)
			c, code := e.dial(as(fmt.Sprintf("127.0.77.%d", 1+i%250), id, "alice", "alice-pw"))
			if code == accepted {
				conns = append(conns, held{id, c})
			}
		}
	}()
	rng := time.Now().UnixNano()
	for i := 0; i < 20; i++ {
		if i%2 == 0 || i == 19 {
			e.zzWriteUsers(n, newL, bobL)
		} else {
			e.zzWriteUsers(n, oldL, bobL)
		}
		e.broker.Reload()
		rng = rng*6364136223846793005 + 1442695040888963407
		time.Sleep(time.Duration(50+uint64(rng>>33)%150) * time.Millisecond)
	}
	close(stop)
	<-done
	time.Sleep(5 * time.Second) // every read in hand ends and is in force
	out := e.broker.Output()
	require.EqualValues(t, refused, e.connect(as("127.0.77.251", "check", "alice", "alice-pw")), "the last file is not in force")
	var left []string
	for _, h := range conns {
		if !h.conn.Closed(10 * time.Millisecond) {
			left = append(left, h.id)
		}
	}
	t.Logf("%d connections admitted with the old password during the storm; %d late applies; %d kicks; left connected: %v",
		len(conns), strings.Count(out, "not read within"), strings.Count(out, "rule=user-changed"), left)
	for _, id := range left { // what the broker said of each, to tell a lost kick from a missed one
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, " "+id+" ") || strings.Contains(l, `"`+id+`"`) || strings.HasSuffix(l, " "+id) {
				t.Logf("%s: %s", id, l)
			}
		}
	}
	assert.Empty(t, left, "connections admitted with the old password are still connected after the new file is in force")
}

// zzRSS returns the broker's peak resident memory (VmHWM) in MiB.
func (e *env) zzRSS() int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", e.broker.PID()))
	require.NoError(e.t, err)
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			var kb int
			fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(l, "VmHWM:")), "%d", &kb)
			return kb / 1024
		}
	}
	return -1
}

// TestZZOddPasswordFiles: the password file replaced by what is not a
// password file, then SIGHUP. README: "If the password file is unreadable,
// or yields no user ..., the users loaded before are kept and an error is
// logged; connected clients stay connected"; at most 256 MiB; a named pipe
// or device is refused at once. The broker must keep answering (PING) and
// a later good file must be put in force. (250 MiB of short bad lines,
// tried here first, took the broker to 16.6 GiB: see
// TestZZShortBadLinesHoldTheReloadAndFlapRedis, which uses 64 MiB.)
func TestZZOddPasswordFiles(t *testing.T) {
	cases := map[string]func(t *testing.T, path string){
		"dev-zero":  func(t *testing.T, p string) { require.NoError(t, os.Symlink("/dev/zero", p)) },
		"dev-null":  func(t *testing.T, p string) { require.NoError(t, os.Symlink("/dev/null", p)) },
		"directory": func(t *testing.T, p string) { require.NoError(t, os.Mkdir(p, 0o700)) },
		"dangling":  func(t *testing.T, p string) { require.NoError(t, os.Symlink(p+".nowhere", p)) },
		"proc-self": func(t *testing.T, p string) { require.NoError(t, os.Symlink("/proc/self/mem", p)) },
		"sparse-300MiB": func(t *testing.T, p string) {
			f, err := os.Create(p)
			require.NoError(t, err)
			require.NoError(t, f.Truncate(300<<20))
			require.NoError(t, f.Close())
		},
		"one-line-250MiB": func(t *testing.T, p string) {
			f, err := os.Create(p)
			require.NoError(t, err)
			w := bufio.NewWriterSize(f, 1<<20)
			_, _ = w.WriteString("alice:")
			chunk := strings.Repeat("A", 1<<20)
			for i := 0; i < 250; i++ {
				_, _ = w.WriteString(chunk)
			}
			require.NoError(t, w.Flush())
			require.NoError(t, f.Close())
		},
	}
	for name, mk := range cases {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			alice, code := e.dial(as("127.0.78.1", "alice-dev", "alice", "alice-pw"))
			require.EqualValues(t, accepted, code)
			require.NoError(t, os.Rename(e.passwd, e.passwd+".good"))
			mk(t, e.passwd)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			stop := make(chan struct{})
			worst := zzPingWorst(ctx, alice, stop)
			start := time.Now()
			e.reloaded()
			var settled time.Duration
			eventually(t, 40*time.Second, func() bool {
				out := e.broker.Output()
				i := strings.LastIndex(out, "Reloading config.")
				ok := strings.Contains(out[i:], "keeping the") || strings.Contains(out[i:], "error") || strings.Contains(out[i:], "password_file")
				if ok && settled == 0 {
					settled = time.Since(start)
				}
				return ok
			}, "no word on the file")
			time.Sleep(500 * time.Millisecond)
			close(stop)
			w := <-worst
			out := e.broker.Output()
			for _, l := range strings.Split(out[strings.LastIndex(out, "Reloading config."):], "\n") {
				if strings.Contains(l, "mosquitto-guard") {
					t.Log(l)
				}
			}
			t.Logf("%s: worded after %v; worst PING %v; broker peak RSS %d MiB", name, settled.Round(time.Millisecond), w.Round(time.Millisecond), e.zzRSS())
			assert.Less(t, w, 500*time.Millisecond, "PING held")
			assert.False(t, alice.Closed(100*time.Millisecond), "alice disconnected")
			assert.EqualValues(t, accepted, e.connect(as("127.0.78.2", "bob-dev", "bob", "bob-pw")), "users loaded before are not kept")

			require.NoError(t, os.RemoveAll(e.passwd))
			require.NoError(t, os.Rename(e.passwd+".good", e.passwd))
			e.addUser("carol", "carol-pw")
			fixed := time.Now()
			e.reloaded()
			eventually(t, 40*time.Second, func() bool {
				return strings.Contains(e.broker.Output(), "loaded 3 users")
			}, "a good file after %s is not in force 40 s after its SIGHUP:\n%s", name, tail(e.broker.Output(), 20))
			t.Logf("%s: the good file in force %v after its SIGHUP (%v after the bad one's)", name,
				time.Since(fixed).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
			assert.EqualValues(t, accepted, e.connect(as("127.0.78.3", "carol-dev", "carol", "carol-pw")))
		})
	}
}

// TestZZShortBadLinesHoldTheReloadAndFlapRedis: a password file of 250 MiB
// of short malformed lines ("x:y", 65 million of them; within the 256 MiB
// bound), then SIGHUP. README: reading and parsing takes "17 s for two
// million (the 256 MiB bound)"; Redis down: "a Redis that stops answering
// ... is noticed within 700 ms"; with redis_unavailable deny "every client
// is refused ... from within 1 s of Redis not answering". Measured here:
// how long until the plugin has an answer for that file, the broker's
// memory, whether Redis (answering all along) is taken for down, and how
// many CONNECTs of a valid user are refused meanwhile under
// redis_unavailable deny.
func TestZZShortBadLinesHoldTheReloadAndFlapRedis(t *testing.T) {
	// 250 MiB took the broker to 16.6 GiB resident and a CONNACK to 22 s on
	// a 24 GiB machine shared with others: the test uses a quarter of it.
	e := newEnv(t, "auth_opt_redis_unavailable deny")
	f, err := os.Create(e.passwd + ".zz")
	require.NoError(t, err)
	chunk := strings.Repeat("x:y\n", 1<<18)
	for i := 0; i < zzBadMiB; i++ { // 1 MiB of "x:y\n" lines each
		_, _ = f.WriteString(chunk)
	}
	require.NoError(t, f.Close())
	require.NoError(t, os.Rename(e.passwd+".zz", e.passwd))
	start := time.Now()
	e.reloaded()
	var tries, refusedN int
	var slowest time.Duration
	var slow []string
	for time.Since(start) < 120*time.Second {
		out := e.broker.Output()
		if strings.Contains(out, "no user in it") {
			break
		}
		tries++
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		s := time.Now()
		conn, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: e.broker.Addr, SourceIP: fmt.Sprintf("127.0.79.%d", 1+tries%250),
			ClientID: fmt.Sprintf("bob-%d", tries), Username: str("bob"), Password: str("bob-pw"), Timeout: 60 * time.Second})
		cancel()
		d := time.Since(s)
		require.NoError(t, err)
		if d > slowest {
			slowest = d
		}
		if d > time.Second {
			slow = append(slow, fmt.Sprintf("%v@%v", d.Round(time.Millisecond), s.Sub(start).Round(time.Second)))
		}
		if conn != nil {
			conn.Close()
		}
		if code != accepted {
			refusedN++
		}
		time.Sleep(200 * time.Millisecond)
	}
	took := time.Since(start)
	t.Logf("slowest CONNACK %v; over 1 s: %v", slowest.Round(time.Millisecond), slow)
	out := e.broker.Output()
	downs := strings.Count(out, " unreachable")
	t.Logf("%d MiB of 'x:y' lines: answer after %v; broker peak RSS %d MiB; Redis taken for down %d times; bob (right password) refused %d of %d CONNECTs meanwhile",
		zzBadMiB, took.Round(time.Millisecond), e.zzRSS(), downs, refusedN, tries)
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "mosquitto-guard") && !strings.Contains(l, "event=refused") && !strings.Contains(l, "acl_check") {
			t.Log(l)
		}
	}
	assert.Less(t, took, 20*time.Second*zzBadMiB/256, "the read outlasts the README's 17 s for the 256 MiB bound, pro rata")
	assert.Less(t, e.zzRSS(), 1024, "the broker's memory for a file a quarter of the bound")
	// Redis taken for down: 1 run of 3 at 64 MiB, 1 of 1 at 250 MiB; logged, not asserted.
	assert.Less(t, slowest, time.Second, "a CONNECT waited")
}

// zzBadMiB is the size of TestZZShortBadLines...'s file.
const zzBadMiB = 64

// TestZZNearBoundUserFileHoldsConnects: a valid password file near the
// 256 MiB bound (1.8 million $7$ users), SIGHUP. README: "The password
// file is read off the broker thread, which waits for it at most 100 ms.
// Reading and parsing takes ... 17 s for two million (the 256 MiB bound)".
// Measured: the slowest CONNACK to a valid user and the slowest PING of a
// connected client while it is read.
func TestZZNearBoundUserFileHoldsConnects(t *testing.T) {
	e := newEnv(t)
	held, code := e.dial(as("127.0.80.250", "held", "bob", "bob-pw"))
	require.EqualValues(t, accepted, code)
	e.writeFiller(1_800_000, "alice", "bob") // their lines unchanged
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	stop := make(chan struct{})
	worstPing := zzPingWorst(ctx, held, stop)
	start := time.Now()
	e.reloaded()
	var slowest time.Duration
	var slow []string
	tries := 0
	for time.Since(start) < 90*time.Second && !strings.Contains(e.broker.Output(), "loaded 1800002 users") {
		tries++
		c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		s := time.Now()
		conn, code, err := mqttc.Dial(c, mqttc.Options{Addr: e.broker.Addr, SourceIP: fmt.Sprintf("127.0.80.%d", 1+tries%200),
			ClientID: fmt.Sprintf("alice-%d", tries), Username: str("alice"), Password: str("alice-pw"), Timeout: 60 * time.Second})
		cancel()
		d := time.Since(s)
		require.NoError(t, err)
		require.EqualValues(t, accepted, code)
		conn.Close()
		if d > slowest {
			slowest = d
		}
		if d > time.Second {
			slow = append(slow, fmt.Sprintf("%v@%v", d.Round(time.Millisecond), s.Sub(start).Round(time.Second)))
		}
		time.Sleep(200 * time.Millisecond)
	}
	took := time.Since(start)
	close(stop)
	wp := <-worstPing
	out := e.broker.Output()
	t.Logf("1.8M users: in force after %v; slowest CONNACK %v (over 1 s: %v) of %d; slowest PING %v; peak RSS %d MiB; Redis taken for down %d times",
		took.Round(time.Millisecond), slowest.Round(time.Millisecond), slow, tries, wp.Round(time.Millisecond), e.zzRSS(), strings.Count(out, " unreachable"))
	assert.Less(t, slowest, time.Second, "a CONNECT waited while the file was read off the broker thread")
	assert.Less(t, wp, time.Second, "a PING waited while the file was read off the broker thread")
	assert.Zero(t, strings.Count(out, " unreachable"), "Redis, answering all along, was taken for down")
}

// TestZZRedisUserKeyOps: redis backend; a user changed or removed by
// Redis commands other than SET and DEL. README: "So a `redis-cli SET` or
// `DEL` takes effect for new connections within milliseconds"; the replica
// is "kept live by Redis keyspace notifications" (Kg$xe); "a key Redis
// evicts ... leaves the replica at once, as a deleted one does". For each
// command: the old password must stop working within a second.
func TestZZRedisUserKeyOps(t *testing.T) {
	oldH, newH := zzHash(t, "old-pw"), zzHash(t, "new-pw")
	e := envWithoutBroker(t)
	e.broker = startBroker(t, e.conf("auth_opt_backend redis", "auth_opt_fail_limit 1000000", "auth_opt_username_fail_limit 0"))
	require.True(t, e.broker.WaitOutput("replica loaded", 10*time.Second))
	type op struct {
		name    string
		do      func(user string)
		newWork bool // new-pw works afterwards
	}
	ops := []op{
		{"RENAME away", func(u string) { e.redis.CLI("RENAME", "guard:user:"+u, "guard:user:"+u+"-gone") }, false},
		{"MOVE to db 1", func(u string) { e.redis.CLI("MOVE", "guard:user:"+u, "1") }, false},
		{"PEXPIRE 100", func(u string) { e.redis.CLI("PEXPIRE", "guard:user:"+u, "100") }, false},
		{"EXPIREAT past", func(u string) { e.redis.CLI("EXPIREAT", "guard:user:"+u, "1") }, false},
		{"GETDEL", func(u string) { e.redis.CLI("GETDEL", "guard:user:"+u) }, false},
		{"UNLINK", func(u string) { e.redis.CLI("UNLINK", "guard:user:"+u) }, false},
		{"GETEX PX 100", func(u string) { e.redis.CLI("GETEX", "guard:user:"+u, "PX", "100") }, false},
		{"RENAME onto", func(u string) {
			e.redis.CLI("SET", "tmp:"+u, newH)
			e.redis.CLI("RENAME", "tmp:"+u, "guard:user:"+u)
		}, true},
		{"COPY REPLACE", func(u string) {
			e.redis.CLI("SET", "tmp:"+u, newH)
			e.redis.CLI("COPY", "tmp:"+u, "guard:user:"+u, "REPLACE")
		}, true},
		{"RESTORE REPLACE", func(u string) {
			e.redis.CLI("SET", "tmp:"+u, newH)
			e.redis.CLI("EVAL", "redis.call('RESTORE', KEYS[1], 0, redis.call('DUMP', KEYS[2]), 'REPLACE') return 1", "2", "guard:user:"+u, "tmp:"+u)
		}, true},
		{"GETSET", func(u string) { e.redis.CLI("GETSET", "guard:user:"+u, newH) }, true},
		{"MSET", func(u string) { e.redis.CLI("MSET", "guard:user:"+u, newH, "other", "x") }, true},
		{"SETRANGE", func(u string) { e.redis.CLI("SETRANGE", "guard:user:"+u, "0", newH) }, true},
		{"SWAPDB", func(u string) {
			e.redis.CLI("-n", "1", "SET", "guard:user:"+u, newH)
			e.redis.CLI("SWAPDB", "0", "1")
		}, true},
		{"FLUSHDB ASYNC then SET", func(u string) {
			e.redis.CLI("FLUSHDB", "ASYNC")
			e.redis.CLI("SET", "guard:user:"+u, newH)
		}, true},
	}
	for i, o := range ops {
		t.Run(o.name, func(t *testing.T) {
			u := fmt.Sprintf("user%d", i)
			e.redis.CLI("SET", "guard:user:"+u, oldH)
			ip := fmt.Sprintf("127.0.81.%d", 1+i)
			eventually(t, 2*time.Second, func() bool { return e.connect(as(ip, u+"-a", u, "old-pw")) == accepted }, "setup")
			o.do(u)
			took, n := e.zzUntil(as(ip, u+"-old", u, "old-pw"), refused, 3*time.Second)
			t.Logf("%s: old password refused after %v (%d tries)", o.name, took.Round(time.Millisecond), n)
			assert.Less(t, took, time.Second, "%s: the old password still works", o.name)
			if o.newWork {
				took, n = e.zzUntil(as(ip, u+"-new", u, "new-pw"), accepted, 3*time.Second)
				t.Logf("%s: new password accepted after %v (%d tries)", o.name, took.Round(time.Millisecond), n)
				assert.Less(t, took, time.Second, "%s: the new password refused", o.name)
			}
		})
	}
}

// TestZZUnknownUserTiming: README Timing: "An unknown user costs what a
// known one costs, in every backend: the files backend checks a dummy hash
// of the most expensive class (format and cost) in the file". A known
// username with a wrong password against an unknown username, interleaved,
// 300 each, files and redis backends, with mosquitto_passwd's own hashes,
// in the files backend again while a late SIGHUP read is under way, and
// with $7$ hashes of 5000 rounds (every user the same class). Measured
// before the fix (plugin/credentials.go, check): with 5000 rounds the files
// backend answered a known user in 5.8-7.0 ms at the median and an unknown
// one in 3.7-5.1 ms (20 000 rounds: 23 ms against 13.7 ms), the redis
// backend both alike; perf on the broker thread: the same SHA-512 blocks
// costing some 40% more CPU for the known user, whose block function ran
// with its stack writes across a 4 KiB page, the unknown user's (one frame
// deeper) not. Outside the broker the stacks differ again, which is why
// files.Store.Verify and Guard.Authenticate in-process cost alike. After:
// one verification call for both; the medians below within 0.1 ms
// (figures on a shared 2-vCPU VM: interleaved, medians).
func TestZZUnknownUserTiming(t *testing.T) {
	measure := func(e *env, tag string) (known, unknown time.Duration) {
		var k, u []time.Duration
		for i := 0; i < 300; i++ {
			ip := fmt.Sprintf("127.0.82.%d", 1+i%250)
			unknownName := fmt.Sprintf("nobody%d", i)
			if i%2 == 0 {
				s := time.Now()
				require.EqualValues(t, refused, e.connect(as(ip, "k", "alice", "wrong")))
				k = append(k, time.Since(s))
			}
			s := time.Now()
			require.EqualValues(t, refused, e.connect(as(ip, "u", unknownName, "wrong")))
			u = append(u, time.Since(s))
			if i%2 == 1 {
				s := time.Now()
				require.EqualValues(t, refused, e.connect(as(ip, "k", "alice", "wrong")))
				k = append(k, time.Since(s))
			}
		}
		med := func(d []time.Duration) time.Duration {
			sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
			return d[len(d)/2]
		}
		known, unknown = med(k), med(u)
		q := func(d []time.Duration) string {
			return fmt.Sprint(d[len(d)/10].Round(10*time.Microsecond), d[len(d)/4].Round(10*time.Microsecond), d[len(d)/2].Round(10*time.Microsecond),
				d[3*len(d)/4].Round(10*time.Microsecond), d[9*len(d)/10].Round(10*time.Microsecond))
		}
		t.Logf("%s: deciles 10/25/50/75/90: known %s; unknown %s", tag, q(k), q(u))
		t.Logf("%s: median CONNACK known user, wrong password %v; unknown user %v", tag, known, unknown)
		return known, unknown
	}
	// alike measures up to three times, as zzCompare's callers do: a burst
	// of load during one measurement moves a median of about a millisecond
	// by more than the 0.2 ms allowed, where the defect (a known user's
	// median 1.4 to 1.9 times the unknown's) is there in every one.
	alike := func(e *env, tag string, prep func()) {
		t.Helper()
		var k, u time.Duration
		for try := 0; try < 3; try++ {
			if prep != nil {
				prep() // the state measured, made again for each try
			}
			k, u = measure(e, tag)
			if d := k - u; max(d, -d) <= k/10+100*time.Microsecond {
				return
			}
		}
		assert.InDelta(t, float64(k), float64(u), float64(k)/10+float64(100*time.Microsecond), tag)
	}
	limits := []string{"auth_opt_fail_limit 1000000", "auth_opt_username_fail_limit 0"}
	e := newEnv(t, limits...)
	alike(e, "files", nil)

	original, err := os.ReadFile(e.passwd)
	require.NoError(t, err)
	alike(e, "files, a late read under way", func() {
		// From the file with alice and bob: the try before left bob out.
		require.NoError(t, os.WriteFile(e.passwd, original, 0o644))
		loaded := strings.Count(e.broker.Output(), "loaded 200002 users")
		e.writeFiller(200_000, "alice", "bob")
		e.reloaded()
		eventually(t, 10*time.Second, func() bool { return strings.Count(e.broker.Output(), "loaded 200002 users") > loaded }, "200 002 users not loaded")
		e.writeFiller(200_000, "alice")
		e.reloaded()
	})

	// Costlier hashes, the same class for every user, on a broker of its own.
	// Before: in the broker an unknown user cost 3.8 to 5.1 ms at the median
	// against 6.0 to 7.0 ms for a known one (perf: 5.9 against 9.8 SHA-512
	// block samples per CONNECT on the broker thread, the same number of
	// blocks), while files.Store.Verify outside the broker cost the same for
	// both. The cause: the two were verified from different stacks (the
	// unknown user one frame deeper, in files.Store.Verify), and Go's
	// SHA-512 block function, which writes its message schedule 32 bytes at
	// a time to its own stack frame, ran for the known user at a stack
	// pointer of 0x...ff8: each of those writes straddled a 4 KiB page
	// (perf record --user-regs=sp; plugin/credentials.go, check). Both are
	// verified by one call now (plugin TestUnknownUserVerifiedFromTheKnownUsersStack).
	c := newEnv(t, limits...)
	const rounds = 5000
	c.zzWriteUsers(0, "alice:"+mosquittoHash("alice-pw", rounds), "bob:"+mosquittoHash("bob-pw", rounds))
	c.reloaded()
	eventually(t, 5*time.Second, func() bool { return strings.Count(c.broker.Output(), "loaded 2 users") == 2 }, "not loaded")
	alike(c, "files, $7$ 5000 rounds", nil)

	r := envWithoutBroker(t)
	r.redis.CLI("SET", "guard:user:alice", zzHash(t, "alice-pw"))
	r.broker = startBroker(t, r.conf(append(limits, "auth_opt_backend redis")...))
	require.True(t, r.broker.WaitOutput("replica loaded", 10*time.Second))
	alike(r, "redis", nil)
	r.redis.CLI("SET", "guard:user:alice", mosquittoHash("alice-pw", 5000))
	eventually(t, 2*time.Second, func() bool { return r.connect(as("127.0.82.1", "a", "alice", "alice-pw")) == accepted }, "alice")
	alike(r, "redis, $7$ 5000 rounds", nil)
}

// TestZZRehashReadInTimeDisconnectsAndRefusesTheOldPassword: a small file
// (read within the 100 ms) that changes alice's password: README, "A file
// read within the 100 ms is in force before Mosquitto re-checks its
// clients". alice, connected with the old password (and cached), is
// disconnected by that re-check; the old password is refused at once.
func TestZZRehashReadInTimeDisconnectsAndRefusesTheOldPassword(t *testing.T) {
	e := newEnv(t)
	alice, code := e.dial(as("127.0.84.1", "alice-dev", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	require.EqualValues(t, accepted, e.connect(as("127.0.84.2", "alice-2", "alice", "alice-pw")), "cached")
	e.addUser("alice", "alice-NEW")
	start := time.Now()
	e.reloaded()
	assert.EqualValues(t, refused, e.connect(as("127.0.84.3", "alice-3", "alice", "alice-pw")), "old password right after the reload")
	assert.True(t, alice.Closed(2*time.Second), "alice with the old password stays connected")
	t.Logf("alice disconnected %v after SIGHUP", time.Since(start).Round(time.Millisecond))
	assert.EqualValues(t, accepted, e.connect(as("127.0.84.4", "alice-4", "alice", "alice-NEW")))
	assert.NotContains(t, e.broker.Output(), "alice-pw")
	assert.NotContains(t, e.broker.Output(), "alice-NEW")
}

// TestZZUnsubscribedReloadWalkWhileRedisHangs: the plugin's Redis user has
// no channel, so each lookup asks Redis (README: "while Redis answers, each
// CONNECT asks Redis for its lists"); Redis hangs (SIGSTOP) and a SIGHUP
// makes Mosquitto re-check 100 clients at once. README: redis_timeout
// bounds any wait on the broker thread, and "any Redis error or timeout
// seen anywhere in the plugin marks it down at once": the walk must not
// wait 100 ms per client.
func TestZZUnsubscribedReloadWalkWhileRedisHangs(t *testing.T) {
	e := envWithoutBroker(t)
	e.redis.CLI("ACL", "SETUSER", "guard", "on", ">guard-pw", "~guard:*", "~rate:guard:*", "+@all")
	e.broker = startBroker(t, e.conf("auth_opt_redis_username guard", "auth_opt_redis_password guard-pw"))
	require.True(t, e.broker.WaitOutput("replica loaded", 10*time.Second))
	const n = 100
	for i := 0; i < n; i++ {
		_, code := e.dial(as(fmt.Sprintf("127.0.85.%d", 1+i%250), fmt.Sprintf("c%d", i), "bob", "bob-pw"))
		require.EqualValues(t, accepted, code)
	}
	probe, code := e.dial(as("127.0.85.251", "probe", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	require.NoError(t, e.redis.Signal(syscall.SIGSTOP))
	t.Cleanup(func() { _ = e.redis.Signal(syscall.SIGCONT) })
	start := time.Now()
	e.reloaded()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	require.NoError(t, probe.Ping(ctx))
	took := time.Since(start)
	s := time.Now()
	_, code = e.dial(as("127.0.85.252", "late", "alice", "alice-pw"))
	t.Logf("SIGHUP with %d clients, Redis hung, unsubscribed: PING answered %v after; next CONNACK %v (code %d)", n, took.Round(time.Millisecond), time.Since(s).Round(time.Millisecond), code)
	assert.Less(t, took, time.Second)
}
