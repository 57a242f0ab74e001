package plugin

// atk56: a hostile pass on 7abe520's settings check at start
// (store.CheckSettings, plugin checkSettings), driven as plugin.New drives it.

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// atk56Check runs the start's settings check (checkSettings, as plugin.New
// does) for the options opts, and returns its error (nil: the broker
// starts) and how long it took (first).
func atk56Check(t *testing.T, opts map[string]string) (time.Duration, error) {
	t.Helper()
	cfg, err := config.ParseRedis(opts)
	require.NoError(t, err)
	st := store.New(cfg.StoreOptions(), keys.Builder{Prefix: cfg.KeyPrefix})
	defer st.Close()
	start := time.Now()
	err = checkSettings(st, cfg)
	return time.Since(start), err
}

// atk56Option is the option an error names ("" for none).
func atk56Option(err error) string {
	var oe *config.OptionError
	if errors.As(err, &oe) {
		return oe.Option
	}
	return ""
}

// HOLDS. README, Managed Redis: the start check stops the broker only "when
// Redis's answer says the other settings are wrong". A correct
// configuration whose ACL user may not run INFO is no such answer
// (NOPERM): the broker starts, with redis_db 0 or another.
//
// A user that may not run PING was let start too (atk56's HOLDS), but the
// health probe asks PING every 200 ms and took the refusal for Redis down,
// for good (under redis_unavailable deny every client refused): that user
// now stops the broker, naming redis_username.
func TestAtk56ACLUserWithoutPingOrInfoStarts(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("ACL", "SETUSER", "noinfo", "on", ">p-secret", "~*", "&*", "+@all", "-info")
	r.CLI("ACL", "SETUSER", "noping", "on", ">p-secret", "~*", "&*", "+@all", "-ping", "-info")
	for _, db := range []string{"0", "3"} {
		took, err := atk56Check(t, map[string]string{"redis_addr": r.Addr, "redis_username": "noinfo",
			"redis_password": "p-secret", "redis_db": db})
		t.Logf("db %s: %v (%v)", db, err, took)
		assert.NoError(t, err, "db %s: an ACL user without INFO rights is no wrong setting", db)
		_, err = atk56Check(t, map[string]string{"redis_addr": r.Addr, "redis_username": "noping",
			"redis_password": "p-secret", "redis_db": db})
		t.Logf("db %s, no PING: %v", db, err)
		assert.Equal(t, "redis_username", atk56Option(err), "db %s: a user without PING: the health probe would read Redis as down for good", db)
	}
}

// Why a user without PING is a wrong setting: the health probe takes the
// refusal for Redis down, and keeps it.
func TestNoPingUserReadsAsRedisDown(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("ACL", "SETUSER", "noping", "on", ">p-secret", "~*", "&*", "+@all", "-ping")
	cfg, err := config.ParseRedis(map[string]string{"redis_addr": r.Addr, "redis_username": "noping", "redis_password": "p-secret"})
	require.NoError(t, err)
	st := store.New(cfg.StoreOptions(), keys.Builder{Prefix: cfg.KeyPrefix})
	defer st.Close()
	h := newHealth(healthDeps{probe: st.Ping, timeout: cfg.RedisTimeout, log: func(Level, string) {}, where: r.Addr})
	assert.False(t, h.up(), "PING refused (NOPERM): Redis reads as down")
}

// HOLDS. README, Redis down: "An unreachable Redis at start does not stop
// the broker (a hung one delays its start by the start checks' bounds:
// 1.5 s ...)". A hung Redis (SIGSTOP), and a hung sole sentinel, hold the
// check to about 1.5 s and are no configuration error.
func TestAtk56HungRedisOrSentinelBounded(t *testing.T) {
	r := testenv.StartRedis(t)
	require.NoError(t, r.Process.Signal(syscall.SIGSTOP))
	t.Cleanup(func() { _ = r.Process.Signal(syscall.SIGCONT) })
	took, err := atk56Check(t, map[string]string{"redis_addr": r.Addr})
	t.Logf("hung Redis: %v (%v)", err, took)
	assert.NoError(t, err)
	assert.Less(t, took, 1700*time.Millisecond)

	s := testenv.StartSentinel(t, testenv.SentinelOptions{Replicas: 0, Sentinels: 2, Quorum: 1})
	for _, sn := range s.Sentinels {
		require.NoError(t, sn.Process.Signal(syscall.SIGSTOP))
		t.Cleanup(func() { _ = sn.Process.Signal(syscall.SIGCONT) })
	}
	took, err = atk56Check(t, map[string]string{"redis_addr": s.Addrs, "redis_sentinel_master": s.Name})
	t.Logf("hung sentinels: %v (%v)", err, took)
	assert.NoError(t, err)
	assert.Less(t, took, 1700*time.Millisecond)
}

