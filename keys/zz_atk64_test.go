package keys

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// HOLDS. NormalizeIP's error after 2a46733 never holds a value of more
// than 200 bytes whole, nor netip's quoted rest, whatever netip's reason
// (every error form of ParseAddr: IPv4 fields, IPv6 groups, embedded
// IPv4, zones, garbage, invalid UTF-8, quotes and backslashes, the echo
// marker), and keeps netip's reason.
func TestAtk64NormalizeIPErrorsCut(t *testing.T) {
	tail := strings.Repeat("Z", 300)
	bodies := []string{
		"1.2.3.4" + tail, "1.2.3." + tail, "01.2.3.4" + tail, "256.1.1.1" + tail, "1..2.3" + tail,
		"::1" + tail, "1:2:3:4:5:6:7:8:9" + tail, "12345::" + tail, "::ffff:1.2.3" + tail,
		"1:2:3:4:5:6:7:1.2.3.4" + tail, "fe80::1%" + tail, "fe80::1%", "%" + tail, ":::" + tail,
		"\xff\xfe" + tail, `"\" (at "` + tail, "1.2.3.4, with args beginning with: " + tail,
		"1:2::3::4" + tail, ":" + tail, "1:" + tail, tail,
	}
	for _, s := range bodies {
		_, err := NormalizeIP(s)
		if err == nil {
			continue // a zone stripped: an address
		}
		msg := err.Error()
		assert.Less(t, len(msg), 500, "%q...: %d bytes", s[:min(len(s), 20)], len(msg))
		assert.NotContains(t, msg, tail, "%q...: the value whole", s[:min(len(s), 20)])
		assert.NotContains(t, msg, ", with args beginning with:", "%q...", s[:min(len(s), 20)])
		assert.NotContains(t, msg, "ParseAddr(", "%q...", s[:min(len(s), 20)])
	}
}
