package e2e

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// tlsRedisEnv is envWithoutBroker with a Redis that speaks TLS only
// (StartRedisTLS): its CLI speaks TLS, and conf points the plugin at it.
func tlsRedisEnv(t *testing.T, o *testenv.RedisTLS) *env {
	t.Helper()
	testenv.Need(t, "mosquitto", "mosquitto_passwd", "redis-server", "redis-cli", "openssl")
	e := &env{t: t, dir: t.TempDir()}
	e.redis = testenv.StartRedisTLS(t, o)
	e.passwd = filepath.Join(e.dir, "passwd")
	for u, p := range users {
		e.addUser(u, p)
	}
	return e
}

// A Redis that speaks TLS only: the replica loads over TLS (a ban set
// before the broker starts refuses), follows keyspace notifications over TLS
// (a ban set after it refuses, and kicks a connected client), and failures
// are counted into an automatic ban over TLS.
func TestRedisTLS(t *testing.T) {
	ca := testenv.NewCA(t)
	e := tlsRedisEnv(t, &testenv.RedisTLS{CA: ca})
	e.redis.CLI("SET", "guard:block:clientid:tls-before", "set before the start")
	e.broker = startBroker(t, e.conf("auth_opt_redis_tls on", "auth_opt_redis_tls_ca "+ca.CertPath, "auth_opt_fail_limit 1"))
	e.logLine("mosquitto-guard: connected to redis at " + e.redis.Addr)
	e.logLine("replica loaded")
	assert.EqualValues(t, refused, e.connect(as("127.0.60.1", "tls-before", "alice", "alice-pw")), "the replica loaded over TLS")

	conn := e.dialWill(as("127.0.60.2", "tls-kick", "bob", "bob-pw"))
	e.redis.CLI("SET", "guard:block:clientid:tls-kick", "set after the start")
	assert.True(t, conn.Closed(time.Second), "the ban reached the replica over TLS and kicked")
	e.expect(as("127.0.60.3", "tls-kick", "bob", "bob-pw"), refused)

	e.connect(as("127.0.60.4", "g", "alice", "bad1"))
	e.connect(as("127.0.60.4", "g", "alice", "bad2"))
	e.waitKey("guard:block:ip:127.0.60.4", true, 3*time.Second)
	e.expect(as("127.0.60.4", "g2", "bob", "bob-pw"), refused)
	assert.Zero(t, e.countLines("unreachable"), "Redis was never down")
}

// A Redis that asks for a client certificate (tls-auth-clients yes): the
// plugin presents redis_tls_cert; without one, the broker stops at start with
// the line naming redis_tls_cert.
func TestRedisMutualTLS(t *testing.T) {
	ca := testenv.NewCA(t)
	e := tlsRedisEnv(t, &testenv.RedisTLS{CA: ca, AuthClients: true})
	tlsLines := []string{"auth_opt_redis_tls on", "auth_opt_redis_tls_ca " + ca.CertPath}

	out := startExpectFail(t, e.conf(tlsLines...))
	line := lastLine(out, "mosquitto-guard: option redis_tls_cert")
	assert.Contains(t, line, `option redis_tls_cert: bad value "": expected a client certificate (and its redis_tls_key) that the Redis at `+e.redis.Addr+" accepts (")
	assert.Contains(t, line, "certificate required")

	client := ca.Client(t, "mosquitto-guard")
	e.broker = startBroker(t, e.conf(append(tlsLines, "auth_opt_redis_tls_cert "+client.CertPath, "auth_opt_redis_tls_key "+client.KeyPath)...))
	e.logLine("replica loaded")
	conn := e.dialWill(as("127.0.61.1", "mtls-kick", "bob", "bob-pw"))
	e.redis.CLI("SET", "guard:block:ip:127.0.61.1", "set after the start")
	assert.True(t, conn.Closed(time.Second), "kicked: notifications over mutual TLS")
	e.expect(as("127.0.61.1", "mtls-2", "alice", "alice-pw"), refused)
	assert.Zero(t, e.countLines("unreachable"))
}

