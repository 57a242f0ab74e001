package testenv

import (
	"fmt"
	"testing"
	"time"
)

// RedisTLS says how a redis-server started by StartRedisTLS (or the nodes
// and sentinels of StartSentinel) speaks TLS.
type RedisTLS struct {
	// CA signs the server's certificate, and the server trusts the client
	// certificates it signs.
	CA *CA
	// Names are the server certificate's subjectAltName (ServerFor);
	// default 127.0.0.1.
	Names []string
	// AuthClients is tls-auth-clients yes: a client without a certificate
	// the CA signed is refused. Otherwise (no) none is asked for.
	AuthClients bool

	cert, key string // made once, by files
}

// files makes the server's certificate and the client certificate of
// redis-cli (once) and returns redis-server's TLS settings, as name and
// value pairs, and redis-cli's arguments.
func (o *RedisTLS) files(t testing.TB) (server [][2]string, cli []string) {
	t.Helper()
	if o.cert == "" {
		names := o.Names
		if len(names) == 0 {
			names = []string{"127.0.0.1"}
		}
		o.cert, o.key = o.CA.ServerFor(t, names...)
	}
	auth := "no"
	if o.AuthClients {
		auth = "yes"
	}
	server = [][2]string{
		{"tls-cert-file", o.cert}, {"tls-key-file", o.key}, {"tls-ca-cert-file", o.CA.CertPath},
		{"tls-auth-clients", auth},
	}
	// redis-cli presents the server's certificate, which is good for
	// client authentication too.
	cli = []string{"--tls", "--cacert", o.CA.CertPath, "--cert", o.cert, "--key", o.key}
	return server, cli
}

// StartRedisTLS starts a redis-server as StartRedis does, that speaks TLS
// only: --port 0 --tls-port on a free port, with a server certificate from
// o.CA for o.Names. Its CLI speaks TLS too. Extra arguments are passed on.
func StartRedisTLS(t testing.TB, o *RedisTLS, extra ...string) *Redis {
	t.Helper()
	Need(t, "redis-server", "redis-cli")
	settings, cli := o.files(t)
	port := FreePort(t)
	dir := t.TempDir()
	args := []string{"--port", "0", "--tls-port", fmt.Sprint(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir}
	for _, s := range settings {
		args = append(args, "--"+s[0], s[1])
	}
	args = append(args, extra...)
	r := newRedis(t, port, dir, args, cli)
	r.Process = start(t, dir, "redis-server", args...)
	if err := r.WaitPort(r.Addr, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return r
}
