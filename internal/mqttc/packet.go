package mqttc

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Control packet types (high nibble of the first byte).
const (
	typeConnect    = 1
	typeConnack    = 2
	typePublish    = 3
	typePuback     = 4
	typePubrec     = 5
	typePubrel     = 6
	typePubcomp    = 7
	typeSubscribe  = 8
	typeSuback     = 9
	typePingreq    = 12
	typePingresp   = 13
	typeDisconnect = 14
)

// maxRemaining is the largest remaining length four bytes can encode.
const maxRemaining = 268435455

var errMalformed = errors.New("mqttc: malformed packet")

// AppendVarint appends n as an MQTT variable byte integer (1 to 4 bytes):
// a packet's remaining length. Tests and the load generator that build raw
// packets of their own use it too.
func AppendVarint(b []byte, n int) ([]byte, error) {
	if n < 0 || n > maxRemaining {
		return b, fmt.Errorf("mqttc: length %d out of range 0..%d", n, maxRemaining)
	}
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if n == 0 {
			return b, nil
		}
	}
}

// decodeVarint decodes a variable byte integer at the start of b. used is 0
// when b ends before the integer does; a fifth byte is malformed.
func decodeVarint(b []byte) (n, used int, err error) {
	mult := 1
	for i := 0; i < 4; i++ {
		if i >= len(b) {
			return 0, 0, nil
		}
		n += int(b[i]&0x7f) * mult
		if b[i]&0x80 == 0 {
			return n, i + 1, nil
		}
		mult *= 128
	}
	return 0, 0, errMalformed
}

// appendString appends s with its two-byte length; MQTT cannot carry more
// than 65535 bytes, so longer strings are an error rather than truncated.
func appendString(b []byte, s string) ([]byte, error) {
	if len(s) > 0xffff {
		return b, fmt.Errorf("mqttc: string of %d bytes exceeds the MQTT limit of 65535", len(s))
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...), nil
}

// readString reads a length-prefixed string from the start of b.
func readString(b []byte) (s string, rest []byte, err error) {
	if len(b) < 2 {
		return "", nil, errMalformed
	}
	n := int(binary.BigEndian.Uint16(b))
	if len(b) < 2+n {
		return "", nil, errMalformed
	}
	return string(b[2 : 2+n]), b[2+n:], nil
}

// skipProps skips an MQTT 5 property set at the start of b.
func skipProps(b []byte) ([]byte, error) {
	n, used, err := decodeVarint(b)
	if err != nil || used == 0 || len(b) < used+n {
		return nil, errMalformed
	}
	return b[used+n:], nil
}

// packet frames a packet: first byte, remaining length, body.
func packet(first byte, body []byte) ([]byte, error) {
	b, err := AppendVarint([]byte{first}, len(body))
	if err != nil {
		return nil, err
	}
	return append(b, body...), nil
}

// splitPacket cuts the first whole packet off b. n is 0 when b does not hold
// a whole packet yet.
func splitPacket(b []byte) (first byte, body []byte, n int, err error) {
	if len(b) < 2 {
		return 0, nil, 0, nil
	}
	rl, used, err := decodeVarint(b[1:])
	if err != nil || used == 0 || len(b) < 1+used+rl {
		return 0, nil, 0, err
	}
	return b[0], b[1+used : 1+used+rl], 1 + used + rl, nil
}

// encodeConnect builds a CONNECT packet from o (defaults already applied).
func encodeConnect(o *Options) ([]byte, error) {
	var flags byte
	if !o.Persistent {
		flags |= 0x02
	}
	if o.Will != nil {
		flags |= 0x04
	}
	if o.Password != nil {
		flags |= 0x40
	}
	if o.Username != nil {
		flags |= 0x80
	}
	b, _ := appendString(nil, "MQTT")
	b = append(b, byte(o.Version), flags)
	b = binary.BigEndian.AppendUint16(b, o.KeepAlive)
	if o.Version == 5 {
		if o.SessionExpiry > 0 {
			b = append(b, 5, 0x11) // Session Expiry Interval
			b = binary.BigEndian.AppendUint32(b, o.SessionExpiry)
		} else {
			b = append(b, 0) // no properties
		}
	}
	var err error
	add := func(s string) {
		if err == nil {
			b, err = appendString(b, s)
		}
	}
	add(o.ClientID)
	if o.Will != nil {
		if o.Version == 5 {
			if o.Will.Delay > 0 {
				b = append(b, 5, 0x18) // Will Delay Interval
				b = binary.BigEndian.AppendUint32(b, o.Will.Delay)
			} else {
				b = append(b, 0) // no will properties
			}
		}
		add(o.Will.Topic)
		add(string(o.Will.Payload))
	}
	if o.Username != nil {
		add(*o.Username)
	}
	if o.Password != nil {
		add(*o.Password)
	}
	if err != nil {
		return nil, err
	}
	return packet(typeConnect<<4, b)
}

// parseConnack returns the return code (3.1.1) or reason code (5).
func parseConnack(body []byte, version int) (byte, error) {
	if len(body) < 2 {
		return 0, errMalformed
	}
	if version == 5 && len(body) > 2 {
		if _, err := skipProps(body[2:]); err != nil {
			return 0, err
		}
	}
	return body[1], nil
}

// encodeSubscribe builds a SUBSCRIBE packet for one topic filter.
func encodeSubscribe(id uint16, topic string, qos byte, version int) ([]byte, error) {
	b := binary.BigEndian.AppendUint16(nil, id)
	if version == 5 {
		b = append(b, 0)
	}
	b, err := appendString(b, topic)
	if err != nil {
		return nil, err
	}
	return packet(typeSubscribe<<4|0x02, append(b, qos))
}

// parseSuback returns the packet identifier and the first return or reason
// code of a SUBACK.
func parseSuback(body []byte, version int) (id uint16, code byte, err error) {
	if len(body) < 2 {
		return 0, 0, errMalformed
	}
	id = binary.BigEndian.Uint16(body)
	rest := body[2:]
	if version == 5 {
		if rest, err = skipProps(rest); err != nil {
			return 0, 0, err
		}
	}
	if len(rest) < 1 {
		return 0, 0, errMalformed
	}
	return id, rest[0], nil
}

// encodePublish builds a QoS 0 PUBLISH packet.
func encodePublish(topic string, payload []byte, version int) ([]byte, error) {
	b, err := appendString(nil, topic)
	if err != nil {
		return nil, err
	}
	if version == 5 {
		b = append(b, 0)
	}
	return packet(typePublish<<4, append(b, payload...))
}

// parsePublish decodes a PUBLISH; id is 0 for QoS 0.
func parsePublish(first byte, body []byte, version int) (topic string, payload []byte, qos byte, id uint16, err error) {
	qos = first >> 1 & 3
	topic, rest, err := readString(body)
	if err != nil {
		return "", nil, 0, 0, err
	}
	if qos > 0 {
		if len(rest) < 2 {
			return "", nil, 0, 0, errMalformed
		}
		id, rest = binary.BigEndian.Uint16(rest), rest[2:]
	}
	if version == 5 {
		if rest, err = skipProps(rest); err != nil {
			return "", nil, 0, 0, err
		}
	}
	return topic, append([]byte(nil), rest...), qos, id, nil
}
