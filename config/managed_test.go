package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// pemFiles are a CA and a client certificate with its key, made in Go (no
// process: these tests run under -short), and a second key that matches
// nothing.
type pemFiles struct {
	ca, cert, key, otherKey string
	keyPEM                  string // the key file's content, which no error may show
}

func makePEMFiles(t *testing.T) pemFiles {
	t.Helper()
	dir := t.TempDir()
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		return k
	}
	caKey := newKey()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	caCert, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)
	clientKey := newKey()
	clientDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "guard"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, caCert, &clientKey.PublicKey, caKey)
	require.NoError(t, err)
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
		return p
	}
	keyDER := func(k *ecdsa.PrivateKey) []byte {
		b, err := x509.MarshalPKCS8PrivateKey(k)
		require.NoError(t, err)
		return b
	}
	f := pemFiles{
		ca:       write("ca.crt", "CERTIFICATE", caDER),
		cert:     write("client.crt", "CERTIFICATE", clientDER),
		key:      write("client.key", "PRIVATE KEY", keyDER(clientKey)),
		otherKey: write("other.key", "PRIVATE KEY", keyDER(newKey())),
	}
	b, err := os.ReadFile(f.key)
	require.NoError(t, err)
	f.keyPEM = string(b)
	return f
}

func TestRedisTLSOff(t *testing.T) {
	c, err := Parse(nil)
	require.NoError(t, err)
	assert.False(t, c.RedisTLS.On)
	assert.Nil(t, c.RedisTLS.Config)
	assert.Nil(t, c.StoreOptions().TLS)
	assert.Equal(t, "127.0.0.1:6379", c.RedisWhere())
}

func TestRedisTLSOn(t *testing.T) {
	f := makePEMFiles(t)
	c, err := Parse(map[string]string{"redis_tls": "on", "redis_tls_ca": f.ca, "redis_tls_cert": f.cert,
		"redis_tls_key": f.key, "redis_tls_server_name": "redis.example"})
	require.NoError(t, err)
	cfg := c.RedisTLS.Config
	require.NotNil(t, cfg)
	assert.Equal(t, uint16(tls.VersionTLS12), cfg.MinVersion)
	assert.Equal(t, "redis.example", cfg.ServerName)
	require.NotNil(t, cfg.RootCAs)
	require.Len(t, cfg.Certificates, 1)
	assert.Same(t, cfg, c.StoreOptions().TLS, "the store dials with it")

	// No CA: the system's roots (RootCAs nil); no client certificate.
	c, err = Parse(map[string]string{"redis_tls": "on"})
	require.NoError(t, err)
	require.NotNil(t, c.RedisTLS.Config)
	assert.Nil(t, c.RedisTLS.Config.RootCAs)
	assert.Empty(t, c.RedisTLS.Config.Certificates)

	// guardctl's parse builds the same.
	r, err := ParseRedis(map[string]string{"redis_tls": "on", "redis_tls_ca": f.ca})
	require.NoError(t, err)
	require.NotNil(t, r.RedisTLS.Config)
	assert.NotNil(t, r.RedisTLS.Config.RootCAs)
}

