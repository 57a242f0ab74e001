package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// selfSigned makes a self-signed certificate for cn, at test time (no key
// material is committed), and returns its DER.
func selfSigned(t *testing.T, cn string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	return der
}

// fingerprint is what `openssl x509 -noout -fingerprint -sha256` prints.
func fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	pairs := make([]string, len(sum))
	for i, b := range sum {
		pairs[i] = fmt.Sprintf("%02X", b)
	}
	return "sha256 Fingerprint=" + strings.Join(pairs, ":")
}

func certID(der []byte) string {
	sum := sha256.Sum256(der)
	return fmt.Sprintf("%x", sum)
}

// writePEM writes blocks to a file and returns its path.
func writePEM(t *testing.T, name string, blocks ...*pem.Block) string {
	t.Helper()
	var b bytes.Buffer
	for _, bl := range blocks {
		require.NoError(t, pem.Encode(&b, bl))
	}
	path := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(path, b.Bytes(), 0o600))
	return path
}

// guardctl ban cert takes a certificate's ID in the forms openssl prints it,
// or a PEM file whose ID it computes; unban, allow and list follow.
func TestEditCert(t *testing.T) {
	t.Setenv(passwordEnv, "")
	t.Setenv("USER", "tester")
	r := testenv.StartRedis(t)
	c := client(t, r.Addr)
	ctx := context.Background()
	dev, gw := selfSigned(t, "dev-17"), selfSigned(t, "gateway")
	devID, gwID := certID(dev), certID(gw)

	// By ID: openssl's fingerprint line, colons and upper case taken.
	ps := subscribe(t, c, "p:changes")
	code, out, errOut := ctl(t, r.Addr, "p:", "ban", "cert", fingerprint(dev), "--for", "1h", "--reason", "stolen")
	require.Equal(t, exitOK, code, errOut)
	key := "p:block:cert:" + devID
	assert.Equal(t, fmt.Sprintf("guardctl: cert %q written as %s\n", fingerprint(dev), devID), errOut)
	assert.True(t, strings.HasPrefix(out, "banned "+key+" until "), out)
	assert.Equal(t, []string{key}, allKeys(t, c))
	assert.Equal(t, "stolen", c.Get(ctx, key).Val())
	assert.InDelta(t, time.Hour.Milliseconds(), c.PTTL(ctx, key).Val().Milliseconds(), 1000)
	assert.Equal(t, key, nextMessage(t, ps))
	noMessage(t, ps)

	// By PEM file: its one CERTIFICATE block, past a key block.
	path := writePEM(t, "dev-17.pem", &pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte("not a key")},
		&pem.Block{Type: "CERTIFICATE", Bytes: dev})
	code, out, errOut = ctl(t, r.Addr, "p:", "unban", "cert", path)
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "unbanned "+key+"\n", out)
	assert.Equal(t, fmt.Sprintf("guardctl: cert %q written as %s\n", path, devID), errOut)
	assert.Empty(t, allKeys(t, c))
	code, out, errOut = ctl(t, r.Addr, "p:", "ban", "cert", path)
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "banned "+key+" for ever\n", out)
	assert.Equal(t, "operator: banned with guardctl by tester", c.Get(ctx, key).Val())

	gwPath := writePEM(t, "gw.pem", &pem.Block{Type: "CERTIFICATE", Bytes: gw})
	code, _, errOut = ctl(t, r.Addr, "p:", "allow", "cert", gwPath, "--reason", "plant gateway")
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "plant gateway", c.Get(ctx, "p:allow:cert:"+gwID).Val())

	// list shows the ID whole (to copy into unban), and names on stderr a
	// cert key the plugin can never match.
	require.NoError(t, c.Set(ctx, "p:block:cert:"+strings.ToUpper(gwID), "typed by hand", 0).Err())
	code, out, errOut = ctl(t, r.Addr, "p:", "list", "--scope", "cert")
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "cert   "+devID+"  operator")
	assert.Equal(t, "guardctl: p:block:cert:"+strings.ToUpper(gwID)+" can never match: expected 64 lower-case hex digits (the SHA-256 of the certificate's DER)\n", errOut)
	code, out, errOut = ctl(t, r.Addr, "p:", "list", "--allow", "--json")
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, `"key": "p:allow:cert:`+gwID+`",`)
	assert.Contains(t, out, `"value": "`+gwID+`",`)
	code, _, errOut = ctl(t, r.Addr, "p:", "unallow", "cert", strings.ToUpper(gwID))
	require.Equal(t, exitOK, code, errOut)
	assert.Zero(t, c.Exists(ctx, "p:allow:cert:"+gwID).Val())
}

