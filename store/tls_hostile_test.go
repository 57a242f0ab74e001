package store

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
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

// Cluster seeds that take the connection and never finish a handshake (a
// load balancer whose backends hang): CheckTLS stays within its context
// plus the probe's 0.5 s whatever the number of seeds.
func TestCheckTLSHostileSilentClusterSeeds(t *testing.T) {
	ca := testenv.NewCA(t)
	var addrs []string
	for range 3 {
		addrs = append(addrs, serve(t, func(_ int, c net.Conn) { _, _ = io.Copy(io.Discard, c) }))
	}
	s := New(Options{Addrs: addrs, Timeout: time.Second, TLS: ca.TLSConfig(t, nil)}, keys.Builder{Prefix: "guard:"})
	t.Cleanup(func() { s.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	assert.NoError(t, s.CheckTLS(ctx))
	took := time.Since(start)
	t.Logf("took %v", took)
	assert.Less(t, took, 2600*time.Millisecond, "its context (2 s) plus the probe's 0.5 s")
}

// respServer answers a sentinel's commands: the master for
// get-master-addr-by-name, an empty list of other sentinels, and the
// subscription go-redis makes.
func respServer(c net.Conn, master string) {
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "*") {
			return
		}
		n, _ := strconv.Atoi(strings.TrimSpace(line[1:]))
		var args []string
		for range n {
			if _, err := r.ReadString('\n'); err != nil {
				return
			}
			a, err := r.ReadString('\n')
			if err != nil {
				return
			}
			args = append(args, strings.TrimSpace(a))
		}
		cmd := strings.ToLower(strings.Join(args, " "))
		host, port, _ := net.SplitHostPort(master)
		var reply string
		switch {
		case strings.HasPrefix(cmd, "sentinel get-master-addr-by-name"):
			reply = fmt.Sprintf("*2\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", len(host), host, len(port), port)
		case strings.HasPrefix(cmd, "sentinel"):
			reply = "*0\r\n"
		case strings.HasPrefix(cmd, "subscribe"):
			for i, ch := range args[1:] {
				reply += fmt.Sprintf("*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:%d\r\n", len(ch), ch, i+1)
			}
		case cmd == "ping":
			reply = "+PONG\r\n"
		default:
			reply = "-ERR unknown command\r\n"
		}
		if _, err := c.Write([]byte(reply)); err != nil {
			return
		}
	}
}

// Through sentinels, the PING goes to the master they name, not to an
// address of redis_addr. A master that refuses the client certificate (its
// alert lost to a reset, as TestCheckTLSRefusalLostToAReset) behind
// sentinels that take any TLS client is still a refusal: the probe must ask
// the master, not only the sentinels.
func TestCheckTLSHostileSentinelMasterRefusalLostToAReset(t *testing.T) {
	ca := testenv.NewCA(t)
	master := lossyTLS(t, ca, true)
	assert.Equal(t, TLSRefused, checkBehindSentinel(t, ca, master), "the master refuses this client")
}

// Through sentinels on TLS, a master on a port without TLS that waits for
// the end of a line (as Redis does) is a TLSNotTLS fault: the plain-text
// probe must ask the master the PING went to, not only the sentinels.
func TestCheckTLSHostileSentinelMasterNotTLS(t *testing.T) {
	ca := testenv.NewCA(t)
	master := serve(t, func(_ int, c net.Conn) {
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if line == "PING\r\n" {
				_, _ = c.Write([]byte("+PONG\r\n"))
			}
		}
	})
	assert.Equal(t, TLSNotTLS, checkBehindSentinel(t, ca, master), "the master speaks no TLS")
}

// checkBehindSentinel runs CheckTLS through a TLS sentinel (certified by
// ca, taking any client) that names master, and returns the fault it
// reports (0 for none).
func checkBehindSentinel(t *testing.T, ca *testenv.CA, master string) TLSFault {
	t.Helper()
	certPath, keyPath := ca.Server(t)
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	require.NoError(t, err)
	sentinel := serve(t, func(_ int, raw net.Conn) {
		respServer(tls.Server(raw, &tls.Config{Certificates: []tls.Certificate{cert}}), master)
	})
	s := New(Options{Addrs: []string{sentinel}, SentinelMaster: "mymaster", Timeout: time.Second, TLS: ca.TLSConfig(t, nil)}, keys.Builder{Prefix: "guard:"})
	t.Cleanup(func() { s.Close() })
	err = checkTLS(t, s)
	t.Logf("%v", err)
	var te *TLSError
	if errors.As(err, &te) {
		return te.Fault
	}
	return 0
}

// A TLS Redis at maxclients takes the connection and drops it, before or
// during the handshake: a Redis overloaded, no TLS fault.
func TestCheckTLSHostileMaxclients(t *testing.T) {
	ca := testenv.NewCA(t)
	for _, auth := range []bool{false, true} {
		r := testenv.StartRedisTLS(t, &testenv.RedisTLS{CA: ca, AuthClients: auth}, "--maxclients", "1")
		client := ca.Client(t, "guard")
		held := tlsStore(t, r.Addr, ca.TLSConfig(t, client))
		_, err := held.Client().Ping(context.Background()).Result()
		require.NoError(t, err)
		for range 5 {
			assert.NoError(t, checkTLS(t, tlsStore(t, r.Addr, ca.TLSConfig(t, client))), "tls-auth-clients %v: a Redis at maxclients", auth)
		}
	}
}

// Real sentinels and nodes on TLS: CheckTLS, which dials through a dialer
// of its own, finds a good configuration good, through the sentinels to
// the master; and a client without a certificate refused by mutual TLS.
func TestCheckTLSHostileRealSentinels(t *testing.T) {
	ca := testenv.NewCA(t)
	sn := testenv.StartSentinel(t, testenv.SentinelOptions{Replicas: 1, Sentinels: 1, Quorum: 1, TLS: &testenv.RedisTLS{CA: ca, AuthClients: true}})
	store := func(cfg *tls.Config) *Store {
		s := New(Options{Addrs: strings.Split(sn.Addrs, ","), SentinelMaster: sn.Name, Timeout: time.Second, TLS: cfg}, keys.Builder{Prefix: "guard:"})
		t.Cleanup(func() { s.Close() })
		return s
	}
	assert.NoError(t, checkTLS(t, store(ca.TLSConfig(t, ca.Client(t, "guard")))))
	err := checkTLS(t, store(ca.TLSConfig(t, nil)))
	var te *TLSError
	require.ErrorAs(t, err, &te)
	assert.Equal(t, TLSRefused, te.Fault)
	t.Logf("%v", err)
}

// A TLS server that fails on its side (a TLS-terminating proxy whose
// certificate is not loaded yet, an OpenSSL out of memory) sends an
// internal_error alert: that says nothing against this client's
// certificate, no TLS fault of its settings, and the broker must start.
func TestCheckTLSHostileServerInternalError(t *testing.T) {
	ca := testenv.NewCA(t)
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		addr := serve(t, func(_ int, raw net.Conn) {
			tc := tls.Server(raw, &tls.Config{MaxVersion: version, GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
				return nil, errors.New("certificate not loaded yet")
			}})
			_ = tc.Handshake()
		})
		assert.NoError(t, checkTLS(t, tlsStore(t, addr, ca.TLSConfig(t, ca.Client(t, "guard")))), "TLS version %x", version)
	}
}
