package store

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// atk65Needs are the four shapes plugin/tlscheck.go checkSettings gives.
var atk65Needs = []SettingsNeeds{
	{Counts: true},
	{Counts: true, Known: true},
	{Tracking: true},
	{Counts: true, Known: true, Tracking: true},
}

// atk65Leftovers lists every key left under guard: and rate:guard:, with
// its PTTL.
func atk65Leftovers(r *testenv.Redis) []string {
	var out []string
	for _, pat := range []string{"guard:*", "rate:guard:*"} {
		for _, k := range strings.Fields(r.CLI("--scan", "--pattern", pat)) {
			out = append(out, k+" pttl="+strings.TrimSpace(r.CLI("PTTL", k))+" type="+strings.TrimSpace(r.CLI("TYPE", k)))
		}
	}
	return out
}

// atk65Probed is every distinct command probeCommands asks for needs.
func atk65Probed(needs SettingsNeeds) []string {
	seen := map[string]bool{}
	var out []string
	for _, c := range probeCommands(needs, "k", "rk") {
		n := c[0].(string)
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out
}

// HOLDS (single refusals). Each command the probe asks, refused alone
// (~* &* +@all -CMD), stops the start with SettingsNoPerm naming the
// command in upper case (Redis 7.0's "no permissions to run the 'x'
// command" told from a key refusal), and leaves no key under the prefix
// or rate: with no expiry.
func TestAtk65EachRefusalNamedAndNoKeyForever(t *testing.T) {
	r := testenv.StartRedis(t)
	for _, needs := range atk65Needs {
		for _, cmd := range atk65Probed(needs) {
			u := "no" + cmd
			r.CLI("ACL", "SETUSER", u, "on", ">pw", "~*", "&*", "+@all", "-"+cmd)
			_, err := atk64Check(Options{Addrs: []string{r.Addr}, Username: u, Password: "pw"}, "guard:", needs)
			var se *SettingsError
			if assert.True(t, errors.As(err, &se), "%+v without %s: %v", needs, cmd, err) {
				assert.Equal(t, SettingsNoPerm, se.Fault, "%+v without %s: %v", needs, cmd, err)
				assert.True(t, strings.HasPrefix(strings.TrimPrefix(se.Error(), "store: settings: "), strings.ToUpper(cmd)), "%+v without %s: %v", needs, cmd, se)
			}
			for _, l := range atk65Leftovers(r) {
				assert.NotContains(t, l, "pttl=-1 ", "%+v without %s: key left for ever", needs, cmd)
			}
			r.CLI("FLUSHALL")
		}
	}
}

// DEFECT (low). README: "A refused command leaves nothing behind: the
// pipeline runs to its end, and ends with the keys' DEL". A user without
// DEL leaves <prefix>settings-check and rate:<prefix>settings-check (10 s);
// one without DEL and PEXPIRE (+@all -del -pexpire) leaves a stream under
// the prefix with no expiry, for ever, with conflict tracking alone (HDEL,
// SREM, ZREM empty the hash, set and sorted set; XADD's stream stays).
// Cause: store/settings.go probeCommands (writes whose cleanup, DEL or
// PEXPIRE, may itself be refused).
func TestAtk65RefusedDelLeavesKeys(t *testing.T) {
	r := testenv.StartRedis(t)
	cases := []struct {
		without []string
		needs   SettingsNeeds
	}{
		{[]string{"del"}, SettingsNeeds{Counts: true}},
		{[]string{"del", "pexpire"}, SettingsNeeds{Tracking: true}},
	}
	for _, c := range cases {
		u := "no" + strings.Join(c.without, "")
		args := []string{"ACL", "SETUSER", u, "on", ">pw", "~*", "&*", "+@all"}
		for _, w := range c.without {
			args = append(args, "-"+w)
		}
		r.CLI(args...)
		_, err := atk64Check(Options{Addrs: []string{r.Addr}, Username: u, Password: "pw"}, "guard:", c.needs)
		require.Error(t, err, "control: refused")
		assert.Empty(t, atk65Leftovers(r), "without %v (%+v): keys left behind", c.without, c.needs)
		r.CLI("FLUSHALL")
	}
}

// DEFECT. The probe's script runs as go-redis runs scripts: EVALSHA, and
// EVAL only on NOSCRIPT. Once the probe's one-line script is in Redis's
// script cache (another broker, or any client, ran it: the cache is
// shared by every user), a user refused EVAL (~* &* +@all -eval) passes the
// start check; the plugin's own scripts (redis_rate's, the offence count)
// are not cached on a fresh Redis and after each restart or SCRIPT FLUSH:
// their EVALSHA answers NOSCRIPT, their EVAL NOPERM, every failure count
// is lost (failureQueue.lost: Redis marked down). Cause:
// store/settings.go checkWrite (scriptProbe.Run asks EVAL only when the
// script is not cached).
func TestAtk65CachedProbeScriptHidesNoEval(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("ACL", "SETUSER", "noeval", "on", ">pw", "~*", "&*", "+@all", "-eval")
	r.CLI("SCRIPT", "LOAD", "return redis.call('PTTL', KEYS[1])")
	_, checkErr := atk64Check(Options{Addrs: []string{r.Addr}, Username: "noeval", Password: "pw"}, "guard:", SettingsNeeds{Counts: true})

	rdb := redis.NewClient(&redis.Options{Addr: r.Addr, Username: "noeval", Password: "pw"})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// The shape of ratelimit's incrExpire, not cached.
	runErr := redis.NewScript(`local n = redis.call('INCR', KEYS[1]) redis.call('PEXPIRE', KEYS[1], ARGV[1]) return n -- atk65`).
		Run(ctx, rdb, []string{"guard:offence:ip:192.0.2.1"}, 1000).Err()
	require.Error(t, runErr, "control: an uncached script of this user is refused")
	require.Contains(t, runErr.Error(), "NOPERM", "control")
	assert.Error(t, checkErr, "the start check let a user without EVAL start (%v)", runErr)
}

// HOLDS. Redis paused for writes (CLIENT PAUSE WRITE, as during a
// failover's switch) mid-probe: the reads answer, the pipeline waits at
// its first write; the check still ends within its 1.5 s bound, taken as
// down (nil), and once the pause ends nothing is left under the prefix.
func TestAtk65PausedWritesBounded(t *testing.T) {
	r := testenv.StartRedis(t)
	for _, needs := range atk65Needs {
		r.CLI("CLIENT", "PAUSE", "2500", "WRITE")
		took, err := atk64Check(Options{Addrs: []string{r.Addr}}, "guard:", needs)
		assert.NoError(t, err, "%+v", needs)
		assert.Less(t, took, 1600*time.Millisecond, "%+v: the check overran its bound", needs)
		time.Sleep(2600*time.Millisecond - took)
		time.Sleep(300 * time.Millisecond)
		assert.Empty(t, atk65Leftovers(r), "%+v: left after the pause", needs)
	}
}

// HOLDS. Key refusals (Redis 7.0: "no permissions to access one of the
// keys") are SettingsKeyPerm, naming the command and the key: a user
// that may only read the prefix (%R~guard:*), and one without rate:.
func TestAtk65KeyRefusalsClassified(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("ACL", "SETUSER", "ro", "on", ">pw", "%R~guard:*", "~rate:guard:*", "&*", "+@all")
	r.CLI("ACL", "SETUSER", "norate", "on", ">pw", "~guard:*", "&*", "+@all")
	for _, c := range []struct{ user, want string }{{"ro", "PEXPIRE guard:settings-check"}, {"norate", "rate:guard:settings-check"}} {
		_, err := atk64Check(Options{Addrs: []string{r.Addr}, Username: c.user, Password: "pw"}, "guard:", SettingsNeeds{Counts: true})
		var se *SettingsError
		require.True(t, errors.As(err, &se), "%s: %v", c.user, err)
		assert.Equal(t, SettingsKeyPerm, se.Fault, "%s: %v", c.user, err)
		assert.Contains(t, se.Error(), c.want, c.user)
		fmt.Println("atk65:", c.user, se.Error())
	}
}

// HOLDS (no false positive found). A user refused a command that the
// configuration never runs (read from plugin/, store/, store/replica/,
// conflicts/, ratelimit/ and redis_rate's script) passes the start check:
// under backend defer with clientid_conflict off any write or script;
// failures counted without conflict tracking, tracking's hash, set and
// stream commands; conflict tracking alone, SET, TIME and the known
// sources' ZRANGE and ZREMRANGEBYRANK; TYPE everywhere. And with conflict
// tracking alone, a user without rate:<prefix>* keys passes.
func TestAtk65UnrunCommandsPass(t *testing.T) {
	r := testenv.StartRedis(t)
	cases := []struct {
		needs   SettingsNeeds
		without []string
	}{
		{SettingsNeeds{}, []string{"set", "del", "pexpire", "eval", "evalsha", "zadd", "hset", "xadd", "time", "incr", "type"}},
		{SettingsNeeds{Counts: true}, []string{"hset", "hget", "zadd", "xadd", "zrange", "sscan", "hincrby", "type", "zscore", "hgetall"}},
		{SettingsNeeds{Counts: true, Known: true}, []string{"hset", "xadd", "sscan", "zscore", "zrangebyscore", "zrem", "type", "hmget"}},
		{SettingsNeeds{Tracking: true}, []string{"set", "time", "zrange", "zremrangebyrank", "type"}},
	}
	for _, c := range cases {
		for _, w := range c.without {
			u := "x" + w
			r.CLI("ACL", "SETUSER", u, "reset", "on", ">pw", "~*", "&*", "+@all", "-"+w)
			_, err := atk64Check(Options{Addrs: []string{r.Addr}, Username: u, Password: "pw"}, "guard:", c.needs)
			assert.NoError(t, err, "%+v: a user without %s (never run) refused", c.needs, w)
		}
	}
	r.CLI("ACL", "SETUSER", "norate", "on", ">pw", "~guard:*", "&*", "+@all")
	_, err := atk64Check(Options{Addrs: []string{r.Addr}, Username: "norate", Password: "pw"}, "guard:", SettingsNeeds{Tracking: true})
	assert.NoError(t, err, "tracking alone: a user without rate: keys refused")
	assert.Empty(t, atk65Leftovers(r))
}

// HOLDS. Redis hung at the probe's script (EVALSHA) or at its pipeline
// (a proxy forwarding nothing more from there on): the check ends within
// its 1.5 s bound, taken as down (nil), and leaves nothing.
func TestAtk65HungProbeBounded(t *testing.T) {
	for _, trigger := range []string{"evalsha", "pexpire"} {
		r := testenv.StartRedis(t)
		addr := atk61Proxy(t, r.Addr, trigger, 1, 0)
		took, err := atk64Check(Options{Addrs: []string{addr}}, "guard:", SettingsNeeds{Counts: true, Known: true, Tracking: true})
		t.Logf("hung at %s: %v", trigger, took)
		assert.NoError(t, err, trigger)
		assert.Less(t, took, 1600*time.Millisecond, "hung at %s: the check overran its bound", trigger)
		assert.Empty(t, atk65Leftovers(r), trigger)
	}
}

// HOLDS. On a Redis Cluster of two masters the probe's keys
// (<prefix>settings-check, rate:<prefix>settings-check: two slots) are
// left on neither node, with every need, and with a user refused DEL the
// keys it leaves expire.
func TestAtk65ClusterProbeLeavesNothing(t *testing.T) {
	nodes := atk60Cluster(t, []string{"0-8191"}, []string{"8192-16383"})
	addrs := []string{nodes[0].Addr, nodes[1].Addr}
	_, err := atk64Check(Options{Addrs: addrs}, "guard:", SettingsNeeds{Counts: true, Known: true, Tracking: true})
	require.NoError(t, err)
	for _, n := range nodes {
		assert.Empty(t, atk65Leftovers(n))
	}
	for _, n := range nodes {
		n.CLI("ACL", "SETUSER", "nodel", "on", ">pw", "~*", "&*", "+@all", "-del")
	}
	_, err = atk64Check(Options{Addrs: addrs, Username: "nodel", Password: "pw"}, "guard:", SettingsNeeds{Counts: true, Known: true, Tracking: true})
	require.Error(t, err, "control")
	for _, n := range nodes {
		for _, l := range atk65Leftovers(n) {
			assert.NotContains(t, l, "pttl=-1 ", "left for ever")
		}
	}
}

// atk65Fake answers RESP2: HELLO unknown, PING PONG, INFO a standalone master, GET nil,
// SCAN nothing, errCmd the error reply, anything else 0.
func atk65Fake(t *testing.T, errCmd, reply string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil || !strings.HasPrefix(line, "*") {
						return
					}
					n, _ := strconv.Atoi(strings.TrimSpace(line[1:]))
					var args []string
					for i := 0; i < n; i++ {
						hdr, err := r.ReadString('\n')
						if err != nil {
							return
						}
						m, _ := strconv.Atoi(strings.TrimSpace(hdr[1:]))
						buf := make([]byte, m+2)
						if _, err := io.ReadFull(r, buf); err != nil {
							return
						}
						args = append(args, string(buf[:m]))
					}
					out := ":0\r\n"
					switch strings.ToLower(args[0]) {
					case errCmd:
						out = "-" + reply + "\r\n"
					case "hello":
						out = "-ERR unknown command 'HELLO'\r\n"
					case "scan":
						out = "*2\r\n$1\r\n0\r\n*0\r\n"
					case "ping":
						out = "+PONG\r\n"
					case "info":
						info := "# Server\r\nredis_mode:standalone\r\n# Replication\r\nrole:master\r\n"
						out = "$" + strconv.Itoa(len(info)) + "\r\n" + info + "\r\n"
					case "get":
						out = "$-1\r\n"
					}
					if _, err := c.Write([]byte(out)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}

// DEFECT (low; Redis 7.2 and later). Redis 7.2 names the user in a
// command refusal ("NOPERM User <name> has no permissions to run the
// 'pexpire' command"); probeFault tells a key refusal by " key" anywhere
// in the reply, so a user whose name starts with "key" (keyring,
// keydb-guard) refused a command is told SettingsKeyPerm: the start's line
// asks for key patterns ("lets read and write the keys under key_prefix")
// where a command is missing. Cause: store/settings.go probeFault (and
// checkKeys) matching " key" instead of Redis's key wording.
func TestAtk65UserNamedKeyRefusedCommandToldAsKey(t *testing.T) {
	addr := atk65Fake(t, "pexpire", "NOPERM User keyring has no permissions to run the 'pexpire' command")
	_, err := atk64Check(Options{Addrs: []string{addr}}, "guard:", SettingsNeeds{Counts: true})
	var se *SettingsError
	require.True(t, errors.As(err, &se), "%v", err)
	assert.Contains(t, se.Error(), "PEXPIRE", "control")
	assert.Equal(t, SettingsNoPerm, se.Fault, "a command refusal told as a key refusal: %v", err)
}
