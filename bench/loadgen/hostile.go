package main

// The hostile half of `loadgen chaos hostile-storm`: clients that do not
// follow MQTT, or follow it to its limits. Bounded in time (d) and count
// (hostileMaxPerWorker attempts per worker, maxHalfOpen sockets held).

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
)

const hostileMaxPerWorker = 200_000

// HostileKind counts what the broker did with one kind of hostile client.
type HostileKind struct {
	Attempts int `json:"attempts"`
	Connack  int `json:"connack"`          // a CONNACK came back (any code)
	Accepted int `json:"accepted"`         // CONNACK 0: must never happen (no valid credentials)
	Closed   int `json:"closed_by_broker"` // EOF or reset from the broker
	Open     int `json:"left_open"`        // neither within the wait: the client closed
	DialErr  int `json:"dial_errors"`
}

type hostileStats struct {
	mu    sync.Mutex
	kinds map[string]*HostileKind
}

func (h *hostileStats) add(kind string, f func(k *HostileKind)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := h.kinds[kind]
	if k == nil {
		k = &HostileKind{}
		h.kinds[kind] = k
	}
	f(k)
}

// mqttString is a two-byte length and the bytes.
func mqttString(b []byte, s []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// remainingLength is n as a packet's remaining length; a hostile packet's
// body is never near MQTT's 256 MiB.
func remainingLength(n int) []byte {
	out, err := mqttc.AppendVarint(nil, n)
	if err != nil {
		panic(err)
	}
	return out
}

// rawConnect builds a CONNECT from parts, any of them odd.
func rawConnect(proto string, level, flags byte, id, user, pass []byte) []byte {
	body := mqttString(nil, []byte(proto))
	body = append(body, level, flags, 0, 60)
	body = mqttString(body, id)
	if flags&0x80 != 0 {
		body = mqttString(body, user)
	}
	if flags&0x40 != 0 {
		body = mqttString(body, pass)
	}
	return append(append([]byte{0x10}, remainingLength(len(body))...), body...)
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.UintN(256))
	}
	return b
}

var max16 = strings.Repeat("M", 65535)

// hostileKinds: name → the bytes to send (and how to end).
type hostileKind struct {
	name string
	// packet returns what to send; rst: close with a reset right after
	// sending; hold: keep the socket open (half-open) without reading.
	packet func(r *rand.Rand, n int) (pkt []byte, rst, hold bool)
}

var hostileKinds = []hostileKind{
	{"truncated", func(r *rand.Rand, n int) ([]byte, bool, bool) {
		p := connectPacket(fmt.Sprintf("trunc-%d", n), ptr("nobody"), ptr("x"))
		return p[:1+r.IntN(len(p)-1)], false, false
	}},
	{"huge-length", func(r *rand.Rand, n int) ([]byte, bool, bool) {
		// 268 435 455 bytes announced, a little sent.
		return append([]byte{0x10, 0xff, 0xff, 0xff, 0x7f}, randBytes(r, 1+r.IntN(2048))...), false, false
	}},
	{"bad-varint", func(r *rand.Rand, n int) ([]byte, bool, bool) {
		// A fifth continuation byte: malformed remaining length.
		return []byte{0x10, 0xff, 0xff, 0xff, 0xff, 0x01, 0, 4, 'M', 'Q', 'T', 'T'}, false, false
	}},
	{"max-fields", func(r *rand.Rand, n int) ([]byte, bool, bool) {
		// 65 535-byte client ID, username and password (the ID distinct each time).
		id := []byte(max16)
		copy(id, fmt.Sprintf("max-%d-", n))
		return rawConnect("MQTT", 4, 0xc2, id, []byte(max16), []byte(max16)), false, false
	}},
	{"odd-bytes", func(r *rand.Rand, n int) ([]byte, bool, bool) {
		switch n % 6 {
		case 0: // random bytes
			return randBytes(r, 1+r.IntN(512)), false, false
		case 1: // invalid UTF-8 and NUL in client ID and username
			return rawConnect("MQTT", 4, 0xc2, []byte("id\xff\x00\xc0"), []byte("u\xfe\x00"), []byte("p")), false, false
		case 2: // unknown protocol level
			return rawConnect("MQTT", byte(r.IntN(256)), 0xc2, []byte("lvl"), []byte("u"), []byte("p")), false, false
		case 3: // reserved flag bit set, password without username
			return rawConnect("MQTT", 4, 0x43, []byte("flags"), nil, []byte("p")), false, false
		case 4: // empty client ID without clean session
			return rawConnect("MQTT", 4, 0xc0, nil, []byte("u"), []byte("p")), false, false
		default: // a second CONNECT, a PUBLISH before CONNACK
			p := rawConnect("MQTT", 4, 0xc2, []byte("twice"), []byte("u"), []byte("p"))
			return append(append(p, p...), 0x30, 3, 0, 1, 't'), false, false
		}
	}},
	{"rst", func(r *rand.Rand, n int) ([]byte, bool, bool) {
		return connectPacket(fmt.Sprintf("rst-%d", n), ptr("nobody"), ptr("x")), true, false
	}},
	{"half-open", func(r *rand.Rand, n int) ([]byte, bool, bool) {
		if n%2 == 0 {
			return nil, false, true // connect, say nothing
		}
		return []byte{0x10, 0x20, 0, 4, 'M'}, false, true // a CONNECT begun, never finished
	}},
}

