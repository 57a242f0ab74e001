package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"
)

// The connect loop speaks the two packets it needs itself, rather than
// through internal/mqttc, for two reasons: the latency it reports must start
// when CONNECT is written (mqttc.Dial times dial and CONNECT as one call),
// and the generator runs on a single core against the broker on another, so
// every microsecond it spends per connection (mqttc allocates a context, a
// timer and a 4 KiB buffer per Dial) is throughput it could not offer.
// propagation and kick, which are not about throughput, use mqttc.

// connectPacket is an MQTT 3.1.1 CONNECT with a clean session, keep-alive
// 60 s, and a username and password when user is not nil.
func connectPacket(clientID string, user, pass *string) []byte {
	return connectPacketKeepAlive(clientID, user, pass, 60)
}

// connectPacketKeepAlive is connectPacket with keep-alive ka seconds (0:
// none, the broker never times the connection out).
func connectPacketKeepAlive(clientID string, user, pass *string, ka uint16) []byte {
	str := func(b []byte, s string) []byte {
		b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
		return append(b, s...)
	}
	flags := byte(0x02)
	if user != nil {
		flags |= 0x80
	}
	if pass != nil {
		flags |= 0x40
	}
	body := str(nil, "MQTT")
	body = append(body, 4, flags, byte(ka>>8), byte(ka))
	body = str(body, clientID)
	if user != nil {
		body = str(body, *user)
	}
	if pass != nil {
		body = str(body, *pass)
	}
	pkt := []byte{0x10}
	for n := len(body); ; {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		pkt = append(pkt, d)
		if n == 0 {
			break
		}
	}
	return append(pkt, body...)
}

var disconnectPacket = []byte{0xe0, 0}

// errNoConnack: the broker closed the connection without a CONNACK.
var errNoConnack = errors.New("connection closed without connack")

// attempt connects from laddr, sends pkt, and waits for CONNACK. lat is the
// time from writing CONNECT to having read the whole CONNACK. An accepted
// connection is ended with DISCONNECT. code is the CONNACK return code.
func attempt(laddr, raddr *net.TCPAddr, pkt []byte, timeout time.Duration) (code byte, lat time.Duration, err error) {
	c, err := net.DialTCP("tcp", laddr, raddr)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return 0, 0, err
	}
	t0 := time.Now()
	if _, err := c.Write(pkt); err != nil {
		return 0, 0, fmt.Errorf("write connect: %w", err)
	}
	var ack [4]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, 0, errNoConnack
		}
		return 0, 0, fmt.Errorf("read connack: %w", err)
	}
	lat = time.Since(t0)
	if ack[0] != 0x20 || ack[1] != 2 {
		return 0, lat, fmt.Errorf("expected connack, got % x", ack)
	}
	if ack[3] == 0 {
		_, _ = c.Write(disconnectPacket)
	}
	return ack[3], lat, nil
}

// addrPool hands out the host addresses of an IPv4 prefix in turn, skipping
// the all-zeros and all-ones host parts.
type addrPool struct {
	base  uint32
	hosts uint32
}

func newAddrPool(cidr string) (*addrPool, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return nil, err
	}
	if !p.Addr().Is4() || p.Bits() > 30 {
		return nil, fmt.Errorf("source range %s: want an IPv4 prefix of /30 or wider", cidr)
	}
	p = p.Masked()
	a := p.Addr().As4()
	return &addrPool{base: binary.BigEndian.Uint32(a[:]), hosts: 1<<(32-p.Bits()) - 2}, nil
}

// tcpAddr returns the i-th address (modulo the pool's size), port 0.
func (p *addrPool) tcpAddr(i uint64) *net.TCPAddr {
	v := p.base + 1 + uint32(i%uint64(p.hosts))
	ip := make(net.IP, 4)
	binary.BigEndian.PutUint32(ip, v)
	return &net.TCPAddr{IP: ip}
}
