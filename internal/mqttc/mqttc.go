package mqttc

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// ErrNoConnack means the broker closed the connection (or reset it) without
// sending a CONNACK.
var ErrNoConnack = errors.New("mqttc: connection closed without connack")

// Options describes a connection.
type Options struct {
	// Addr is the broker's host:port.
	Addr string
	// SourceIP is the optional local address to bind, e.g. "127.0.0.23".
	SourceIP string
	// ClientID is sent verbatim (any bytes, at most 65535).
	ClientID string
	// Username, when not nil, is sent with the username flag.
	Username *string
	// Password, when not nil, is sent with the password flag.
	Password *string
	// KeepAlive is in seconds; 0 means the default, 60.
	KeepAlive uint16
	// Persistent asks for a persistent session (clean session / clean start
	// = 0); by default the session is clean.
	Persistent bool
	// Version is 4 (MQTT 3.1.1, the default when 0) or 5.
	Version int
	// Will is the optional will message, QoS 0, not retained.
	Will *Will
	// SessionExpiry is MQTT 5's Session Expiry Interval in seconds (0: none
	// sent); ignored under 3.1.1.
	SessionExpiry uint32
	// Timeout bounds dial + TLS handshake + CONNACK; default 5s.
	Timeout time.Duration
	// TLS, when not nil, runs MQTT over TLS with this configuration, on the
	// TCP connection dialed as without it (from SourceIP, when set). Its
	// ServerName defaults to Addr's host, as tls.Dial's does; a client
	// certificate in Certificates is presented when the broker asks.
	TLS *tls.Config
}

// Will is a will message, published by the broker when the connection ends
// without DISCONNECT.
type Will struct {
	Topic   string
	Payload []byte
	// Delay is MQTT 5's Will Delay Interval in seconds (0: none sent).
	Delay uint32
}

// Conn is an MQTT connection that got CONNACK code 0.
type Conn struct {
	nc      net.Conn
	version int
	rbuf    []byte     // bytes read but not yet parsed into packets
	queue   []*message // PUBLISH received while waiting for something else
	nextID  uint16     // last packet identifier used
	err     error      // sticky: the stream can no longer be trusted
	tmp     [4096]byte // read buffer
}

type message struct {
	topic   string
	payload []byte
}

// maxPackets bounds the packets any one call reads.
const maxPackets = 1 << 20