func ptr(s string) *string { return &s }

// hostileStorm runs workers hostile clients for d, from pool's addresses,
// holding at most maxHalfOpen sockets open; it returns counts per kind.
func hostileStorm(raddr *net.TCPAddr, pool *addrPool, d time.Duration, workers, maxHalfOpen int) map[string]*HostileKind {
	st := &hostileStats{kinds: map[string]*HostileKind{}}
	end := time.Now().Add(d)
	var nextIP atomic.Uint64
	var heldMu sync.Mutex
	var held []net.Conn
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 42))
			for n := 0; n < hostileMaxPerWorker && time.Now().Before(end); n++ {
				k := hostileKinds[(n+w)%len(hostileKinds)]
				pkt, rst, hold := k.packet(r, n*workers+w)
				if hold {
					heldMu.Lock()
					full := len(held) >= maxHalfOpen
					heldMu.Unlock()
					if full {
						continue
					}
				}
				c, err := net.DialTCP("tcp", pool.tcpAddr(nextIP.Add(1)), raddr)
				if err != nil {
					st.add(k.name, func(h *HostileKind) { h.Attempts++; h.DialErr++ })
					time.Sleep(time.Millisecond)
					continue
				}
				_ = c.SetDeadline(time.Now().Add(2 * time.Second))
				if len(pkt) > 0 {
					_, _ = c.Write(pkt)
				}
				if hold {
					heldMu.Lock()
					held = append(held, c)
					heldMu.Unlock()
					st.add(k.name, func(h *HostileKind) { h.Attempts++; h.Open++ })
					continue
				}
				if rst {
					_ = c.SetLinger(0)
					c.Close()
					st.add(k.name, func(h *HostileKind) { h.Attempts++; h.Open++ })
					continue
				}
				// What does the broker do? Wait up to 200 ms for a reply or a close.
				_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				var b [4]byte
				m, err := ioReadFullConn(c, b[:])
				_ = c.SetLinger(0)
				c.Close()
				st.add(k.name, func(h *HostileKind) {
					h.Attempts++
					switch {
					case m >= 4 && b[0] == 0x20:
						h.Connack++
						if b[3] == 0 {
							h.Accepted++
						}
					case err != nil && !isTimeout(err):
						h.Closed++
					default:
						h.Open++
					}
				})
			}
		}(w)
	}
	wg.Wait()
	heldMu.Lock()
	for _, c := range held {
		c.Close()
	}
	heldMu.Unlock()
	return st.kinds
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// hostileSummary is one line of counts, from the JSON form.
func hostileSummary(v any) string {
	m, ok := v.(map[string]any)
	if !ok {
		if k, ok := v.(map[string]*HostileKind); ok {
			m = map[string]any{}
			for n, h := range k {
				m[n] = map[string]any{"attempts": float64(h.Attempts), "accepted": float64(h.Accepted)}
			}
		} else {
			return ""
		}
	}
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	var parts []string
	for _, n := range names {
		h, _ := m[n].(map[string]any)
		a, _ := h["attempts"].(float64)
		acc, _ := h["accepted"].(float64)
		s := fmt.Sprintf("%s %.0f", n, a)
		if acc > 0 {
			s += fmt.Sprintf(" (**%.0f accepted**)", acc)
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}