// A value that is neither a certificate ID nor a PEM certificate file is a
// usage error naming the form expected; nothing is written.
func TestEditCertRefused(t *testing.T) {
	t.Setenv(passwordEnv, "")
	r := testenv.StartRedis(t)
	c := client(t, r.Addr)
	id := certID([]byte("x"))
	keyOnly := writePEM(t, "key.pem", &pem.Block{Type: "PRIVATE KEY", Bytes: []byte("k")})
	// A chain or bundle: which is the device's? Refused, naming them (the
	// CA's ID would match no client). A block X.509 cannot parse: refused.
	dev, gw := selfSigned(t, "dev-17"), selfSigned(t, "gateway")
	bundle := writePEM(t, "bundle.pem", &pem.Block{Type: "CERTIFICATE", Bytes: gw}, &pem.Block{Type: "CERTIFICATE", Bytes: dev})
	junk := writePEM(t, "junk.pem", &pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER")})
	notPEM := filepath.Join(t.TempDir(), "cert.der")
	require.NoError(t, os.WriteFile(notPEM, []byte("DER bytes"), 0o600))
	const want = "expected a certificate ID (64 hex digits, the SHA-256 of the certificate's DER, colons allowed) or the path of a PEM certificate file"
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"ban", "cert", id[:63]}, `bad cert "` + id[:63] + `": ` + want},
		{[]string{"ban", "cert", id + "00"}, `bad cert "` + id + `00": ` + want},
		{[]string{"allow", "cert", "g" + id[1:]}, `bad cert "g` + id[1:] + `": ` + want},
		{[]string{"ban", "cert", "missing.pem"}, `bad cert "missing.pem": ` + want},
		{[]string{"unban", "cert", keyOnly}, fmt.Sprintf("cert file %q: no PEM CERTIFICATE block; expected a PEM certificate (-----BEGIN CERTIFICATE-----)", keyOnly)},
		{[]string{"ban", "cert", notPEM}, fmt.Sprintf("cert file %q: no PEM CERTIFICATE block", notPEM)},
		{[]string{"ban", "cert", bundle}, fmt.Sprintf(`cert file %q: 2 certificates ("CN=gateway", "CN=dev-17"); expected a file holding the device's certificate alone, or its ID`, bundle)},
		{[]string{"ban", "cert", junk}, fmt.Sprintf("cert file %q: a CERTIFICATE block X.509 cannot parse", junk)},
		{[]string{"ban", "cert", ""}, "empty VALUE: " + want},
	} {
		code, out, errOut := ctl(t, r.Addr, "e:", tc.args...)
		assert.Equal(t, exitUsage, code, "%q", tc.args)
		assert.Empty(t, out, "%q", tc.args)
		assert.Contains(t, errOut, "guardctl: "+tc.args[0]+": ", "%q", tc.args)
		assert.Contains(t, errOut, tc.msg, "%q", tc.args)
	}
	assert.Empty(t, allKeys(t, c), "nothing written")
}

func TestCertUsage(t *testing.T) {
	for _, e := range []edit{banEdit, unbanEdit, allowEdit, unallowEdit} {
		var out, errb bytes.Buffer
		require.Equal(t, exitOK, run([]string{e.name, "-h"}, &out, &errb), e.name)
		assert.Contains(t, out.String(), "cert ID|FILE", e.name)
	}
	var out, errb bytes.Buffer
	require.Equal(t, exitOK, run([]string{"ban", "-h"}, &out, &errb))
	assert.Contains(t, out.String(), "guardctl ban cert /etc/fleet/dev-17.pem")
	out.Reset()
	require.Equal(t, exitOK, run([]string{"list", "-h"}, &out, &errb))
	assert.Contains(t, out.String(), "username or cert")
}