// Every problem with the TLS options is one line naming the option, the
// path and what was expected; all are reported at once; no line shows what
// a key file holds.
func TestRedisTLSErrors(t *testing.T) {
	f := makePEMFiles(t)
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "notpem")
	require.NoError(t, os.WriteFile(notPEM, []byte("hello\n"), 0o600))
	unreadable := filepath.Join(dir, "missing.pem")
	fifo := filepath.Join(dir, "fifo")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600)) // opening it would block the start until a writer comes
	cases := []struct {
		opts map[string]string
		want []string
	}{
		{map[string]string{"redis_tls": "yes"}, []string{`option redis_tls: bad value "yes": expected on or off`}},
		{map[string]string{"redis_tls_ca": f.ca, "redis_tls_server_name": "r"}, []string{
			`option redis_tls_ca: bad value "` + f.ca + `": expected nothing while redis_tls is off (set redis_tls on to use it)`,
			`option redis_tls_server_name: bad value "r": expected nothing while redis_tls is off`}},
		{map[string]string{"redis_tls": "on", "redis_tls_cert": f.cert}, []string{
			`option redis_tls_key: bad value "": expected the PEM file of the key of redis_tls_cert`}},
		{map[string]string{"redis_tls": "on", "redis_tls_key": f.key}, []string{
			`option redis_tls_cert: bad value "": expected the PEM file of the client certificate whose key is redis_tls_key`}},
		{map[string]string{"redis_tls": "on", "redis_tls_ca": unreadable}, []string{
			`option redis_tls_ca: bad value "` + unreadable + `": expected a PEM file of CA certificates readable by the broker's user (no such file or directory)`}},
		{map[string]string{"redis_tls": "on", "redis_tls_ca": dir}, []string{
			`option redis_tls_ca: bad value "` + dir + `": expected a PEM file of CA certificates readable by the broker's user (not a regular file)`}},
		{map[string]string{"redis_tls": "on", "redis_tls_cert": fifo, "redis_tls_key": "/dev/zero"}, []string{
			`option redis_tls_cert: bad value "` + fifo + `": expected a PEM file of a client certificate readable by the broker's user (not a regular file)`,
			`option redis_tls_key: bad value "/dev/zero": expected a PEM file of the client certificate's private key readable by the broker's user (not a regular file)`}},
		{map[string]string{"redis_tls": "on", "redis_tls_ca": notPEM}, []string{
			`option redis_tls_ca: bad value "` + notPEM + `": expected a PEM file of CA certificates readable by the broker's user (no CERTIFICATE block in it)`}},
		{map[string]string{"redis_tls": "on", "redis_tls_ca": f.key}, []string{
			`option redis_tls_ca: bad value "` + f.key + `": expected a PEM file of CA certificates`}},
		{map[string]string{"redis_tls": "on", "redis_tls_cert": notPEM, "redis_tls_key": unreadable}, []string{
			`option redis_tls_cert: bad value "` + notPEM + `": expected a PEM file of a client certificate (no CERTIFICATE block in it)`,
			`option redis_tls_key: bad value "` + unreadable + `": expected a PEM file of the client certificate's private key readable by the broker's user (no such file or directory)`}},
		{map[string]string{"redis_tls": "on", "redis_tls_cert": f.key, "redis_tls_key": f.cert}, []string{
			`option redis_tls_cert: bad value "` + f.key + `": expected a PEM file of a client certificate (no CERTIFICATE block in it)`,
			`option redis_tls_key: bad value "` + f.cert + `": expected a PEM file of the client certificate's private key (no PRIVATE KEY block in it)`}},
		{map[string]string{"redis_tls": "on", "redis_tls_cert": f.cert, "redis_tls_key": f.otherKey}, []string{
			`option redis_tls_key: bad value "` + f.otherKey + `": expected the private key of the certificate in redis_tls_cert (this key does not match it)`}},
		{map[string]string{"redis_tls": "on", "redis_tls_server_name": "a b"}, []string{
			`option redis_tls_server_name: bad value "a b": expected a host name or IP address`}},
		{map[string]string{"redis_tls": "on", "redis_tls_ca": notPEM, "redis_tls_cert": f.cert, "fail_limit": "x"}, []string{
			`option fail_limit: bad value "x"`,
			`option redis_tls_ca: bad value "` + notPEM + `"`,
			`option redis_tls_key: bad value ""`}},
	}
	for _, c := range cases {
		parsers := []func(map[string]string) (Options, error){Parse, ParseRedis}
		if _, ok := c.opts["fail_limit"]; ok {
			parsers = parsers[:1] // guardctl's ParseRedis reads no fail_limit
		}
		for _, parse := range parsers {
			_, err := parse(c.opts)
			var errs Errors
			require.True(t, errors.As(err, &errs), "%v: %v", c.opts, err)
			require.Len(t, errs, len(c.want), "%v: %v", c.opts, err)
			for i, w := range c.want {
				assert.Contains(t, errs[i].Error(), w)
				assert.NotContains(t, errs[i].Error(), "\n", "one line")
			}
			assert.NotContains(t, err.Error(), strings.Split(f.keyPEM, "\n")[1], "no key material")
		}
	}
}

// redis_addr takes no URL: rediss:// names redis_tls, the option that
// replaces it, rather than dialling a TLS port in plain text.
func TestRedisAddrURLRefused(t *testing.T) {
	_, err := Parse(map[string]string{"redis_addr": "rediss://redis.example:6380"})
	require.Error(t, err)
	assert.Contains(t, err.Error(), `option redis_addr: bad value "rediss://redis.example:6380": expected host:port`)
	assert.Contains(t, err.Error(), "no URL: for TLS set redis_tls on")
	_, err = ParseRedis(map[string]string{"redis_addr": "redis://h:6379/2"})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no URL: set redis_db for a database")
}

func TestSentinelOptions(t *testing.T) {
	c, err := Parse(map[string]string{"redis_sentinel_master": "mymaster", "redis_addr": "10.0.0.1:26379,10.0.0.2:26379",
		"redis_sentinel_username": "sent", "redis_sentinel_password": "S3cret", "redis_password": "M4ster"})
	require.NoError(t, err)
	assert.Equal(t, Sentinel{Master: "mymaster", Username: "sent", Password: "S3cret"}, c.Sentinel)
	assert.Equal(t, `master "mymaster" of the sentinels 10.0.0.1:26379,10.0.0.2:26379`, c.RedisWhere())
	o := c.StoreOptions()
	assert.Equal(t, "mymaster", o.SentinelMaster)
	assert.Equal(t, []string{"10.0.0.1:26379", "10.0.0.2:26379"}, o.Addrs)
	assert.Equal(t, "sent", o.SentinelUsername)
	assert.Equal(t, "S3cret", o.SentinelPassword)
	assert.Equal(t, "M4ster", o.Password, "redis_password is the master's")

	for opts, want := range map[string]map[string]string{
		`option redis_sentinel_password: bad value (not shown): expected nothing unless redis_sentinel_master is set`: {"redis_sentinel_password": "S3cret"},
		`option redis_sentinel_username: bad value "sent": expected nothing unless redis_sentinel_master is set`:      {"redis_sentinel_username": "sent"},
		`option redis_sentinel_master: bad value "my master": expected the name the sentinels monitor the master by`:  {"redis_sentinel_master": "my master"},
	} {
		for _, parse := range []func(map[string]string) (Options, error){Parse, ParseRedis} {
			_, err := parse(want)
			require.Error(t, err)
			assert.Contains(t, err.Error(), opts)
			assert.NotContains(t, err.Error(), "S3cret")
		}
	}
}