// Dial connects and sends CONNECT, then reads CONNACK. code is the CONNACK
// return code (3.1.1) or reason code (5). If code != 0 the connection is
// closed and returned conn is nil, err is nil: a refusal is a result, not an
// error. Errors: dial failures, ErrNoConnack, timeouts.
func Dial(ctx context.Context, o Options) (conn *Conn, code byte, err error) {
	if o.KeepAlive == 0 {
		o.KeepAlive = 60
	}
	if o.Version == 0 {
		o.Version = 4
	}
	if o.Version != 4 && o.Version != 5 {
		return nil, 0, fmt.Errorf("mqttc: unsupported protocol version %d", o.Version)
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	pkt, err := encodeConnect(&o)
	if err != nil {
		return nil, 0, err
	}
	d := net.Dialer{}
	if o.SourceIP != "" {
		ip := net.ParseIP(o.SourceIP)
		if ip == nil {
			return nil, 0, fmt.Errorf("mqttc: bad source ip %q", o.SourceIP)
		}
		d.LocalAddr = &net.TCPAddr{IP: ip}
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	nc, err := d.DialContext(ctx, "tcp", o.Addr)
	if err != nil {
		return nil, 0, fmt.Errorf("mqttc: dial %s: %w", o.Addr, err)
	}
	if o.TLS != nil {
		if nc, err = handshake(ctx, nc, o.Addr, o.TLS); err != nil {
			return nil, 0, err
		}
	}
	c := &Conn{nc: nc, version: o.Version}
	release := c.guard(ctx)
	defer release()
	_, werr := nc.Write(pkt)
	if werr != nil && !isClosed(werr) {
		nc.Close()
		return nil, 0, c.wrap(ctx, "send connect", werr)
	}
	// Even if the write failed because the broker closed, its CONNACK may
	// be waiting to be read.
	first, body, err := c.readPacket()
	if err != nil {
		nc.Close()
		if isClosed(err) {
			return nil, 0, fmt.Errorf("%w: %v", ErrNoConnack, err)
		}
		return nil, 0, c.wrap(ctx, "read connack", err)
	}
	if first>>4 != typeConnack {
		nc.Close()
		return nil, 0, fmt.Errorf("mqttc: expected connack, got packet type %d", first>>4)
	}
	code, err = parseConnack(body, c.version)
	if err != nil {
		nc.Close()
		return nil, 0, err
	}
	if code != 0 {
		nc.Close()
		return nil, code, nil
	}
	return c, 0, nil
}

// handshake runs the client side of a TLS handshake on nc under ctx, and
// returns the TLS connection; nc is closed when it fails. With TLS 1.3 the
// handshake completes on the client's side before the server has checked the
// client's certificate: a broker that refuses the certificate is seen at the
// first read (Dial's CONNACK) as an error, not here.
func handshake(ctx context.Context, nc net.Conn, addr string, cfg *tls.Config) (net.Conn, error) {
	if cfg.ServerName == "" && !cfg.InsecureSkipVerify {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			nc.Close()
			return nil, fmt.Errorf("mqttc: tls server name from %q: %w", addr, err)
		}
		cfg = cfg.Clone()
		cfg.ServerName = host
	}
	tc := tls.Client(nc, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("mqttc: tls handshake with %s: %w", addr, err)
	}
	return tc, nil
}

// Ping sends PINGREQ and waits for PINGRESP. PUBLISH packets received
// meanwhile are kept for Next.
func (c *Conn) Ping(ctx context.Context) error {
	if err := c.send(ctx, []byte{typePingreq << 4, 0}); err != nil {
		return err
	}
	return c.await(ctx, "pingresp", func(first byte, _ []byte) bool { return first>>4 == typePingresp })
}

// Subscribe subscribes to one topic filter and waits for SUBACK; it is an
// error if the broker refuses (0x80 in 3.1.1, a reason code >= 0x80 in 5).
// qos is sent verbatim as the subscription options byte.
func (c *Conn) Subscribe(ctx context.Context, topic string, qos byte) error {
	c.nextID++
	if c.nextID == 0 {
		c.nextID = 1
	}
	id := c.nextID
	pkt, err := encodeSubscribe(id, topic, qos, c.version)
	if err != nil {
		return err
	}
	if err := c.send(ctx, pkt); err != nil {
		return err
	}
	var code byte
	err = c.await(ctx, "suback", func(first byte, body []byte) bool {
		if first>>4 != typeSuback {
			return false
		}
		gotID, gotCode, err := parseSuback(body, c.version)
		if err != nil || gotID != id {
			return false
		}
		code = gotCode
		return true
	})
	if err != nil {
		return err
	}
	if code >= 0x80 {
		return fmt.Errorf("mqttc: subscribe %q refused: code 0x%02x", topic, code)
	}
	return nil
}

// Publish sends a QoS 0 PUBLISH.
func (c *Conn) Publish(ctx context.Context, topic string, payload []byte) error {
	pkt, err := encodePublish(topic, payload, c.version)
	if err != nil {
		return err
	}
	return c.send(ctx, pkt)
}

// Next returns the next PUBLISH received. QoS 1 and 2 messages are
// acknowledged.
func (c *Conn) Next(ctx context.Context) (topic string, payload []byte, err error) {
	if len(c.queue) == 0 {
		if err := c.await(ctx, "publish", func(first byte, _ []byte) bool { return first>>4 == typePublish }); err != nil {
			return "", nil, err
		}
	}
	m := c.queue[0]
	c.queue = c.queue[1:]
	return m.topic, m.payload, nil
}

// Disconnect sends DISCONNECT then closes the connection.
func (c *Conn) Disconnect() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err := c.send(ctx, []byte{typeDisconnect << 4, 0})
	if cerr := c.nc.Close(); err == nil {
		err = cerr
	}
	return err
}

