package e2e

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// DEFECT. redis_tls off against a Redis that speaks only TLS 1.2 and asks
// client certificates (tls-protocols "TLSv1.2", tls-auth-clients yes): the
// broker should stop at start naming redis_tls, as it does for the same
// Redis under TLS 1.3 (TestRedisTLSWrongSettingsStopTheBroker). The start
// check's TLS probe gets the server's handshake_failure alert as a
// *net.OpError "remote error", which store/settings.go speaksTLS does not
// take for an alert (it looks for tls.AlertError, which crypto/tls wraps
// for QUIC only): the broker starts, Redis down for good, no option named.
func TestAtk60TLS12ClientCertRedisTLSOffStopsTheBroker(t *testing.T) {
	testenv.Need(t, "mosquitto", "mosquitto_passwd", "redis-server", "redis-cli", "openssl")
	ca := testenv.NewCA(t)
	e := &env{t: t, dir: t.TempDir()}
	e.redis = testenv.StartRedisTLS(t, &testenv.RedisTLS{CA: ca, AuthClients: true}, "--tls-protocols", "TLSv1.2")
	e.passwd = filepath.Join(e.dir, "passwd")
	for u, p := range users {
		e.addUser(u, p)
	}
	start := time.Now()
	out := testenv.StartMosquittoExpectFail(t, e.conf(), 5*time.Second)
	t.Logf("stopped in %s: %s", time.Since(start).Round(time.Millisecond), lastLine(out, "mosquitto-guard: option"))
	if !strings.Contains(out, `mosquitto-guard: option redis_tls: bad value "off": expected on: the Redis at `+e.redis.Addr+` speaks only TLS there`) {
		t.Errorf("no redis_tls line:\n%s", out)
	}
}
