package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// tlsEnv is an env whose listener at broker.Addr is TLS with
// require_certificate true: every client there presents a certificate
// signed by ca, and still sends a username and password, so Mosquitto calls
// the plugin's BASIC_AUTH.
type tlsEnv struct {
	*env
	ca *testenv.CA
}

// newTLSEnv makes a CA and a server certificate for 127.0.0.1, then starts
// Redis and the broker with the plugin, as newEnv does, on a TLS listener.
func newTLSEnv(t *testing.T, extra ...string) *tlsEnv {
	t.Helper()
	ca := testenv.NewCA(t)
	return &tlsEnv{env: newEnv(t, append(tlsListener(t, ca), extra...)...), ca: ca}
}

// tlsListener returns the lines of a TLS listener with require_certificate
// true, a server certificate for 127.0.0.1 and ca for its clients.
func tlsListener(t *testing.T, ca *testenv.CA) []string {
	t.Helper()
	cert, key := ca.Server(t)
	return []string{
		"listener " + testenv.PortPlaceholder + " 127.0.0.1",
		"cafile " + ca.CertPath,
		"certfile " + cert,
		"keyfile " + key,
		"require_certificate true",
	}
}

// dialCert connects c over TLS presenting cert, and returns the connection
// (nil when refused) and the CONNACK code.
func (e *tlsEnv) dialCert(c client, cert *testenv.ClientCert) (*mqttc.Conn, byte) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, code, err := mqttc.Dial(ctx, mqttc.Options{
		Addr: e.broker.Addr, SourceIP: c.ip, ClientID: c.id, Username: c.user, Password: c.pass,
		TLS: e.ca.TLSConfig(e.t, cert),
	})
	require.NoError(e.t, err, "dial %s as %q with certificate %s", c.ip, c.id, cert.Subject)
	if conn != nil {
		e.t.Cleanup(func() { conn.Close() })
	}
	return conn, code
}

// connectCert connects c with cert and returns the CONNACK code, closing any
// connection.
func (e *tlsEnv) connectCert(c client, cert *testenv.ClientCert) byte {
	e.t.Helper()
	conn, code := e.dialCert(c, cert)
	if conn != nil {
		conn.Disconnect()
	}
	return code
}