// Close closes the socket without DISCONNECT, so the broker sends the will.
func (c *Conn) Close() error {
	return c.nc.Close()
}

// Closed waits up to d for the broker to close the connection (read returns
// EOF or a reset); true if it did. PUBLISH packets received meanwhile are
// kept for Next, other packets (an MQTT 5 DISCONNECT among them) are skipped.
// It is false after the Conn was closed locally.
//
// A close already in the socket counts however short d is: the wait can be
// over before the read even begins (the goroutine descheduled past a 10 ms
// deadline on a loaded machine), and Go then answers "timeout" without
// looking at the socket. So a wait that times out looks once more, without
// a deadline and without waiting (peek); bytes found unread are read with a
// wait of at least closedRetry, at most closedTries times.
func (c *Conn) Closed(d time.Duration) bool {
	for try := 0; try < closedTries; try++ {
		closed, timedOut := c.waitClosed(d)
		if !timedOut {
			return closed
		}
		switch c.peek() {
		case peekClosed:
			return true
		case peekNothing:
			return false
		}
		d = max(d, closedRetry) // bytes wait unread: they can be read now
	}
	return false
}

const (
	closedTries = 3
	closedRetry = 100 * time.Millisecond
)

// waitClosed is one wait of Closed: closed, or timedOut when d passed first.
func (c *Conn) waitClosed(d time.Duration) (closed, timedOut bool) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	release := c.guard(ctx)
	defer release()
	for i := 0; i < maxPackets; i++ {
		first, body, err := c.readPacket()
		if err != nil {
			return isClosed(err), errors.Is(err, os.ErrDeadlineExceeded)
		}
		if err := c.handle(first, body); err != nil {
			return isClosed(err), false
		}
	}
	return false, false
}

type peekState int

const (
	peekNothing peekState = iota // no byte and no close waits (or the socket cannot be looked at)
	peekClosed                   // the peer closed or reset the connection, every byte before read
	peekData                     // bytes wait unread
)

// peek looks, without waiting and whatever deadline was set, at what the
// socket holds (MSG_PEEK: nothing is consumed). Under TLS it looks at the
// TCP socket: a TLS close is bytes first (an alert), then the close.
func (c *Conn) peek() peekState {
	nc := c.nc
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return peekNothing
	}
	raw, err := sc.SyscallConn()
	if err != nil || nc.SetReadDeadline(time.Time{}) != nil { // a passed deadline would refuse the look
		return peekNothing
	}
	state := peekNothing
	var b [1]byte
	err = raw.Read(func(fd uintptr) bool {
		n, _, rerr := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case rerr == nil && n == 0:
			state = peekClosed
		case rerr == nil:
			state = peekData
		case isClosed(rerr):
			state = peekClosed
		}
		return true // one look: never wait
	})
	if err != nil {
		return peekNothing
	}
	return state
}

// LocalAddr returns the connection's local address.
func (c *Conn) LocalAddr() net.Addr { return c.nc.LocalAddr() }

// guard applies ctx's deadline to the socket, and interrupts blocked I/O if
// ctx is cancelled, until release is called.
func (c *Conn) guard(ctx context.Context) (release func()) {
	dl, _ := ctx.Deadline()
	_ = c.nc.SetDeadline(dl)
	var mu sync.Mutex
	released := false
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if !released {
			_ = c.nc.SetDeadline(time.Unix(1, 0))
		}
	})
	return func() {
		stop()
		mu.Lock()
		released = true
		mu.Unlock()
	}
}

