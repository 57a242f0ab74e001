package mqttc_test

import (
	"strings"
	"testing"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// startTLSBroker starts mosquitto with one TLS listener that requires a
// client certificate signed by ca.
func startTLSBroker(t *testing.T, ca *testenv.CA) *testenv.Mosquitto {
	t.Helper()
	cert, key := ca.Server(t)
	return testenv.StartMosquitto(t, strings.Join([]string{
		"listener " + testenv.PortPlaceholder + " 127.0.0.1",
		"cafile " + ca.CertPath,
		"certfile " + cert,
		"keyfile " + key,
		"require_certificate true",
		"allow_anonymous true",
	}, "\n"))
}

func TestTLS(t *testing.T) {
	t.Parallel()
	ca := testenv.NewCA(t)
	m := startTLSBroker(t, ca)
	dev := ca.Client(t, "device-1")
	for _, v := range []int{4, 5} {
		id := map[int]string{4: "tls-v311", 5: "tls-v5"}[v]
		// Over TLS, from a chosen source address, as without TLS.
		c := dial(t, mqttc.Options{Addr: m.Addr, SourceIP: "127.0.0.24", ClientID: id, Version: v,
			TLS: ca.TLSConfig(t, dev)})
		if got := c.LocalAddr().String(); !strings.HasPrefix(got, "127.0.0.24:") {
			t.Errorf("LocalAddr = %s", got)
		}
		if err := c.Subscribe(ctx(t), "t/"+id, 0); err != nil {
			t.Fatal(err)
		}
		if err := c.Publish(ctx(t), "t/"+id, []byte("over tls")); err != nil {
			t.Fatal(err)
		}
		if topic, payload, err := c.Next(ctx(t)); err != nil || string(payload) != "over tls" {
			t.Fatalf("v%d Next = %q %q %v", v, topic, payload, err)
		}
		// A read cut short by its deadline leaves the TLS stream usable.
		if c.Closed(50 * time.Millisecond) {
			t.Fatalf("v%d: Closed before the takeover", v)
		}
		if err := c.Ping(ctx(t)); err != nil {
			t.Fatalf("v%d Ping after a timed-out read: %v", v, err)
		}
		// The broker closing a TLS connection is seen by Closed.
		dial(t, mqttc.Options{Addr: m.Addr, ClientID: id, Version: v, TLS: ca.TLSConfig(t, dev)})
		if !c.Closed(5 * time.Second) {
			t.Fatalf("v%d: Closed: false after a client id takeover", v)
		}
	}
	if !m.WaitOutput("New client connected from 127.0.0.24:", 5*time.Second) {
		t.Error("mosquitto did not log the connection from 127.0.0.24")
	}
}

// Without a certificate, or with one the broker's CA did not sign, there is
// no CONNACK: an error, never a refusal code.
func TestTLSCertificateRequired(t *testing.T) {
	t.Parallel()
	ca := testenv.NewCA(t)
	m := startTLSBroker(t, ca)
	stranger := testenv.NewCA(t).Client(t, "stranger")
	for name, o := range map[string]mqttc.Options{
		"no certificate": {Addr: m.Addr, ClientID: "anon", TLS: ca.TLSConfig(t, nil)},
		"another CA":     {Addr: m.Addr, ClientID: "stranger", TLS: ca.TLSConfig(t, stranger)},
		"plain MQTT":     {Addr: m.Addr, ClientID: "plain"},
	} {
		c, code, err := mqttc.Dial(ctx(t), o)
		if c != nil || err == nil {
			t.Errorf("%s: conn %v, code %d, err %v; want an error", name, c, code, err)
		}
		t.Logf("%s: %v", name, err)
	}
	// The client checks the server too: a CA that did not sign it is refused.
	other := testenv.NewCA(t)
	_, _, err := mqttc.Dial(ctx(t), mqttc.Options{Addr: m.Addr, ClientID: "wary", TLS: other.TLSConfig(t, nil)})
	if err == nil || !strings.Contains(err.Error(), "tls handshake") {
		t.Errorf("a server certificate from another CA: %v; want a handshake error", err)
	}
}