// expectCert connects c with cert until the CONNACK code is want, for up to
// 2 s: a change made in Redis reaches the plugin's replica within a second.
func (e *tlsEnv) expectCert(c client, cert *testenv.ClientCert, want byte, msgAndArgs ...any) {
	e.t.Helper()
	var got byte
	deadline := time.Now().Add(2 * time.Second)
	for {
		if got = e.connectCert(c, cert); got == want || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	require.Equal(e.t, want, got, msgAndArgs...)
}

// certKey returns the Redis key of kind ("block" or "allow") for cert.
func certKey(kind string, cert *testenv.ClientCert) string {
	return "guard:" + kind + ":cert:" + cert.ID
}

// A ban by certificate ID refuses that certificate whatever else the client
// sends, names the certificate in the refusal line, and leaves the others
// alone: same client ID, username, password and address.
func TestCertBanRefusesThatCertificate(t *testing.T) {
	testenv.Need(t, "mosquitto_pub")
	e := newTLSEnv(t)
	stolen := e.ca.Client(t, "device-stolen")
	other := e.ca.Client(t, "device-other")
	dev := as("127.0.50.1", "cert-dev-1", "alice", "alice-pw")
	require.EqualValues(t, accepted, e.connectCert(dev, stolen), "not banned yet")

	e.redis.CLI("SET", certKey("block", stolen), "stolen device")
	e.expectCert(dev, stolen, refused, "the banned certificate")
	line := e.logLine("event=refused", `cert_id="`+stolen.ID+`"`, `rule="`+certKey("block", stolen)+`"`)
	assert.Contains(t, line, `client_id="cert-dev-1"`)
	assert.Contains(t, line, "origin=operator")
	assert.Contains(t, line, `reason="stolen device"`)
	assert.Contains(t, line, " cert_subject="+strconv.Quote(stolen.Subject)+" ", "the subject, quoted")
	t.Logf("refusal line: %s", line)

	assert.EqualValues(t, accepted, e.connectCert(dev, other), "another certificate, all else equal")
	assert.EqualValues(t, refused, e.connectCert(as("127.0.50.2", "cert-dev-2", "bob", "bob-pw"), stolen),
		"the banned certificate with another client ID, user and address")

	// What the README tells an operator to try, with mosquitto_pub.
	pub := func(cert *testenv.ClientCert) (string, error) {
		out, err := exec.Command("mosquitto_pub", "-h", "127.0.0.1", "-p", fmt.Sprint(e.broker.Port),
			"--cafile", e.ca.CertPath, "--cert", cert.CertPath, "--key", cert.KeyPath,
			"-u", "alice", "-P", "alice-pw", "-i", "cert-dev-pub", "-t", "t/cert", "-m", "hello").CombinedOutput()
		return string(out), err
	}
	out, err := pub(stolen)
	assert.Error(t, err, "mosquitto_pub with the banned certificate: %s", out)
	assert.Contains(t, out, "not authorised")
	t.Logf("mosquitto_pub with the banned certificate: %s", strings.TrimSpace(out))
	out, err = pub(other)
	assert.NoError(t, err, "mosquitto_pub with another certificate: %s", out)

	e.redis.CLI("DEL", certKey("block", stolen))
	e.expectCert(dev, stolen, accepted, "the DEL reached the replica")
}

// A certificate ban kicks the connected clients holding it, within a
// second, and no one else.
func TestCertBanKicksHolder(t *testing.T) {
	e := newTLSEnv(t)
	revoked := e.ca.Client(t, "device-revoked")
	kept := e.ca.Client(t, "device-kept")
	victim, code := e.dialCert(as("127.0.51.1", "cert-kick-1", "alice", "alice-pw"), revoked)
	require.EqualValues(t, accepted, code)
	// Same user, same address, another certificate.
	bystander, code := e.dialCert(as("127.0.51.1", "cert-kick-2", "alice", "alice-pw"), kept)
	require.EqualValues(t, accepted, code)

	start := time.Now()
	e.redis.CLI("SET", certKey("block", revoked), "revoked", "EX", "60")
	assert.True(t, victim.Closed(time.Second), "the holder was not kicked within a second")
	t.Logf("kicked %s after the SET", time.Since(start).Round(time.Millisecond))
	line := e.logLine("event=kicked", `client_id="cert-kick-1"`, `rule="`+certKey("block", revoked)+`"`, "origin=operator")
	assert.Contains(t, line, `cert_id="`+revoked.ID+`"`)
	assert.Contains(t, line, " cert_subject="+strconv.Quote(revoked.Subject))

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	assert.NoError(t, bystander.Ping(ctx), "another certificate stays connected")
	e.expectCert(as("127.0.51.1", "cert-kick-1", "alice", "alice-pw"), revoked, refused, "and cannot come back")
}

// An allow entry on a certificate is proof, like one on an address: it lifts
// an IP ban for that certificate only.
func TestCertAllowBeatsIPBan(t *testing.T) {
	e := newTLSEnv(t)
	trusted := e.ca.Client(t, "device-trusted")
	stranger := e.ca.Client(t, "device-stranger")
	dev := as("127.0.52.1", "cert-allow-1", "alice", "alice-pw")

	e.redis.CLI("SET", "guard:block:ip:127.0.52.1", "noisy NAT")
	e.expectCert(dev, trusted, refused, "the IP ban applies")
	e.redis.CLI("SET", certKey("allow", trusted), "")
	e.expectCert(dev, trusted, accepted, "the allow entry on the certificate beats the IP ban")
	assert.EqualValues(t, refused, e.connectCert(dev, stranger), "another certificate from the banned address")

	// The allow entry lifts the ban, not the password check.
	assert.EqualValues(t, refused, e.connectCert(as("127.0.52.1", "cert-allow-1", "alice", "wrong"), trusted),
		"an allowed certificate with a wrong password")
}

// Two certificates with one client ID are two principals, whatever username
// they send: the seed's finding, with the principals "cert:<id>".
func TestCertConflictCrossPrincipal(t *testing.T) {
	e := newTLSEnv(t)
	a := e.ca.Client(t, "device-a")
	b := e.ca.Client(t, "device-b")
	require.EqualValues(t, accepted, e.connectCert(as("127.0.53.1", "cert-shared-1", "alice", "alice-pw"), a))
	e.waitLive("cert-shared-1", 0)
	eventually(t, 3*time.Second, func() bool { return e.redis.CLI("HLEN", "guard:seen:cert-shared-1") == "1" },
		"the first certificate not remembered")
	require.EqualValues(t, accepted, e.connectCert(as("127.0.53.2", "cert-shared-1", "alice", "alice-pw"), b),
		"flag mode only records")

	f := e.waitFindings(1)[0]
	assert.Equal(t, "DUPLICATE_CLIENT_ID_ACROSS_CONNECTIONS", f["reason"])
	assert.Equal(t, "cross-principal", f["kind"])
	assert.Equal(t, "cert-shared-1", f["clientid"])
	var principals []string
	require.NoError(t, json.Unmarshal([]byte(f["principals"]), &principals), "principals %q", f["principals"])
	assert.ElementsMatch(t, []string{"cert:" + a.ID, "cert:" + b.ID}, principals,
		"the two certificates, not the one username they share")
	e.logLine("event=finding reason=DUPLICATE_CLIENT_ID_ACROSS_CONNECTIONS", "kind=cross-principal", `client_id="cert-shared-1"`,
		`\"cert:`+a.ID+`\"`, `\"cert:`+b.ID+`\"`, "principal_kinds=cert,cert")

	// The same certificate reconnecting is a normal reconnect.
	require.EqualValues(t, accepted, e.connectCert(as("127.0.53.3", "cert-own-1", "alice", "alice-pw"), a))
	require.EqualValues(t, accepted, e.connectCert(as("127.0.53.4", "cert-own-1", "bob", "bob-pw"), a))
	time.Sleep(300 * time.Millisecond)
	assert.Len(t, e.findings(), 1, "one certificate under two usernames is one principal")
}

// guardctl bans a certificate given as a PEM file, by the ID it computes,
// and unbans it by that ID.
func TestCertGuardctlBanByPEM(t *testing.T) {
	bin := buildGuardctl(t)
	e := newTLSEnv(t)
	lost := e.ca.Client(t, "device-lost")
	other := e.ca.Client(t, "device-found")
	dev := as("127.0.54.1", "cert-ctl-1", "alice", "alice-pw")
	require.EqualValues(t, accepted, e.connectCert(dev, lost))

	out, err := exec.Command(bin, "ban", "cert", lost.CertPath, "--reason", "lost in transit",
		"--config", e.broker.ConfPath).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), lost.ID, "guardctl names the ID it banned")
	assert.Equal(t, "lost in transit", e.redis.CLI("GET", certKey("block", lost)))
	e.expectCert(dev, lost, refused, "the certificate guardctl banned")
	e.logLine("refused", `cert_id="`+lost.ID+`"`, `reason="lost in transit"`)
	assert.EqualValues(t, accepted, e.connectCert(dev, other))
	out, err = exec.Command(bin, "list", "--scope", "cert", "--config", e.broker.ConfPath).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), lost.ID, "list shows the certificate ID whole")
	assert.NotContains(t, string(out), other.ID)

	out, err = exec.Command(bin, "unban", "cert", strings.ToUpper(lost.ID), "--config", e.broker.ConfPath).CombinedOutput()
	require.NoError(t, err, "%s", out)
	e.expectCert(dev, lost, accepted, "unbanned by its ID (upper case, as some tools print it)")
}

