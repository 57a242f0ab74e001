package testenv

import (
	"testing"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// The ID computed in Go from the PEM is what operators get from openssl:
// the SHA-256 fingerprint, without colons, in lower case.
func TestCertIDMatchesOpenSSL(t *testing.T) {
	t.Parallel()
	start := time.Now()
	ca := NewCA(t)
	a := ca.Client(t, "device-1")
	b := ca.Client(t, "device-1")
	t.Logf("a CA and two client certificates in %s", time.Since(start).Round(time.Millisecond))
	for _, c := range []*ClientCert{a, b} {
		out := openssl(t, "x509", "-noout", "-fingerprint", "-sha256", "-in", c.CertPath)
		id, err := keys.ParseCertID(out)
		if err != nil {
			t.Fatalf("openssl's fingerprint %q: %v", out, err)
		}
		if id != c.ID {
			t.Errorf("ID = %s, openssl says %s", c.ID, id)
		}
		if c.Subject != "CN=device-1" {
			t.Errorf("Subject = %q, want CN=device-1", c.Subject)
		}
		// Signed by the CA, for client authentication.
		openssl(t, "verify", "-CAfile", ca.CertPath, "-purpose", "sslclient", c.CertPath)
	}
	if a.ID == b.ID {
		t.Error("two certificates with one common name have one ID")
	}
	srv, _ := ca.Server(t)
	openssl(t, "verify", "-CAfile", ca.CertPath, "-purpose", "sslserver", "-verify_ip", "127.0.0.1", srv)
}