// The line for each TLS fault met at start names the option to fix.
func TestTLSOptionError(t *testing.T) {
	f := makePEMFiles(t)
	c, err := Parse(map[string]string{"redis_addr": "10.0.0.1:6380", "redis_tls": "on", "redis_tls_ca": f.ca})
	require.NoError(t, err)
	cause := errors.New("x509: the reason")
	for fault, want := range map[store.TLSFault]string{
		store.TLSUnknownAuthority: `option redis_tls_ca: bad value "` + f.ca + `": expected the PEM file of the CA that signed the certificate of the Redis at 10.0.0.1:6380 (x509: the reason)`,
		store.TLSBadName:          `option redis_tls_server_name: bad value "": expected a name that the certificate of the Redis at 10.0.0.1:6380 holds (none given: the host dialled was checked) (x509: the reason)`,
		store.TLSInvalid:          `option redis_tls_ca: bad value "` + f.ca + `": expected a CA whose certificates for the Redis at 10.0.0.1:6380 are valid now`,
		store.TLSRefused:          `option redis_tls_cert: bad value "": expected a client certificate (and its redis_tls_key) that the Redis at 10.0.0.1:6380 accepts`,
		store.TLSNotTLS:           `option redis_tls: bad value "on": expected off for the Redis at 10.0.0.1:6380, which speaks no TLS there`,
	} {
		assert.Contains(t, TLSOptionError(c, &store.TLSError{Fault: fault, Err: cause}).Error(), want)
	}
}

// A TLS file linked to a pseudo-file that is regular by its mode but whose
// reads wait (/proc/kmsg) is refused at once: before, readPEM's os.ReadFile
// waited for kernel messages for ever, and the broker's start with it.
func TestReadPEMNeverWaitsOnAPseudoFile(t *testing.T) {
	f, err := os.Open("/proc/kmsg")
	if err != nil {
		t.Skipf("/proc/kmsg: %v (needs root)", err)
	}
	f.Close()
	link := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.Symlink("/proc/kmsg", link))
	done := make(chan error, 1)
	go func() {
		_, err := readPEM(link)
		done <- err
	}()
	select {
	case err := <-done:
		assert.Error(t, err)
	case <-time.After(3 * time.Second):
		t.Fatal("readPEM of a symlink to /proc/kmsg still waiting after 3 s")
	}
}

// Several redis_addr are a Redis Cluster's seeds: a cluster has database 0
// only, and go-redis's cluster client has none to select, so redis_db was
// silently ignored (atk59's suspicion). With sentinels it is the master's.
func TestRedisDBWithClusterSeedsRefused(t *testing.T) {
	_, err := Parse(map[string]string{"redis_addr": "10.0.0.1:6379,10.0.0.2:6379", "redis_db": "3"})
	require.Error(t, err)
	assert.Contains(t, err.Error(), `option redis_db: bad value "3": expected 0: several redis_addr name a Redis Cluster's nodes`)
	_, err = Parse(map[string]string{"redis_addr": "10.0.0.1:6379,10.0.0.2:6379", "redis_db": "0"})
	assert.NoError(t, err)
	_, err = Parse(map[string]string{"redis_addr": "10.0.0.1:26379,10.0.0.2:26379", "redis_sentinel_master": "m", "redis_db": "3"})
	assert.NoError(t, err)
	c, err := Parse(map[string]string{"redis_addr": "10.0.0.1:6379", "redis_db": "3"})
	assert.NoError(t, err)
	assert.Equal(t, 3, c.RedisDB)
}

// The store loads tracking's scripts at each new connection only where
// tracking runs: with clientid_conflict off the plugin may run no script,
// and a read-only Redis user would see a refused EVAL at each connection.
func TestStoreOptionsTracking(t *testing.T) {
	for mode, want := range map[string]bool{"off": false, "flag": true, "deny": true} {
		c, err := Parse(map[string]string{"clientid_conflict": mode})
		require.NoError(t, err, mode)
		assert.Equal(t, want, c.StoreOptions().Tracking, mode)
	}
}