// A certificate's subject is the client's to choose, like its client ID: a
// subject with quotes and a line break stays inside its quoted field, on
// the one line of the kick or the refusal, and forges no field or line.
func TestCertHostileSubject(t *testing.T) {
	e := newTLSEnv(t)
	hostile := e.ca.Client(t, "x\" rule=\"none\" origin=auto\nmosquitto-guard: ready")
	require.Contains(t, hostile.Subject, "\n", "openssl kept the line break")
	dev := as("127.0.55.1", "cert-hostile-1", "alice", "alice-pw")
	conn, code := e.dialCert(dev, hostile)
	require.EqualValues(t, accepted, code)

	e.redis.CLI("SET", certKey("block", hostile), "hostile subject")
	assert.True(t, conn.Closed(time.Second), "not kicked within a second")
	field := " cert_subject=" + strconv.Quote(hostile.Subject)
	t.Logf("kick line: %s", e.logLine("event=kicked", ` rule="`+certKey("block", hostile)+`" origin=operator `, `cert_id="`+hostile.ID+`"`, field))
	e.expectCert(dev, hostile, refused)
	e.logLine("refused", `cert_id="`+hostile.ID+`"`, field)
	for _, l := range strings.Split(e.broker.Output(), "\n") {
		assert.False(t, strings.HasPrefix(l, "mosquitto-guard: ready") || strings.HasPrefix(l, `" rule=`),
			"a line forged by the subject: %q", l)
	}
}

