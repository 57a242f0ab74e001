package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// The broker checks a dropped client's will after its DISCONNECT, then
// frees it without another event. That check must not enter the seen set
// (a banned certificate at the same freed pointer would pass unchecked),
// nor record a phantom connection. Five rounds: a good certificate drops
// with a will, then a banned one connects and subscribes.
func TestIdentityWillLeavesNoPointerSeen(t *testing.T) {
	e := newIdentityEnv(t)
	good := e.ca.Client(t, "will-good")
	banned := e.ca.Client(t, "will-banned")
	e.redis.CLI("SET", certKey("block", banned), "stolen", "EX", "60")
	time.Sleep(300 * time.Millisecond)
	for i := 0; i < 5; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: e.broker.Addr, SourceIP: "127.0.60.1", ClientID: "will-dev",
			TLS: e.ca.TLSConfig(t, good), Will: &mqttc.Will{Topic: "will/dev", Payload: []byte("gone")}})
		require.NoError(t, err)
		require.EqualValues(t, accepted, code)
		require.NoError(t, conn.Subscribe(ctx, "a/b", 0))
		conn.Close() // a network drop: the broker sends the will
		time.Sleep(200 * time.Millisecond)
		dev, code := e.dialCert(client{ip: "127.0.60.2", id: "will-banned"}, banned)
		require.EqualValues(t, accepted, code)
		assert.Error(t, dev.Subscribe(ctx, "fleet/#", 0), "round %d: a banned certificate subscribed", i)
		assert.True(t, dev.Closed(1500*time.Millisecond), "round %d: a banned certificate was not kicked", i)
		dev.Close()
		cancel()
	}
	assert.Empty(t, e.findings(), "one device reconnecting after drops is no conflict")
}

// A banned certificate that drops before any ACL check gets no will
// delivered: it is checked at its DISCONNECT, while its certificate is
// still readable. (Its takeover of a client ID at CONNECT cannot be
// stopped: the broker asks no plugin there.)
func TestIdentityBannedWillRefused(t *testing.T) {
	e := newIdentityEnv(t)
	watcher := e.ca.Client(t, "will-watch")
	banned := e.ca.Client(t, "will-banned-2")
	e.redis.CLI("SET", certKey("block", banned), "stolen", "EX", "60")
	time.Sleep(300 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	w, code := e.dialCert(client{ip: "127.0.61.1", id: "will-w"}, watcher)
	require.EqualValues(t, accepted, code)
	require.NoError(t, w.Subscribe(ctx, "fleet/#", 0))

	conn, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: e.broker.Addr, SourceIP: "127.0.61.3", ClientID: "will-forger",
		TLS: e.ca.TLSConfig(t, banned), Will: &mqttc.Will{Topic: "fleet/cmd", Payload: []byte("forged-by-banned")}})
	require.NoError(t, err)
	require.EqualValues(t, accepted, code)
	conn.Close()
	short, cancelShort := context.WithTimeout(context.Background(), time.Second)
	defer cancelShort()
	topic, payload, err := w.Next(short)
	assert.Error(t, err, "a banned certificate's will was delivered: %s %q", topic, payload)
	e.logLine("refused", `client_id="will-forger"`, "seen=disconnect")
}

// Under clientid_conflict deny, a device that dropped with a will
// reconnects with the same certificate and client ID: no phantom of its
// will check holds the ID against it.
func TestIdentityWillNoPhantomUnderDeny(t *testing.T) {
	ca := testenv.NewCA(t)
	e := &tlsEnv{env: newEnv(t, append(tlsListener(t, ca), "use_identity_as_username true", "auth_opt_clientid_conflict deny")...), ca: ca}
	dev := e.ca.Client(t, "will-deny-dev")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	conn, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: e.broker.Addr, SourceIP: "127.0.62.1", ClientID: "will-deny",
		TLS: e.ca.TLSConfig(t, dev), Will: &mqttc.Will{Topic: "will/deny", Payload: []byte("gone")}})
	require.NoError(t, err)
	require.EqualValues(t, accepted, code)
	require.NoError(t, conn.Subscribe(ctx, "a/b", 0))
	conn.Close()
	time.Sleep(time.Second)
	again, code := e.dialCert(client{ip: "127.0.62.1", id: "will-deny"}, dev)
	require.EqualValues(t, accepted, code)
	assert.NoError(t, again.Subscribe(ctx, "a/b", 0), "the same device reconnecting is refused")
	assert.False(t, again.Closed(time.Second), "the same device reconnecting is kicked")
}