// DEFECT (wrong option named; failed 3 of 3 runs). README, Managed Redis, Sentinel: "auth_opt_redis_password <the
// master's password>", "#auth_opt_redis_sentinel_password <the sentinels'
// requirepass, if they have one>"; the start check names "the option to
// fix", and for NOAUTH "redis_password". Sentinels with a password, the
// right redis_password for the master and redis_sentinel_password
// forgotten: the sentinels answer NOAUTH to SENTINEL
// get-master-addr-by-name.
// Observed (store/settings.go:94 NOAUTH taken from the sentinels' joined
// error; config/managed.go:319-321 never mentions the sentinels' password):
// "option redis_password: ... expected a password: the Redis at
// master "..." of the sentinels ... requires one": redis_password is set
// and right; nothing points at redis_sentinel_password.
// Expected: redis_sentinel_password named (or at least mentioned).
func TestAtk56SentinelNoAuthNamesRedisPassword(t *testing.T) {
	s := testenv.StartSentinel(t, testenv.SentinelOptions{Replicas: 0, Sentinels: 1, Quorum: 1})
	s.Master().CLI("CONFIG", "SET", "requirepass", "master-secret")
	s.Sentinels[0].CLI("ACL", "SETUSER", "default", "resetpass", ">sentinel-secret")
	_, err := atk56Check(t, map[string]string{"redis_addr": s.Addrs, "redis_sentinel_master": s.Name,
		"redis_password": "master-secret"})
	t.Logf("check: %v", err)
	require.Error(t, err, "the sentinels refuse the plugin: a fault no retry mends")
	assert.NotContains(t, err.Error(), "secret")
	assert.True(t, atk56Option(err) == "redis_sentinel_password" || strings.Contains(err.Error(), "redis_sentinel_password"),
		"the sentinels want a password (redis_sentinel_password); the error names only %q: %v", atk56Option(err), err)
}

// DEFECT (false negative; failed 3 of 3 runs). README, Managed Redis: "A fault no retry mends
// stops the broker with one line naming the option to fix"; the start check
// asks Redis "and stops the broker the same way when Redis's answer says
// the other settings are wrong"; Sentinel: the plugin writes to the master
// "never a replica"; Redis down: READONLY is an unavailable Redis. A
// redis_addr naming a replica (role:slave, read only) answers PING and
// INFO, which say so; every write (automatic bans, failure counts, the
// broker's live entries) is refused READONLY for ever.
// Observed: no error: the broker starts silently ("connected to redis",
// "ready"; only a replica line: "cannot keep the flush mark guard:epoch
// (READONLY ...)"). store/settings.go:62-72 checks PING and
// redis_mode only, not role.
// Expected: a line naming redis_addr.
func TestAtk56ReplicaAsRedisAddrStartsSilently(t *testing.T) {
	m := testenv.StartRedis(t)
	rep := testenv.StartRedis(t)
	rep.CLI("REPLICAOF", "127.0.0.1", fmt.Sprint(m.Port))
	_, err := atk56Check(t, map[string]string{"redis_addr": rep.Addr})
	t.Logf("check: %v; role: %s", err, strings.SplitN(rep.CLI("ROLE"), "\n", 2)[0])
	assert.Equal(t, "redis_addr", atk56Option(err), "a read-only replica as redis_addr: %v", err)
}

// DEFECT (false negative; failed 3 of 3 runs). Same claim. One redis_addr naming one node of
// a Redis Cluster (README: "several, comma-separated, for a Redis
// Cluster"): the plugin uses a single-node client; every key of the other
// node's slots is answered MOVED for ever.
// Observed: no error: the broker starts silently ("connected", "ready");
// store/settings.go:62-72 does not look at INFO's cluster_enabled:1.
// Expected: a line naming redis_addr.
func TestAtk56OneClusterNodeAsRedisAddrStartsSilently(t *testing.T) {
	c := testenv.StartRedisCluster(t, 2)
	_, err := atk56Check(t, map[string]string{"redis_addr": c.Nodes[0].Addr})
	t.Logf("check: %v", err)
	assert.Equal(t, "redis_addr", atk56Option(err), "one node of a cluster as redis_addr: %v", err)
}

