package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// atk57: a hostile pass on 67016c1 (closeAll: every instance's guard
// closed side by side at the first cleanup) and ac8eb06 (the start check's
// new faults; store.RedactArgs).

// atk57OptionLine is the last "mosquitto-guard: option" line of out.
func atk57OptionLine(out string) string {
	line := ""
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "mosquitto-guard: option") {
			line = l
		}
	}
	return line
}

// atk57Cluster starts one cluster-enabled Redis; slots: whether it gets
// every slot (a one-shard cluster) before the broker starts.
func atk57Cluster(t *testing.T, slots bool) *testenv.Redis {
	t.Helper()
	r := testenv.StartRedis(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "200")
	if slots {
		r.CLI("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
		eventually(t, 10*time.Second, func() bool {
			return strings.Contains(r.CLI("CLUSTER", "INFO"), "cluster_state:ok")
		}, "one-shard cluster not ok")
	}
	return r
}

// HOLDS. README, Managed Redis: "the one redis_addr is a node of a Redis
// Cluster of several shards" stops the broker naming redis_addr; "A Redis
// that does not answer at all is no configuration error". A node of a
// one-shard cluster whose slots are not assigned yet (the cluster being
// created as the broker starts; Redis 7.0 says cluster_size:1 there) is no
// cluster of several shards, and time mends it: the broker starts.
func TestAtk57ClusterNodeNoSlotsYetStarts(t *testing.T) {
	testenv.Need(t, "mosquitto", "redis-server", "redis-cli", "stdbuf")
	r := atk57Cluster(t, false)
	t.Logf("CLUSTER INFO: %q", firstLines(r.CLI("CLUSTER", "INFO"), 7))
	conf := "allow_anonymous false\nauth_plugin " + pluginPath + "\nauth_opt_redis_addr " + r.Addr + "\n"
	exited, out := atk55Run(t, conf, 3*time.Second)
	t.Logf("exited=%v; %s", exited, atk57OptionLine(out))
	assert.False(t, exited, "one node, no slots yet (cluster_size:0): no cluster of several shards; the broker should start:\n%s", out)
}

func firstLines(s string, n int) string {
	l := strings.Split(s, "\n")
	if len(l) > n {
		l = l[:n]
	}
	return strings.Join(l, "|")
}

// DEFECT (false negative of the start check; failed 3 of 3 runs, both
// cases). README, Managed Redis: "the
// plugin then asks Redis once more at start ..., and stops the broker the
// same way when Redis's answer says the other settings are wrong" (table:
// "DB index is out of range; NOPERM for SELECT → redis_db"); ac8eb06: a
// one-shard cluster "serves every key at one address and is let be". A
// Redis that refuses SELECT altogether is such an answer when redis_db is
// not 0: a cluster node ("ERR SELECT is not allowed in cluster mode"; the
// one-shard cluster ac8eb06 lets be), or a Redis with SELECT renamed away
// ("ERR unknown command 'select'"). No retry mends it: every connection
// go-redis makes fails its SELECT.
// Observed: the broker starts; "redis at ... unreachable (store: ping: ERR
// SELECT is not allowed in cluster mode); redis_unavailable allow ...",
// for ever, no option named (store/settings.go:143-183 settingsFault knows
// neither answer).
// Expected: the broker stops with one line naming redis_db.
func TestAtk57SelectRefusedRedisDB(t *testing.T) {
	testenv.Need(t, "mosquitto", "redis-server", "redis-cli", "stdbuf")
	cases := []struct {
		name string
		r    func(t *testing.T) *testenv.Redis
	}{
		{"one-shard cluster", func(t *testing.T) *testenv.Redis { return atk57Cluster(t, true) }},
		{"SELECT renamed away", func(t *testing.T) *testenv.Redis {
			return testenv.StartRedis(t, "--rename-command", "SELECT", "")
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := c.r(t)
			base := "allow_anonymous false\nauth_plugin " + pluginPath + "\nauth_opt_redis_addr " + r.Addr + "\n"
			// control: redis_db 0 starts
			exited, out := atk55Run(t, base, 1500*time.Millisecond)
			require.False(t, exited, "control: redis_db 0 should start:\n%s", out)
			exited, out = atk55Run(t, base+"auth_opt_redis_db 1\n", 3*time.Second)
			t.Logf("exited=%v; option line %q; health line %q", exited, atk57OptionLine(out), findLine(out, "mosquitto-guard: redis"))
			assert.True(t, exited && strings.Contains(out, "mosquitto-guard: option redis_db"),
				"redis_db 1 on a Redis that refuses SELECT: the broker should stop naming redis_db; exited=%v:\n%s", exited, out)
		})
	}
}

// HOLDS. ac8eb06: "no log line of the plugin carries that echo"; guardctl's
// errors pass through OneLine. A password with quotes, backslashes, a
// newline (from GUARD_REDIS_PASSWORD) and non-ASCII bytes, to a Redis with
// AUTH and HELLO renamed away (Redis echoes the arguments), a username set
// (HELLO AUTH user pass; AUTH user pass): neither the broker's log nor
// guardctl's stdout and stderr shows any part of it.
func TestAtk57OddPasswordNeverEchoed(t *testing.T) {
	testenv.Need(t, "mosquitto", "redis-server", "redis-cli", "stdbuf")
	r := testenv.StartRedis(t, "--rename-command", "AUTH", "", "--rename-command", "HELLO", "")
	parts := []string{"Zq'9", "x\"Kk", "\\Wv", "Ünï"}
	pw := strings.Join(parts, "")
	conf := "allow_anonymous false\nauth_plugin " + pluginPath + "\nauth_opt_redis_addr " + r.Addr +
		"\nauth_opt_redis_username guard57\nauth_opt_redis_password " + pw + "\n"
	exited, out := atk55Run(t, conf, 2500*time.Millisecond)
	t.Logf("broker exited=%v; %s", exited, atk57OptionLine(out))
	for _, p := range parts {
		assert.NotContains(t, out, p, "a part of the password in the broker's log")
	}
	gc := guardctlPath(t)
	for _, envPw := range []string{pw, "Zq'9\nx\"Kk\\Wv", "line1-Qz7\r\nline2-Pj4"} {
		cmd := exec.Command(gc, "list", "--redis-addr", r.Addr, "--redis-username", "guard57")
		cmd.Env = append(os.Environ(), "GUARD_REDIS_PASSWORD="+envPw)
		b, _ := cmd.CombinedOutput()
		t.Logf("guardctl: %q", string(b))
		for _, p := range append(parts, "line1-Qz7", "line2-Pj4", "Zq'9") {
			assert.NotContains(t, string(b), p, "a part of the password in guardctl's output")
		}
	}
}

// guardctlPath is build/guardctl next to the plugin.
func guardctlPath(t *testing.T) string {
	t.Helper()
	p := strings.TrimSuffix(pluginPath, "mosquitto_guard.so") + "guardctl"
	if _, err := os.Stat(p); err != nil {
		t.Skipf("no guardctl at %s", p)
	}
	return p
}

// HOLDS (passed 3 of 3; 1.6 s). README, Redis down: the stop is bounded (1.5 s for the
// plugin's cleanup; 67016c1: "The stop takes 1.5 s at most" with every
// instance closed side by side). Four listeners (per_listener_settings
// true), each instance its own Redis: one hung (SIGSTOP), one refusing,
// two up, with clients connected on every listener (their DISCONNECTs
// come at the stop). SIGTERM to exit within 2.5 s, and the instances
// whose Redis is up remove their live client-ID entries.
func TestAtk57StopMixedRedisFourListeners(t *testing.T) {
	e := envWithoutBroker(t)
	hung := testenv.StartRedis(t)
	require.NoError(t, hung.Process.Signal(syscall.SIGSTOP))
	t.Cleanup(func() { _ = hung.Process.Signal(syscall.SIGCONT) })
	down := testenv.StartRedis(t)
	down.Stop()
	other := func(addr string) string {
		return "allow_anonymous false\nauth_plugin " + pluginPath + "\nauth_opt_redis_addr " + addr +
			"\nauth_opt_password_file " + e.passwd + "\nauth_opt_clientid_conflict deny\nauth_opt_redis_unavailable allow\n"
	}
	conf := "per_listener_settings true\nlistener {{PORT}} 127.0.0.1\n" + other(hung.Addr)
	var upAddrs, allAddrs []string
	for i, a := range []string{down.Addr, e.redis.Addr, e.redis.Addr} {
		p := atk54FreePort(t)
		ad := fmt.Sprintf("127.0.0.1:%d", p)
		allAddrs = append(allAddrs, ad)
		if i == 0 {
			conf += fmt.Sprintf("listener %d 127.0.0.1\n", p) + other(a)
		} else {
			upAddrs = append(upAddrs, ad)
			conf += fmt.Sprintf("listener %d 127.0.0.1\n", p) + e.conf("auth_opt_clientid_conflict deny")
		}
	}
	a := startBroker(t, conf)
	for _, ad := range allAddrs {
		require.NoError(t, a.WaitPort(ad, 5*time.Second))
	}
	var ids []string
	for i, ad := range upAddrs {
		for j := range 5 {
			id := fmt.Sprintf("atk57-mixed-%d-%d", i, j)
			ids = append(ids, id)
			require.EqualValues(t, accepted, atk56Dial(t, ad, id, "alice", "alice-pw"))
		}
	}
	for _, id := range ids {
		e.waitLive(id, 1)
	}
	// clients on the refusing listener too (redis_unavailable allow)
	for j := range 5 {
		atk56Dial(t, allAddrs[0], fmt.Sprintf("atk57-down-%d", j), "alice", "alice-pw")
	}
	start := time.Now()
	require.NoError(t, a.Signal(syscall.SIGTERM))
	_, done := a.Wait(8 * time.Second)
	took := time.Since(start)
	require.True(t, done, "broker did not stop")
	t.Logf("SIGTERM to exit %v; tail:\n%s", took.Round(10*time.Millisecond), atk52Tail(a.Output(), 8))
	assert.Less(t, took, 2500*time.Millisecond, "the stop's bound")
	for _, id := range ids {
		assert.Equal(t, "0", e.redis.CLI("HLEN", "guard:conn:"+id), "%s: its live entry (Redis up) is left after the stop", id)
	}
	assert.NotContains(t, a.Output(), "internal error", "a panic in the cleanup")
}

// DEFECT (false negative of the start check; failed 3 of 3 runs).
// README, Managed Redis: at
// start the plugin "stops the broker the same way when Redis's answer says
// the other settings are wrong", and ac8eb06 added "NOPERM for SELECT →
// redis_db": an ACL that refuses what the plugin needs. An ACL user whose
// key pattern misses key_prefix (~other:* for guard:*) is refused every key
// the plugin reads and writes (NOPERM), and no retry mends it.
// Observed: no option named; plugin_init waits its whole 10 s for a first
// load that is refused ("replica: Redis refused a command the replica
// needs (load: fetch: NOPERM ...)"), the broker then starts, the health
// line calls Redis "unreachable (store: lookup: NOPERM ...)", and a client
// from an IP banned in Redis is accepted (redis_unavailable allow).
// Expected: the broker stops with one line naming redis_username (the
// user's ACL) or key_prefix, as for NOPERM on SELECT. Responsible:
// store/settings.go:72-109 (CheckSettings asks PING and INFO only: no key
// of key_prefix is tried), plugin/lists.go:140 (the start then waits the
// whole initialLoadWait for a load Redis refuses).
func TestAtk57ACLKeyPatternMissesPrefixStarts(t *testing.T) {
	e := envWithoutBroker(t)
	e.redis.CLI("ACL", "SETUSER", "guard57", "on", ">k57-secret", "~other:*", "&*", "+@all")
	e.redis.CLI("SET", "guard:block:ip:127.0.57.9", "atk57")
	port := atk54FreePort(t)
	conf := fmt.Sprintf("listener %d 127.0.0.1\nuser root\nlog_dest stdout\nlog_type all\n", port) +
		e.conf("auth_opt_redis_username guard57", "auth_opt_redis_password k57-secret")
	path := t.TempDir() + "/m.conf"
	require.NoError(t, os.WriteFile(path, []byte(conf), 0o600))
	var buf syncBuf
	cmd := exec.Command("stdbuf", "-oL", "mosquitto", "-c", path)
	cmd.Stdout, cmd.Stderr = &buf, &buf
	start := time.Now()
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	var code byte = 255
	for time.Since(start) < 25*time.Second {
		select {
		case <-done:
			t.Logf("the broker stopped: %s", atk57OptionLine(buf.String()))
			l := atk57OptionLine(buf.String())
			assert.True(t, strings.Contains(l, "option redis_username") || strings.Contains(l, "option key_prefix"), "the option named: %s", l)
			return
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, cd, err := mqttc.Dial(ctx, mqttc.Options{Addr: addr, SourceIP: "127.0.57.9", ClientID: "atk57-banned",
			Username: str("alice"), Password: str("alice-pw")})
		cancel()
		if err == nil {
			code = cd
			if c != nil {
				c.Close()
			}
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("CONNACK %d for a banned IP %v after the start; lines:\n%s", code, time.Since(start).Round(100*time.Millisecond),
		grepLines(buf.String(), "NOPERM"))
	assert.NotEqualValues(t, accepted, code, "the broker started with an ACL user that may read no guard: key, and a banned IP is let in")
}

// syncBuf is a strings.Builder safe for a process's output and the test.
type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func grepLines(out, s string) string {
	var ls []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, s) {
			ls = append(ls, l)
		}
	}
	return strings.Join(ls, "\n")
}
