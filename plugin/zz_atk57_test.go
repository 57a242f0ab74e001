package plugin

// atk57: a hostile pass on ac8eb06's start check (store.CheckSettings,
// plugin checkSettings) and 67016c1's stop (every instance's Guard.Close
// side by side, from goroutines of the cgo layer's closeAll).

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// atk57OneShard is one cluster-enabled Redis serving every slot.
func atk57OneShard(t *testing.T) *testenv.Redis {
	t.Helper()
	r := testenv.StartRedis(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "200")
	r.CLI("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
	require.Eventually(t, func() bool { return strings.Contains(r.CLI("CLUSTER", "INFO"), "cluster_state:ok") },
		10*time.Second, 50*time.Millisecond, "one-shard cluster not ok")
	return r
}

// HOLDS. README, Managed Redis: the start check stops the broker only "when
// Redis's answer says the other settings are wrong"; ac8eb06: "a one-shard
// cluster serves every key at one address and is let be", "A user without
// INFO rights is not checked further". Correct setups start: TLS with the
// right CA and a required password; a one-shard cluster read by an ACL
// user without INFO, or without CLUSTER; a master with a replica
// attached (INFO lists slave0:, role:master).
func TestAtk57StartCheckCorrectSetupsStart(t *testing.T) {
	ca := testenv.NewCA(t)
	tr := testenv.StartRedisTLS(t, &testenv.RedisTLS{CA: ca, Names: []string{"redis.test"}}, "--requirepass", "tls-secret-57")
	one := atk57OneShard(t)
	one.CLI("ACL", "SETUSER", "noinfo", "on", ">p57", "~*", "&*", "+@all", "-info")
	one.CLI("ACL", "SETUSER", "nocluster", "on", ">p57", "~*", "&*", "+@all", "-cluster")
	m := testenv.StartRedis(t)
	rep := testenv.StartRedis(t)
	rep.CLI("REPLICAOF", "127.0.0.1", fmt.Sprint(m.Port))
	require.Eventually(t, func() bool { return strings.Contains(m.CLI("INFO", "replication"), "slave0:") },
		10*time.Second, 50*time.Millisecond, "replica not attached")
	cases := map[string]map[string]string{
		"TLS, right CA, password": {"redis_addr": tr.Addr, "redis_tls": "on", "redis_tls_ca": ca.CertPath,
			"redis_tls_server_name": "redis.test", "redis_password": "tls-secret-57"},
		"one-shard cluster, user without INFO":    {"redis_addr": one.Addr, "redis_username": "noinfo", "redis_password": "p57"},
		"one-shard cluster, user without CLUSTER": {"redis_addr": one.Addr, "redis_username": "nocluster", "redis_password": "p57"},
		"one-shard cluster":                       {"redis_addr": one.Addr},
		"master with a replica":                   {"redis_addr": m.Addr},
	}
	for name, opts := range cases {
		took, err := atk56Check(t, opts)
		t.Logf("%s: %v (%v)", name, err, took.Round(time.Millisecond))
		assert.NoError(t, err, "%s: a correct setup", name)
	}
}

// HOLDS. 67016c1: at exit the cgo layer closes every instance's guard at
// once, one goroutine each, each bounded by CloseBound; Close is "Safe to
// call more than once". Four guards of one process (one per listener):
// two on a Redis that is up (sharing it), one on a hung Redis, one on a
// refused port, each with its metrics endpoint, closed side by side (run
// under -race), then each closed again as guardCleanup does: all within
// CloseBound plus slack, every metrics port free again, no race.
func TestAtk57CloseSideBySide(t *testing.T) {
	up := testenv.StartRedis(t)
	hung := testenv.StartRedis(t)
	down := testenv.StartRedis(t)
	down.Stop()
	var guards []*Guard
	var ports []string
	for i, addr := range []string{up.Addr, up.Addr, hung.Addr, down.Addr} {
		mp := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		ports = append(ports, mp)
		cfg, err := config.Parse(map[string]string{"redis_addr": addr, "metrics_addr": mp, "clientid_conflict": "deny"})
		require.NoError(t, err)
		g, err := New(cfg, Output{Log: func(Level, string) {}, Kick: func(uintptr, string) {}})
		require.NoError(t, err, "guard %d", i)
		guards = append(guards, g)
	}
	require.NoError(t, hung.Process.Signal(syscall.SIGSTOP))
	t.Cleanup(func() { _ = hung.Process.Signal(syscall.SIGCONT) })
	start := time.Now()
	var wg sync.WaitGroup
	for _, g := range guards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g.Close()
		}()
	}
	wg.Wait()
	took := time.Since(start)
	for _, g := range guards {
		g.Close()
	}
	t.Logf("closed side by side in %v", took.Round(time.Millisecond))
	assert.Less(t, took, CloseBound+300*time.Millisecond, "the stop's bound")
	for _, p := range ports {
		l, err := net.Listen("tcp", p)
		if assert.NoError(t, err, "metrics port %s still held", p) {
			l.Close()
		}
	}
}

