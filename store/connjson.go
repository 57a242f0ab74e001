package store

import (
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// The JSON of a Conn, written and read without reflection: the conflict
// worker writes one or two per connection event and reads back every entry
// of a client ID's hashes. The bytes are a public interface (guardctl and
// other brokers, also older ones in a rolling upgrade, read them), so
// appendConn writes exactly what jsonString (encoding/json without HTML
// escaping) writes, and parseConn reads exactly what json.Unmarshal reads:
// it takes the shape brokers write and hands anything else to
// json.Unmarshal. The fuzz tests hold both to it.

// appendConn appends c's JSON, as jsonString(c) writes it.
func appendConn(dst []byte, c *Conn) []byte {
	dst = append(dst, `{"id":`...)
	dst = appendJSONString(dst, c.ID)
	dst = append(dst, `,"instance":`...)
	dst = appendJSONString(dst, c.Instance)
	dst = append(dst, `,"broker":`...)
	dst = appendJSONString(dst, c.Broker)
	dst = append(dst, `,"principal":`...)
	dst = appendJSONString(dst, c.Principal)
	dst = append(dst, `,"ip":`...)
	dst = appendJSONString(dst, c.IP)
	dst = append(dst, `,"connected_ms":`...)
	dst = strconv.AppendInt(dst, c.ConnectedMs, 10)
	if c.DisconnectedMs != 0 {
		dst = append(dst, `,"disconnected_ms":`...)
		dst = strconv.AppendInt(dst, c.DisconnectedMs, 10)
	}
	return append(dst, '}')
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s quoted as encoding/json quotes a string with
// HTML escaping off: " and \ and control characters escaped, invalid UTF-8
// as \ufffd, U+2028 and U+2029 escaped, everything else as it is.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '"', '\\':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// plainID reports whether id is printable ASCII without " or \: then its
// JSON string and strconv.Quote's are both the id between quotes.
func plainID(id string) bool {
	for i := 0; i < len(id); i++ {
		if b := id[i]; b < 0x20 || b > 0x7e || b == '"' || b == '\\' {
			return false
		}
	}
	return true
}

// decodeConn reads one stored Conn as json.Unmarshal into a zero Conn
// does, error included.
func decodeConn(v string, c *Conn) error {
	if parseConn(v, c) {
		return nil
	}
	*c = Conn{}
	return json.Unmarshal([]byte(v), c)
}

// parseConn reads v when it is exactly what appendConn writes for strings
// with nothing to escape (no \, no control character, valid UTF-8) and
// integers of at most 18 digits; then c holds what json.Unmarshal would
// read, its strings sharing v's memory. Anything else returns false, c
// left in any state.
func parseConn(v string, c *Conn) bool {
	p := connParser{s: v}
	ok := p.lit(`{"id":`) && p.str(&c.ID) &&
		p.lit(`,"instance":`) && p.str(&c.Instance) &&
		p.lit(`,"broker":`) && p.str(&c.Broker) &&
		p.lit(`,"principal":`) && p.str(&c.Principal) &&
		p.lit(`,"ip":`) && p.str(&c.IP) &&
		p.lit(`,"connected_ms":`) && p.int(&c.ConnectedMs)
	if !ok {
		return false
	}
	c.DisconnectedMs = 0
	if p.lit(`,"disconnected_ms":`) && !p.int(&c.DisconnectedMs) {
		return false
	}
	return p.s == "}"
}

type connParser struct{ s string }

func (p *connParser) lit(l string) bool {
	if len(p.s) < len(l) || p.s[:len(l)] != l {
		return false
	}
	p.s = p.s[len(l):]
	return true
}

func (p *connParser) str(dst *string) bool {
	if len(p.s) == 0 || p.s[0] != '"' {
		return false
	}
	ascii := true
	for i := 1; i < len(p.s); i++ {
		switch b := p.s[i]; {
		case b == '"':
			v := p.s[1:i]
			if !ascii && !utf8.ValidString(v) {
				return false // json.Unmarshal replaces invalid bytes with U+FFFD
			}
			*dst, p.s = v, p.s[i+1:]
			return true
		case b == '\\' || b < 0x20:
			return false
		case b >= utf8.RuneSelf:
			ascii = false
		}
	}
	return false
}

// int reads -?(0|[1-9][0-9]{0,17}): a JSON integer that fits an int64.
func (p *connParser) int(dst *int64) bool {
	s := p.s
	neg := len(s) > 0 && s[0] == '-'
	if neg {
		s = s[1:]
	}
	n := 0
	for n < len(s) && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	if n == 0 || n > 18 || (n > 1 && s[0] == '0') {
		return false
	}
	var v int64
	for _, d := range s[:n] {
		v = v*10 + int64(d-'0')
	}
	if neg {
		v = -v
	}
	*dst, p.s = v, s[n:]
	return true
}
