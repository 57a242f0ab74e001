package store

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/redis/go-redis/v9"
)

// TLSFault is what a failed first connection says of the TLS settings:
// a fault no retry mends, unlike a Redis that is down.
type TLSFault int

// The TLS faults CheckTLS tells apart.
const (
	// TLSUnknownAuthority: the server's certificate is signed by no CA
	// trusted (redis_tls_ca, or the system's CAs).
	TLSUnknownAuthority TLSFault = iota + 1
	// TLSBadName: the certificate does not hold the name checked
	// (redis_tls_server_name, or the host dialled).
	TLSBadName
	// TLSInvalid: the certificate, or one of its chain, is expired, not yet
	// valid, or not valid for a server.
	TLSInvalid
	// TLSRefused: the server refused the handshake with an alert: it wants
	// a client certificate it trusts (redis_tls_cert and redis_tls_key).
	TLSRefused
	// TLSNotTLS: the server answered in plain text: that port speaks no TLS.
	TLSNotTLS
)

// TLSError is a first connection that failed for its TLS settings.
type TLSError struct {
	Fault TLSFault
	Err   error
}

func (e *TLSError) Error() string { return "store: tls: " + e.Err.Error() }

func (e *TLSError) Unwrap() error { return e.Err }

// CheckTLS makes one connection (through the sentinels with
// Options.SentinelMaster) and a PING within ctx, with a client of its own
// that neither retries nor redials (a refused dial returns at once), and
// returns a *TLSError when the TLS settings are what failed it. Any other
// failure (Redis down, a timeout, a refused AUTH) returns nil: it is no
// TLS fault, and the plugin's health probe reports it.
//
// A server that speaks no TLS does not answer a ClientHello: Redis waits
// for the end of a line that never comes. So when the PING times out,
// every address is asked a plain-text PING, at once (plainProbeTimeout at
// most): one that answers is a TLSNotTLS fault. So CheckTLS takes at most
// ctx's time plus plainProbeTimeout.
func (s *Store) CheckTLS(ctx context.Context) error {
	timeout := plainProbeTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(d), time.Millisecond)
	}
	o := s.clients.o.universal(timeout)
	o.ContextTimeoutEnabled = true
	o.MaxRetries = -1
	o.DialerRetries = 1
	rdb := redis.NewUniversalClient(o)
	err := rdb.Ping(ctx).Err()
	rdb.Close()
	if f := tlsFault(err); f != 0 {
		return &TLSError{Fault: f, Err: err}
	}
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		return nil
	}
	plain := make(chan string, len(s.clients.o.Addrs))
	for _, a := range s.clients.o.Addrs {
		go func() {
			if speaksPlain(a) {
				plain <- a
			} else {
				plain <- ""
			}
		}()
	}
	for range s.clients.o.Addrs {
		if a := <-plain; a != "" {
			return &TLSError{Fault: TLSNotTLS, Err: fmt.Errorf("%s answers in plain text, not TLS (no TLS answer: %w)", a, err)}
		}
	}
	return nil
}

// plainProbeTimeout bounds speaksPlain.
const plainProbeTimeout = 500 * time.Millisecond

// speaksPlain says whether the server at addr answers a plain-text PING
// with a RESP reply: +PONG, or an error such as -NOAUTH.
func speaksPlain(addr string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), plainProbeTimeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	_ = c.SetDeadline(deadline)
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	var b [1]byte
	_, err = io.ReadFull(c, b[:])
	return err == nil && (b[0] == '+' || b[0] == '-')
}

// tlsFault classifies err; 0 when it is no TLS fault.
func tlsFault(err error) TLSFault {
	var (
		unknown  x509.UnknownAuthorityError
		name     x509.HostnameError
		invalid  x509.CertificateInvalidError
		verify   *tls.CertificateVerificationError
		record   tls.RecordHeaderError
		netError *net.OpError
	)
	switch {
	case err == nil:
		return 0
	case errors.As(err, &unknown):
		return TLSUnknownAuthority
	case errors.As(err, &name):
		return TLSBadName
	case errors.As(err, &invalid), errors.As(err, &verify):
		return TLSInvalid
	case errors.As(err, &record):
		return TLSNotTLS // a server that answered, but not in TLS
	case errors.As(err, &netError) && netError.Op == "remote error":
		// crypto/tls reports an alert from the server so: with TLS 1.3
		// the server checks the client's certificate after the client
		// has finished, and its alert comes with the first reply.
		return TLSRefused
	}
	return 0
}
