package keys

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The parse errors quote the value refused as log lines quote any value
// (logval): cut past 200 bytes, so a key or a guardctl argument of any
// length gives a short error; netip's reason is kept, its copies of the
// value dropped.
func TestParseErrorsQuoteTheValueCut(t *testing.T) {
	long := strings.Repeat("9", 50_000)
	for _, f := range []func(string) error{
		func(s string) error { _, err := NormalizeIP(s); return err },
		func(s string) error { _, err := ParseIPKey(s); return err },
		func(s string) error { _, err := ParseCIDR(s); return err },
		func(s string) error { _, err := ParseCertID(s); return err },
		func(s string) error { _, err := ParseScope(s); return err },
	} {
		err := f(long + ":x")
		require.Error(t, err)
		assert.Less(t, len(err.Error()), 500, err.Error()[:100])
		assert.Contains(t, err.Error(), "(50002 bytes)")
	}
	_, err := NormalizeIP("2001:db8::g")
	assert.EqualError(t, err, `keys: bad IP address "2001:db8::g": each colon-separated field must have at least one digit`)
	_, err = NormalizeIP(`abc"): x`)
	assert.EqualError(t, err, `keys: bad IP address "abc\"): x": unexpected character, want colon`)
	_, err = NormalizeIP("127.000.0.1")
	assert.EqualError(t, err, `keys: bad IP address "127.000.0.1": IPv4 field has octet with leading zero`)
}