// A certificate ban reaches every broker sharing the Redis: holders kicked
// on both, the certificate refused on both, and the unban too.
func TestCertBanPropagatesToEveryBroker(t *testing.T) {
	a := newTLSEnv(t, "auth_opt_broker_name broker-a")
	b := &tlsEnv{env: &env{t: t, dir: a.dir, redis: a.redis, passwd: a.passwd}, ca: a.ca}
	b.broker = startBroker(t, b.conf(append(tlsListener(t, a.ca), "auth_opt_broker_name broker-b")...))
	fleet := a.ca.Client(t, "fleet-cert")
	connA, code := a.dialCert(as("127.0.56.1", "cert-fleet-1", "alice", "alice-pw"), fleet)
	require.EqualValues(t, accepted, code)
	connB, code := b.dialCert(as("127.0.56.2", "cert-fleet-2", "bob", "bob-pw"), fleet)
	require.EqualValues(t, accepted, code)

	a.redis.CLI("SET", certKey("block", fleet), "fleet key leaked")
	assert.True(t, connA.Closed(time.Second), "not kicked from broker a within a second")
	assert.True(t, connB.Closed(time.Second), "not kicked from broker b within a second")
	b.expectCert(as("127.0.56.3", "cert-fleet-3", "alice", "alice-pw"), fleet, refused)
	a.redis.CLI("DEL", certKey("block", fleet))
	a.expectCert(as("127.0.56.3", "cert-fleet-3", "alice", "alice-pw"), fleet, accepted)
	b.expectCert(as("127.0.56.3", "cert-fleet-3", "alice", "alice-pw"), fleet, accepted)
}

