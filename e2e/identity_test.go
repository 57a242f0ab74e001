package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// newIdentityEnv is a TLS listener with require_certificate and
// use_identity_as_username true: Mosquitto 2.0 calls no BASIC_AUTH there,
// and the client's username is its certificate's CN.
func newIdentityEnv(t *testing.T) *tlsEnv {
	t.Helper()
	ca := testenv.NewCA(t)
	return &tlsEnv{env: newEnv(t, append(tlsListener(t, ca), "use_identity_as_username true")...), ca: ca}
}

// On a use_identity_as_username listener the plugin first sees a client at
// its first ACL check: a banned certificate's CONNECT is accepted (the
// broker asks no plugin), but its first SUBSCRIBE is refused, and it is
// kicked within a second; a certificate banned while connected is kicked
// like anyone's. The window, measured: from the first refused check to the
// kick.
func TestIdentityListenerEnforcesCertificateBans(t *testing.T) {
	e := newIdentityEnv(t)
	banned := e.ca.Client(t, "identity-banned")
	good := e.ca.Client(t, "identity-good")
	e.redis.CLI("SET", certKey("block", banned), "stolen device", "EX", "60")
	time.Sleep(300 * time.Millisecond) // the replica has it well within this (propagation p99 < 100 ms)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dev, code := e.dialCert(client{ip: "127.0.52.1", id: "identity-1"}, banned)
	require.EqualValues(t, accepted, code, "no BASIC_AUTH on this listener: the CONNECT itself cannot be refused")
	start := time.Now()
	assert.Error(t, dev.Subscribe(ctx, "fleet/#", 0), "a banned certificate's SUBSCRIBE is refused")
	assert.True(t, dev.Closed(time.Second), "a banned certificate is kicked within a second of its first ACL check")
	t.Logf("banned certificate: first ACL check refused, kicked %s later", time.Since(start).Round(time.Millisecond))
	line := e.logLine("refused", `client_id="identity-1"`, "seen=first-acl-check")
	assert.Contains(t, line, `cert_id="`+banned.ID+`"`)
	assert.Contains(t, line, `username="identity-banned"`, "the identity the broker took from the certificate")

	ok, code := e.dialCert(client{ip: "127.0.52.2", id: "identity-2"}, good)
	require.EqualValues(t, accepted, code)
	require.NoError(t, ok.Subscribe(ctx, "fleet/#", 0), "another certificate subscribes")
	require.NoError(t, ok.Ping(ctx))
	start = time.Now()
	e.redis.CLI("SET", certKey("block", good), "revoked", "EX", "60")
	assert.True(t, ok.Closed(time.Second), "a certificate banned while connected is kicked within a second")
	t.Logf("connected certificate: kicked %s after the SET", time.Since(start).Round(time.Millisecond))
}

// A banned certificate's PUBLISH on a use_identity_as_username listener
// reaches no subscriber.
func TestIdentityListenerBannedPublishDropped(t *testing.T) {
	e := newIdentityEnv(t)
	banned := e.ca.Client(t, "identity-pub-banned")
	watcher := e.ca.Client(t, "identity-watcher")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	w, code := e.dialCert(client{ip: "127.0.53.1", id: "identity-w"}, watcher)
	require.EqualValues(t, accepted, code)
	require.NoError(t, w.Subscribe(ctx, "fleet/#", 0))

	e.redis.CLI("SET", certKey("block", banned), "stolen device", "EX", "60")
	time.Sleep(300 * time.Millisecond)
	dev, code := e.dialCert(client{ip: "127.0.53.2", id: "identity-p"}, banned)
	require.EqualValues(t, accepted, code)
	require.NoError(t, dev.Publish(ctx, "fleet/x", []byte("forged")))
	short, cancelShort := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancelShort()
	_, payload, err := w.Next(short)
	assert.Error(t, err, "nothing delivered; got %q", payload)
	assert.True(t, dev.Closed(time.Second), "and it is kicked")
}

// A banned certificate taking over another device's client ID on an
// identity listener (the broker asks no plugin at CONNECT) is a finding:
// its connection is recorded even though it is refused and kicked. Found by
// a README-only attacker: no finding was written.
func TestIdentityBannedTakeoverIsAFinding(t *testing.T) {
	e := newIdentityEnv(t)
	victim := e.ca.Client(t, "takeover-victim")
	banned := e.ca.Client(t, "takeover-banned")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	v, code := e.dialCert(client{ip: "127.0.54.1", id: "plant-1"}, victim)
	require.EqualValues(t, accepted, code)
	require.NoError(t, v.Subscribe(ctx, "fleet/#", 0))
	eventually(t, 3*time.Second, func() bool { return e.redis.CLI("HLEN", "guard:seen:plant-1") == "1" }, "the victim not remembered")

	e.redis.CLI("SET", certKey("block", banned), "stolen device", "EX", "60")
	time.Sleep(300 * time.Millisecond)
	b, code := e.dialCert(client{ip: "127.0.54.2", id: "plant-1"}, banned)
	require.EqualValues(t, accepted, code)
	assert.Error(t, b.Subscribe(ctx, "fleet/#", 0))
	assert.True(t, b.Closed(time.Second), "kicked")
	f := e.waitFindings(1)[0]
	assert.Equal(t, "plant-1", f["clientid"])
	assert.Contains(t, f["principals"], "cert:"+victim.ID)
	assert.Contains(t, f["principals"], "cert:"+banned.ID)
}
