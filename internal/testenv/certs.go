package testenv

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// CA is a certificate authority made with the openssl command for one test:
// its key and self-signed certificate live in the test's temporary
// directory, so no key material is ever committed. Keys are EC P-256, which
// openssl makes in milliseconds (an RSA key takes far longer).
type CA struct {
	// CertPath is the CA certificate (PEM): a broker's cafile, a client's
	// root.
	CertPath string
	// KeyPath is the CA's private key (PEM).
	KeyPath string
	dir     string
	serial  atomic.Int64
}

// ClientCert is a client certificate signed by a CA.
type ClientCert struct {
	// CertPath and KeyPath are the certificate and its key (PEM).
	CertPath, KeyPath string
	// ID is the certificate ID: keys.CertID of the certificate's DER,
	// computed here in Go from the PEM (TestCertIDMatchesOpenSSL checks it
	// against openssl's SHA-256 fingerprint).
	ID string
	// Subject is the certificate's subject as Go prints it (RFC 2253,
	// e.g. "CN=device-1").
	Subject string
}

// NewCA makes a CA (key and certificate valid for a day) in a temporary
// directory. It skips the test as Need does when openssl is missing.
func NewCA(t testing.TB) *CA {
	t.Helper()
	Need(t, "openssl")
	dir := t.TempDir()
	ca := &CA{
		CertPath: filepath.Join(dir, "ca.crt"),
		KeyPath:  filepath.Join(dir, "ca.key"),
		dir:      dir,
	}
	openssl(t, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
		"-nodes", "-keyout", ca.KeyPath, "-out", ca.CertPath, "-days", "1",
		"-subj", "/CN=mosquitto-guard test CA",
		"-addext", "basicConstraints=critical,CA:TRUE",
		"-addext", "keyUsage=critical,keyCertSign,cRLSign")
	return ca
}

// Server makes a server certificate for 127.0.0.1 (its subjectAltName is
// IP:127.0.0.1, which Go's TLS client checks) and returns the paths of the
// certificate and its key: a broker listener's certfile and keyfile.
func (ca *CA) Server(t testing.TB) (certPath, keyPath string) {
	t.Helper()
	certPath, keyPath = ca.sign(t, "server", "127.0.0.1",
		"subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
	return certPath, keyPath
}

// ServerFor makes a server certificate whose subjectAltName holds names
// (an IP address as IP:, any other name as DNS:), good for client
// authentication too: redis-server presents its tls-cert-file when it
// connects to a master (replication) or a sentinel to the servers, so one
// certificate serves both ends. It returns the certificate's and key's paths.
func (ca *CA) ServerFor(t testing.TB, names ...string) (certPath, keyPath string) {
	t.Helper()
	if len(names) == 0 {
		t.Fatalf("testenv: ServerFor needs a name")
	}
	var alt []string
	for _, n := range names {
		if net.ParseIP(n) != nil {
			alt = append(alt, "IP:"+n)
		} else {
			alt = append(alt, "DNS:"+n)
		}
	}
	return ca.sign(t, "server", names[0],
		"subjectAltName="+strings.Join(alt, ",")+"\nextendedKeyUsage=serverAuth,clientAuth\n")
}

// Client makes a client certificate with the common name cn. Every call
// makes a new key and certificate, so two calls with one cn give two
// certificates with two IDs.
func (ca *CA) Client(t testing.TB, cn string) *ClientCert {
	t.Helper()
	certPath, keyPath := ca.sign(t, "client", cn, "extendedKeyUsage=clientAuth\n")
	pemBytes, err := os.ReadFile(certPath)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	cert, err := parseCertPEM(pemBytes)
	if err != nil {
		t.Fatalf("testenv: %s: %v", certPath, err)
	}
	return &ClientCert{CertPath: certPath, KeyPath: keyPath, ID: keys.CertID(cert.Raw), Subject: cert.Subject.String()}
}

// TLSConfig returns a client's TLS configuration: the CA as its only root
// (the server certificate of Server is checked, for 127.0.0.1), and c's
// certificate and key to present, or none when c is nil.
func (ca *CA) TLSConfig(t testing.TB, c *ClientCert) *tls.Config {
	t.Helper()
	pemBytes, err := os.ReadFile(ca.CertPath)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pemBytes) {
		t.Fatalf("testenv: no certificate in %s", ca.CertPath)
	}
	cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if c != nil {
		pair, err := tls.LoadX509KeyPair(c.CertPath, c.KeyPath)
		if err != nil {
			t.Fatalf("testenv: %v", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg
}

// parseCertPEM returns the first certificate in PEM-encoded b.
func parseCertPEM(b []byte) (*x509.Certificate, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, fmt.Errorf("no CERTIFICATE block")
		}
		if blk.Type == "CERTIFICATE" {
			return x509.ParseCertificate(blk.Bytes)
		}
	}
}

// sign makes a key and a certificate for cn signed by the CA, with the
// extensions ext (an openssl extension file's lines), in a directory of its
// own, and returns their paths.
func (ca *CA) sign(t testing.TB, kind, cn, ext string) (certPath, keyPath string) {
	t.Helper()
	n := ca.serial.Add(1)
	dir := filepath.Join(ca.dir, fmt.Sprintf("%s-%d", kind, n))
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	keyPath = filepath.Join(dir, kind+".key")
	certPath = filepath.Join(dir, kind+".crt")
	csr := filepath.Join(dir, kind+".csr")
	extPath := WriteFile(t, dir, kind+".ext", ext)
	openssl(t, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
		"-nodes", "-keyout", keyPath, "-out", csr, "-subj", "/CN="+cn)
	openssl(t, "x509", "-req", "-in", csr, "-CA", ca.CertPath, "-CAkey", ca.KeyPath,
		"-set_serial", fmt.Sprint(1000+n), "-days", "1", "-sha256", "-extfile", extPath, "-out", certPath)
	return certPath, keyPath
}

// openssl runs the openssl command (10 s at most) and returns its output;
// it fails the test with that output if the command fails.
func openssl(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "openssl", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("testenv: openssl %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ExpiredServer makes a server certificate for names, as ServerFor does,
// that expired an hour ago (openssl x509 cannot date one in the past, so
// it is signed here in Go with the CA's key).
func (ca *CA) ExpiredServer(t testing.TB, names ...string) (certPath, keyPath string) {
	t.Helper()
	caPEM, err := os.ReadFile(ca.CertPath)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	caCert, err := parseCertPEM(caPEM)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	caKeyPEM, err := os.ReadFile(ca.KeyPath)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	blk, _ := pem.Decode(caKeyPEM)
	if blk == nil {
		t.Fatalf("testenv: no PEM in %s", ca.KeyPath)
	}
	caKey, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatalf("testenv: %s: %v", ca.KeyPath, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2000 + ca.serial.Add(1)),
		Subject:      pkix.Name{CommonName: names[0]},
		NotBefore:    time.Now().Add(-48 * time.Hour),
		NotAfter:     time.Now().Add(-time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	dir := t.TempDir()
	certPath = WriteFile(t, dir, "expired.crt", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	keyPath = WriteFile(t, dir, "expired.key", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})))
	return certPath, keyPath
}
