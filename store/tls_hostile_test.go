package store

import (
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// serve accepts on a fresh loopback port and runs handle on each
// connection (numbered from 0) until the test ends.
func serve(t *testing.T, handle func(n int, c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for n := 0; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(n int) {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				handle(n, c)
			}(n)
		}
	}()
	return ln.Addr().String()
}

// A Redis on TLS 1.2 (tls-protocols TLSv1.2) refuses a client without a
// certificate during the handshake. The client's flight after its
// Certificate is still unread when the server closes, so that close can
// reset the connection and take the alert with it: the PING fails with a
// reset. The probe's own handshake then hears the alert, and that is a
// refusal too.
func TestCheckTLSHostileTLS12RefusalLostToAReset(t *testing.T) {
	ca := testenv.NewCA(t)
	certPath, keyPath := ca.Server(t)
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	require.NoError(t, err)
	addr := serve(t, func(n int, raw net.Conn) {
		if n == 0 { // the alert lost: a reset in the handshake
			_, _ = raw.Read(make([]byte, 512))
			_ = raw.(*net.TCPConn).SetLinger(0)
			return
		}
		tc := tls.Server(raw, &tls.Config{Certificates: []tls.Certificate{cert}, MaxVersion: tls.VersionTLS12, ClientAuth: tls.RequireAnyClientCert})
		_ = tc.Handshake()
		_, _ = io.Copy(io.Discard, raw)
	})
	err = checkTLS(t, tlsStore(t, addr, ca.TLSConfig(t, nil)))
	var te *TLSError
	require.ErrorAs(t, err, &te, "a refused client certificate is a TLS fault")
	assert.Equal(t, TLSRefused, te.Fault)
	t.Logf("%v", err)
}