// A username cannot pose as a certificate: a client on a plain listener
// whose username is "cert:<id>" is the principal "username:cert:<id>", and
// the certificate's holder taking its client ID over is a cross-principal
// finding between the two.
func TestCertPrincipalNotForgedByUsername(t *testing.T) {
	plain := testenv.FreePort(t)
	e := newTLSEnv(t, "auth_opt_backend redis", fmt.Sprintf("listener %d 127.0.0.1", plain))
	device := e.ca.Client(t, "device-real")
	hash := strings.SplitN(strings.TrimSpace(readFileLine(t, e.passwd, "alice:")), ":", 2)[1]
	poser := "cert:" + device.ID
	e.redis.CLI("SET", "guard:user:alice", hash)
	e.redis.CLI("SET", "guard:user:"+poser, hash)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var conn *mqttc.Conn
	var code byte
	eventually(t, 2*time.Second, func() bool {
		var err error
		conn, code, err = mqttc.Dial(ctx, mqttc.Options{Addr: fmt.Sprintf("127.0.0.1:%d", plain), SourceIP: "127.0.57.1",
			ClientID: "cert-pose-1", Username: str(poser), Password: str("alice-pw")})
		require.NoError(t, err)
		return code == accepted
	}, "the user %q not accepted on the plain listener", poser)
	conn.Disconnect()
	e.waitLive("cert-pose-1", 0)
	eventually(t, 3*time.Second, func() bool { return e.redis.CLI("HLEN", "guard:seen:cert-pose-1") == "1" }, "the poser not remembered")
	require.EqualValues(t, accepted, e.connectCert(as("127.0.57.2", "cert-pose-1", "alice", "alice-pw"), device))

	f := e.waitFindings(1)[0]
	assert.Equal(t, "cross-principal", f["kind"])
	var principals []string
	require.NoError(t, json.Unmarshal([]byte(f["principals"]), &principals), "principals %q", f["principals"])
	assert.ElementsMatch(t, []string{"username:" + poser, poser}, principals)
	line := e.logLine("event=finding reason=DUPLICATE_CLIENT_ID_ACROSS_CONNECTIONS", `client_id="cert-pose-1"`)
	assert.True(t, strings.Contains(line, "principal_kinds=cert,username") || strings.Contains(line, "principal_kinds=username,cert"), line)
}

// A reload makes Mosquitto authenticate every connected client again; the
// plugin reads each one's certificate there too. Under per_listener_settings
// true (no TICK on Mosquitto 2.0.11-2.0.14) a certificate ban's kick waits
// for a safe point, and the reload's re-check refuses the holder, naming
// the certificate; a holder whose certificate is allowed stays, though its
// address is banned.
func TestCertReloadRecheck(t *testing.T) {
	testenv.Need(t, "mosquitto", "mosquitto_passwd", "redis-server", "redis-cli")
	ca := testenv.NewCA(t)
	e := &tlsEnv{env: &env{t: t, dir: t.TempDir()}, ca: ca}
	e.passwd = e.dir + "/passwd"
	e.addUser("alice", "alice-pw")
	e.redis = startRedis(t)
	conf := "per_listener_settings true\n" + strings.Join(tlsListener(t, ca), "\n") + "\n" + e.conf()
	e.broker = startBroker(t, conf)

	banned, allowed := ca.Client(t, "device-banned"), ca.Client(t, "device-allowed")
	e.redis.CLI("SET", "guard:block:ip:127.0.59.2", "noisy NAT")
	e.redis.CLI("SET", certKey("allow", allowed), "")
	e.expectCert(as("127.0.59.2", "cert-reload-2", "alice", "alice-pw"), allowed, accepted)
	kept, code := e.dialCert(as("127.0.59.2", "cert-reload-2", "alice", "alice-pw"), allowed)
	require.EqualValues(t, accepted, code)
	victim, code := e.dialCert(as("127.0.59.1", "cert-reload-1", "alice", "alice-pw"), banned)
	require.EqualValues(t, accepted, code)

	e.redis.CLI("SET", certKey("block", banned), "revoked")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	eventually(t, 5*time.Second, func() bool {
		require.NoError(t, victim.Publish(ctx, "t", []byte("x")))
		return hasLine(e.broker.Output(), "event=kicked", `client_id="cert-reload-1"`)
	}, "the ban did not flag the connection")
	require.False(t, victim.Closed(200*time.Millisecond), "no TICK, no CONNECT: the kick must still be pending")

	e.broker.Reload()
	require.True(t, e.broker.WaitOutput("Reloading config.", 5*time.Second))
	assert.True(t, victim.Closed(2*time.Second), "the banned certificate is disconnected by the re-authentication")
	e.logLine("refused", `client_id="cert-reload-1"`, `cert_id="`+banned.ID+`"`, `rule="`+certKey("block", banned)+`"`)
	assert.False(t, kept.Closed(300*time.Millisecond), "the allowed certificate stays through the re-check")
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Second)
	defer cancel2()
	assert.NoError(t, kept.Ping(ctx2))
}