// TLS settings that Redis proves wrong stop the broker at start, each with
// one line naming the option, its value and what was expected, within the
// check's bound (2 s). redis_tls_server_name names what the certificate
// holds when the address does not.
func TestRedisTLSWrongSettingsStopTheBroker(t *testing.T) {
	ca := testenv.NewCA(t)
	// The certificate names redis.test only: no IP address.
	e := tlsRedisEnv(t, &testenv.RedisTLS{CA: ca, Names: []string{"redis.test"}})
	other := testenv.NewCA(t)
	plain := testenv.StartRedis(t)
	cases := []struct {
		name  string
		lines []string
		want  string
	}{
		{"wrong CA", []string{"auth_opt_redis_tls_ca " + other.CertPath, "auth_opt_redis_tls_server_name redis.test"},
			`mosquitto-guard: option redis_tls_ca: bad value "` + other.CertPath + `": expected the PEM file of the CA that signed the certificate of the Redis at ` + e.redis.Addr + ` (tls: failed to verify certificate: x509: certificate signed by unknown authority`},
		{"system CAs", []string{"auth_opt_redis_tls_server_name redis.test"},
			`mosquitto-guard: option redis_tls_ca: bad value "": expected the PEM file of the CA that signed the certificate of the Redis at ` + e.redis.Addr + ` (none given: the system's CAs do not) (`},
		{"address not in the certificate", []string{"auth_opt_redis_tls_ca " + ca.CertPath},
			`mosquitto-guard: option redis_tls_server_name: bad value "": expected a name that the certificate of the Redis at ` + e.redis.Addr + ` holds (none given: the host dialled was checked) (tls: failed to verify certificate: x509: cannot validate certificate for 127.0.0.1 because it doesn't contain any IP SANs)`},
		{"wrong server name", []string{"auth_opt_redis_tls_ca " + ca.CertPath, "auth_opt_redis_tls_server_name redis.example"},
			`mosquitto-guard: option redis_tls_server_name: bad value "redis.example": expected a name that the certificate of the Redis at ` + e.redis.Addr + ` holds (tls: failed to verify certificate: x509: certificate is valid for redis.test, not redis.example)`},
		{"no TLS on that port", []string{"auth_opt_redis_addr " + plain.Addr, "auth_opt_redis_tls_ca " + ca.CertPath},
			`mosquitto-guard: option redis_tls: bad value "on": expected off for the Redis at ` + plain.Addr + `, which speaks no TLS there`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			out := startExpectFail(t, e.conf(append([]string{"auth_opt_redis_tls on"}, c.lines...)...))
			took := time.Since(start)
			t.Logf("stopped in %s: %s", took.Round(time.Millisecond), lastLine(out, "mosquitto-guard: option"))
			assert.Contains(t, out, c.want)
			assert.Equal(t, 1, strings.Count(out, "mosquitto-guard: option"), "one line")
			assert.NotContains(t, out, "mosquitto-guard: ready")
			assert.Less(t, took, 5*time.Second, "the check is bounded (2 s) and the broker stops at once")
		})
	}

	// The other way round: TLS off, a port that speaks only TLS closes the
	// plain-text connection without a word (atk57: the broker started,
	// Redis down for good).
	t.Run("TLS off, a port that speaks only TLS", func(t *testing.T) {
		start := time.Now()
		out := startExpectFail(t, e.conf())
		took := time.Since(start)
		t.Logf("stopped in %s: %s", took.Round(time.Millisecond), lastLine(out, "mosquitto-guard: option"))
		assert.Contains(t, out, `mosquitto-guard: option redis_tls: bad value "off": expected on: the Redis at `+e.redis.Addr+` speaks only TLS there`)
		assert.Equal(t, 1, strings.Count(out, "mosquitto-guard: option"), "one line")
		assert.NotContains(t, out, "mosquitto-guard: ready")
		assert.Less(t, took, 5*time.Second)
	})

	// The name the certificate holds: accepted, and bans apply.
	e.broker = startBroker(t, e.conf("auth_opt_redis_tls on", "auth_opt_redis_tls_ca "+ca.CertPath, "auth_opt_redis_tls_server_name redis.test"))
	e.logLine("replica loaded")
	e.redis.CLI("SET", "guard:block:username:alice", "named")
	e.expect(as("127.0.62.1", "named", "alice", "alice-pw"), refused)
}

// A TLS Redis that is down at start is no configuration error: the broker
// starts (redis_unavailable applies), and once Redis is up, bans apply.
func TestRedisTLSDownAtStartIsNotAConfigError(t *testing.T) {
	ca := testenv.NewCA(t)
	e := tlsRedisEnv(t, &testenv.RedisTLS{CA: ca})
	e.redis.Stop()
	start := time.Now()
	e.broker = startBroker(t, e.conf("auth_opt_redis_tls on", "auth_opt_redis_tls_ca "+ca.CertPath))
	took := time.Since(start)
	t.Logf("ready in %s with Redis down", took.Round(time.Millisecond))
	assert.Less(t, took, 2500*time.Millisecond, "a refused dial ends the TLS check at once; it is bounded to 2 s anyway")
	e.logLine("unreachable", "redis_unavailable allow")
	assert.EqualValues(t, accepted, e.connect(as("127.0.63.1", "down", "alice", "alice-pw")), "credentials still checked")

	e.redis.Restart()
	e.redis.CLI("SET", "guard:block:clientid:down", "after the restart")
	eventually(t, 10*time.Second, func() bool { return e.connect(as("127.0.63.1", "down", "alice", "alice-pw")) == refused },
		"the ban applies once the TLS Redis is up")
	e.logLine("is back")
}