// wrap names the operation, and the context's error when it ended the call.
func (c *Conn) wrap(ctx context.Context, op string, err error) error {
	cerr := ctx.Err()
	if cerr == nil && errors.Is(err, os.ErrDeadlineExceeded) {
		cerr = context.DeadlineExceeded // the socket deadline beat ctx's timer
	}
	if cerr != nil {
		return fmt.Errorf("mqttc: %s: %w (%w)", op, cerr, err)
	}
	return fmt.Errorf("mqttc: %s: %w", op, err)
}

// send writes a whole packet under ctx.
func (c *Conn) send(ctx context.Context, pkt []byte) error {
	if c.err != nil {
		return c.err
	}
	release := c.guard(ctx)
	defer release()
	if err := c.write(pkt); err != nil {
		return c.wrap(ctx, "send", err)
	}
	return nil
}

// await reads packets until match returns true for one. Whatever packet
// comes, PUBLISH is acknowledged and queued for Next first.
func (c *Conn) await(ctx context.Context, op string, match func(first byte, body []byte) bool) error {
	if c.err != nil {
		return c.err
	}
	release := c.guard(ctx)
	defer release()
	for i := 0; i < maxPackets; i++ {
		first, body, err := c.readPacket()
		if err == nil {
			err = c.handle(first, body)
		}
		if err != nil {
			return c.wrap(ctx, "wait for "+op, err)
		}
		if match(first, body) {
			return nil
		}
		if first>>4 == typeDisconnect {
			reason := byte(0)
			if len(body) > 0 {
				reason = body[0]
			}
			return fmt.Errorf("mqttc: wait for %s: broker sent disconnect, reason 0x%02x", op, reason)
		}
	}
	return fmt.Errorf("mqttc: wait for %s: no match in %d packets", op, maxPackets)
}

// handle queues and acknowledges PUBLISH, and answers PUBREL.
func (c *Conn) handle(first byte, body []byte) error {
	switch first >> 4 {
	case typePublish:
		topic, payload, qos, id, err := parsePublish(first, body, c.version)
		if err != nil {
			c.err = err
			return err
		}
		if qos > 0 {
			ack := []byte{typePuback << 4, 2, byte(id >> 8), byte(id)}
			if qos == 2 {
				ack[0] = typePubrec << 4
			}
			if err := c.write(ack); err != nil {
				return err
			}
		}
		c.queue = append(c.queue, &message{topic, payload})
	case typePubrel:
		if len(body) < 2 {
			c.err = errMalformed
			return c.err
		}
		return c.write([]byte{typePubcomp << 4, 2, body[0], body[1]})
	}
	return nil
}

// write writes pkt under the deadline already set. A failed write may leave
// part of a packet on the wire, so the Conn is unusable after it.
func (c *Conn) write(pkt []byte) error {
	if _, err := c.nc.Write(pkt); err != nil {
		c.err = fmt.Errorf("mqttc: write: %w", err)
		return err
	}
	return nil
}

// readPacket returns the next whole packet. Bytes of a packet cut short by a
// deadline stay buffered, so a timed-out call leaves the stream intact.
func (c *Conn) readPacket() (first byte, body []byte, err error) {
	for i := 0; i < maxPackets; i++ {
		first, body, n, err := splitPacket(c.rbuf)
		if err != nil {
			c.err = err
			return 0, nil, err
		}
		if n > 0 {
			body = append([]byte(nil), body...)
			c.rbuf = append(c.rbuf[:0], c.rbuf[n:]...)
			return first, body, nil
		}
		m, err := c.nc.Read(c.tmp[:])
		c.rbuf = append(c.rbuf, c.tmp[:m]...)
		if err != nil && m == 0 {
			return 0, nil, err
		}
	}
	return 0, nil, fmt.Errorf("mqttc: no whole packet in %d reads", maxPackets)
}

// isClosed reports whether err means the peer closed or reset the connection.
func isClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ECONNABORTED)
}