// DEFECT (false negative of the start check; failed 3 of 3 runs). README,
// Managed Redis, the start check's table:
// "WRONGPASS (a wrong password, an unknown ACL user; ...) → redis_password";
// config/managed.go words it "the password that the Redis at ... accepts
// for redis_username ... (or fix redis_username)". An unknown ACL user
// given without a password (redis_username set, redis_password not) on a
// Redis whose default user is on (Redis's default): go-redis sends no
// AUTH at all when the password is empty, so the plugin talks to Redis as
// the default user, redis_username silently ignored.
// Observed: checkSettings returns nil (the broker starts); with a password
// it names redis_password "(or fix redis_username)".
// Expected: the start check names redis_username or redis_password (as
// it does for the same unknown user with a password). Responsible:
// config/managed.go:41 (Username passed to go-redis, which sends it only
// with a password) and store/settings.go:72-109 (no check that the user
// Redis sees is redis_username: ACL WHOAMI).
func TestAtk57UnknownUserWithoutPasswordStarts(t *testing.T) {
	r := testenv.StartRedis(t)
	_, withPw := atk56Check(t, map[string]string{"redis_addr": r.Addr, "redis_username": "nobody57", "redis_password": "x57"})
	require.Error(t, withPw, "control: the unknown user with a password is named")
	t.Logf("control: %v", withPw)
	// Fixed at the options' parse (the plugin's: config.Parse; guardctl's
	// ParseRedis leaves it, its password may come from GUARD_REDIS_PASSWORD):
	// a username without a password is refused whatever Redis holds.
	_, err := config.Parse(map[string]string{"redis_addr": r.Addr, "redis_username": "nobody57", "password_file": passwdFile(t)})
	t.Logf("without a password: %v", err)
	assert.Contains(t, []string{"redis_username", "redis_password"}, atk56Option(err),
		"an unknown redis_username without a password: the broker starts as Redis's default user: %v", err)
}

// HOLDS. README, Managed Redis: the start check stops the broker only "when
// Redis's answer says the other settings are wrong". A Redis still LOADING
// its dataset at start (restarted with a large RDB) answers -LOADING: no
// such answer, the broker starts (redis_unavailable until it is loaded).
func TestAtk57RedisLoadingAtStartStarts(t *testing.T) {
	r := testenv.StartRedis(t, "--enable-debug-command", "yes")
	r.CLI("DEBUG", "POPULATE", "3000000", "atk57", "64")
	r.CLI("SAVE")
	r.Restart()
	took, err := atk56Check(t, map[string]string{"redis_addr": r.Addr, "redis_db": "1"})
	// Read after the check: still loading then, it was loading throughout
	// (atk59: read before, it could have ended during the check).
	loading := r.CLI("INFO", "persistence")
	t.Logf("while loading (INFO after the check says loading:1: %v): %v (%v)", strings.Contains(loading, "loading:1"), err, took.Round(time.Millisecond))
	if !strings.Contains(loading, "loading:1") {
		t.Skip("inconclusive: Redis had loaded its dataset before the check ended (a fast machine)")
	}
	assert.NoError(t, err, "a Redis loading its dataset is no wrong setting")
}
