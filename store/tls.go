package store

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"syscall"
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
// most): one that answers is a TLSNotTLS fault. Every address means those
// of Options.Addrs and those the PING dialled (a sentinels' master, a
// cluster's nodes), here and below.
//
// Under TLS 1.3 a server checks the client's certificate after the client
// has finished its handshake, so a refusal reaches the client only as the
// server's alert to the PING. A server that closes while the PING is still
// unread in its socket resets the connection, and the reset can take the
// alert with it: the PING then fails with a reset or an EOF, which says
// nothing. So when it does, every address is asked again, by a handshake
// after which nothing is sent (refusedAfterHandshake, plainProbeTimeout at
// most): with nothing unread the server's close carries its alert. A close
// without an alert stays no fault. So CheckTLS takes at most ctx's time
// plus plainProbeTimeout.
func (s *Store) CheckTLS(ctx context.Context) error {
	o, timeout := s.probeOptions(ctx)
	// Every address dialled, for the probes: through sentinels the PING
	// goes to the master they name, in a cluster to the nodes CLUSTER
	// SLOTS names, none of them in Addrs.
	var dialled dialLog
	if o.TLSConfig != nil {
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: o.TLSConfig}
		o.Dialer = dialled.wrap(d.DialContext)
	}
	rdb := redis.NewUniversalClient(o)
	err := rdb.Ping(ctx).Err()
	rdb.Close()
	if f := tlsFault(err); f != 0 {
		return &TLSError{Fault: f, Err: err}
	}
	if err == nil {
		return nil
	}
	addrs := slices.Clone(s.clients.o.Addrs)
	for _, a := range dialled.list() {
		if !slices.Contains(addrs, a) {
			addrs = append(addrs, a)
		}
	}
	if closedByPeer(err) && s.clients.o.TLS != nil {
		return probeRefused(addrs, s.clients.o.TLS, err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		return nil
	}
	plain := make(chan string, len(addrs))
	for _, a := range addrs {
		go func() {
			if speaksPlain(a) {
				plain <- a
			} else {
				plain <- ""
			}
		}()
	}
	for range addrs {
		if a := <-plain; a != "" {
			return &TLSError{Fault: TLSNotTLS, Err: fmt.Errorf("%s answers in plain text, not TLS (no TLS answer: %w)", a, err)}
		}
	}
	return nil
}

// probeOptions are the options of a one-off client for a check at start:
// bounded by ctx (plainProbeTimeout without a deadline), never retrying a
// command, dialling once. timeout is that bound.
func (s *Store) probeOptions(ctx context.Context) (o *redis.UniversalOptions, timeout time.Duration) {
	timeout = plainProbeTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(d), time.Millisecond)
	}
	o = s.clients.o.universal(timeout)
	o.ContextTimeoutEnabled = true
	o.MaxRetries = -1
	o.DialerRetries = 1
	return o, timeout
}

// dialLog records the addresses a probe's client dialled: through
// sentinels the PING goes to the master they name, in a cluster to the
// nodes CLUSTER SLOTS names, none of them in Options.Addrs.
type dialLog struct {
	mu    sync.Mutex
	addrs []string
}

// wrap is dial, recording each address it is asked for.
func (l *dialLog) wrap(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		l.mu.Lock()
		if !slices.Contains(l.addrs, addr) {
			l.addrs = append(l.addrs, addr)
		}
		l.mu.Unlock()
		return dial(ctx, network, addr)
	}
}

// list is the addresses dialled so far.
func (l *dialLog) list() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.addrs)
}

// closedByPeer says whether err is the connection's end at the other side:
// an EOF or a reset.
func closedByPeer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// probeRefused asks every address, at once, whether it refuses this
// client (refusedAfterHandshake): a *TLSError (TLSRefused) when one does,
// nil otherwise. first is the PING's error.
func probeRefused(addrs []string, cfg *tls.Config, first error) error {
	found := make(chan error, len(addrs))
	for _, a := range addrs {
		go func() { found <- refusedAfterHandshake(a, cfg) }()
	}
	var refusal error
	for range addrs {
		if err := <-found; err != nil && refusal == nil {
			refusal = err
		}
	}
	if refusal == nil {
		return nil
	}
	return &TLSError{Fault: TLSRefused, Err: fmt.Errorf("%w (the PING before it: %v)", refusal, first)}
}

// refusedAfterHandshake dials addr, completes a TLS handshake with cfg,
// sends nothing, and listens for the server's first word, within
// plainProbeTimeout in all. It returns the server's alert, if that is its
// word: a Redis that refuses the client's certificate says so and closes,
// and with nothing of the client's unread its close cannot reset the
// connection before the alert is read. Under TLS 1.2 the refusal is an
// alert that ends the handshake, and the PING's can be lost to a reset the
// same way (the client's flight after its Certificate is unread): so an
// alert that fails this handshake is returned too. It returns nil when the
// handshake fails otherwise, when the server stays silent, sends data, or
// closes without an alert: a close alone may be a TLS proxy whose Redis is
// down, which is no TLS fault.
func refusedAfterHandshake(addr string, cfg *tls.Config) error {
	ctx, cancel := context.WithTimeout(context.Background(), plainProbeTimeout)
	defer cancel()
	d := tls.Dialer{Config: cfg}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		if tlsFault(err) == TLSRefused {
			// Under TLS 1.2 the refusal ends the handshake itself; the
			// PING's was lost to a reset, this one was told.
			return fmt.Errorf("%s: %w", addr, err)
		}
		return nil
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	_ = c.SetReadDeadline(deadline)
	var b [1]byte
	if _, err = c.Read(b[:]); err != nil && tlsFault(err) == TLSRefused {
		return fmt.Errorf("%s: %w", addr, err)
	}
	return nil
}

// plainProbeTimeout bounds speaksPlain and refusedAfterHandshake.
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

// alertInternalError is TLS's internal_error alert (RFC 8446, 6.2).
const alertInternalError = 80

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
		// has finished, and its alert comes with the first reply. But an
		// internal_error is the server's own failure (a proxy whose
		// certificate is not loaded yet), which a retry may mend.
		if netError.Err.Error() == tls.AlertError(alertInternalError).Error() {
			return 0
		}
		return TLSRefused
	}
	return 0
}