// HOLDS (no false positive; README wording). README table: "WRONGPASS
// ..., or a password where it has none" names redis_password. A Redis
// without a password and a redis_password set: go-redis's HELLO 3 AUTH
// passes (the default user is nopass), the plugin works, and the check
// lets the broker start: the table's "or a password where it has none"
// does not happen on Redis 7 (it would only with a plain AUTH).
func TestAtk56PasswordWhereNoneStarts(t *testing.T) {
	r := testenv.StartRedis(t)
	_, err := atk56Check(t, map[string]string{"redis_addr": r.Addr, "redis_password": "x-secret"})
	t.Logf("check: %v", err)
	assert.NoError(t, err)
}

// DEFECT (false positive; failed 3 of 3 runs). README, Managed Redis: the broker stops when
// "the sentinels monitor no master of that name"; "A Redis that does not
// answer at all is no configuration error: the broker starts, and
// redis_unavailable applies until it answers". Two sentinels: the one that
// monitors the master is down (restarting), the other was just started and
// not yet given SENTINEL MONITOR (here: SENTINEL REMOVE), so it answers nil.
// The master name is right: the sentinel that monitors it is down.
// Observed: "option redis_sentinel_master ... expected a master name that
// the sentinels ... monitor": the broker stops (store/settings.go:81,
// errors.Is(err, redis.Nil) on go-redis's errors.Join of every sentinel's
// answer: one nil among errors is enough).
// Expected: no configuration error (the broker starts; redis_unavailable
// until a sentinel names the master), as when every sentinel is down.
func TestAtk56OneSentinelNilOthersDownStops(t *testing.T) {
	s := testenv.StartSentinel(t, testenv.SentinelOptions{Replicas: 0, Sentinels: 2, Quorum: 1})
	opts := map[string]string{"redis_addr": s.Addrs, "redis_sentinel_master": s.Name}
	_, err := atk56Check(t, opts)
	require.NoError(t, err, "control: both sentinels monitor the master")
	s.Sentinels[1].CLI("SENTINEL", "REMOVE", s.Name)
	_, err = atk56Check(t, opts)
	require.NoError(t, err, "control: one sentinel monitors the master and answers")
	s.Sentinels[0].Stop()
	_, err = atk56Check(t, opts)
	t.Logf("check: %v", err)
	assert.NoError(t, err, "the sentinel that monitors the master is down: no configuration error")
}

// DEFECT (false negative; failed 3 of 3 runs). README, Managed Redis: the broker stops when
// "the one redis_addr is a sentinel (redis_mode:sentinel) and no
// redis_sentinel_master is set", and "A fault no retry mends stops the
// broker with one line naming the option to fix". The README's own
// Sentinel example lists three sentinels; forgetting
// redis_sentinel_master there makes redis_addr a Redis Cluster's seeds,
// and a sentinel knows no CLUSTER command.
// Observed: no error (the PING's "ERR unknown command 'cluster', with args
// beginning with: 'slots'" is no fault settingsFault knows:
// store/settings.go:72-100, its "unknown command ... sentinel" case only
// with redis_sentinel_master): the broker starts, its health line says
// "redis at ... unreachable (store: ping: ERR unknown command 'cluster'
// ...)", Redis down for good.
// Expected: a line naming redis_sentinel_master (or redis_addr).
func TestAtk56SeveralSentinelsWithoutMasterStartSilently(t *testing.T) {
	s := testenv.StartSentinel(t, testenv.SentinelOptions{Replicas: 0, Sentinels: 2, Quorum: 1})
	_, err := atk56Check(t, map[string]string{"redis_addr": s.Addrs})
	t.Logf("check: %v", err)
	assert.Contains(t, []string{"redis_sentinel_master", "redis_addr"}, atk56Option(err),
		"two sentinels as redis_addr, no redis_sentinel_master: %v", err)
}

// HOLDS. A Redis Cluster with one of its two nodes down (stopped, then
// hung): the seeds are right; no configuration error, within the bound.
func TestAtk56ClusterNodeDownStarts(t *testing.T) {
	c := testenv.StartRedisCluster(t, 2)
	c.Nodes[1].Stop()
	took, err := atk56Check(t, map[string]string{"redis_addr": c.Addrs})
	t.Logf("node refusing: %v (%v)", err, took)
	assert.NoError(t, err)
	c2 := testenv.StartRedisCluster(t, 2)
	require.NoError(t, c2.Nodes[0].Process.Signal(syscall.SIGSTOP))
	t.Cleanup(func() { _ = c2.Nodes[0].Process.Signal(syscall.SIGCONT) })
	took, err = atk56Check(t, map[string]string{"redis_addr": c2.Addrs})
	t.Logf("node hung: %v (%v)", err, took)
	assert.NoError(t, err)
	assert.Less(t, took, 1700*time.Millisecond)
}
