package keys

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// atk53: a README audit (commit 648f3ea).

// Was a DEFECT of the README (a figure, fixed there): it said a
// stranger's failures with 65 535-byte claims "write 71-byte key names";
// 71 bytes is the hashed form (keys.go, "sha256:" and 64 hex digits), the
// value part; the key names are 92 (guard:block:clientid:), 95
// (guard:offences:clientid:) and 96 (rate:guard:fail:clientid:) bytes with
// the default prefix. The README now says at most 96.
func TestAtk53HashedFailureKeyNamesAtMost96Bytes(t *testing.T) {
	long := strings.Repeat("x", 65535)
	for _, scope0 := range []Scope{ClientID, Username} {
		scope, value, ok := FailKey(scope0, netip.MustParseAddr("192.0.2.1"), 64, long, long)
		require.True(t, ok)
		require.Len(t, value, 71, "the hashed form")
		b := Builder{Prefix: "guard:"}
		names := map[string]string{
			"block":    b.List(Block, scope, value),
			"offences": b.Offences(scope, value),
			"rate":     "rate:" + b.Fail(scope, value),
		}
		for what, k := range names {
			t.Logf("%s: %d bytes (%s...)", what, len(k), k[:30])
			assert.LessOrEqual(t, len(k), 96, "README: 65 535-byte claims write key names of at most 96 bytes (%s)", what)
		}
	}
}

// Was a DEFECT of the README (fixed there): its rows of
// guard:known:<username> and rate:guard:fail:anysource:username:<username>
// did not say that these keys (and the `clientid:` members of the known
// set) take the tracking form, as guard:throttle:username: did: a username
// over 256 bytes, or one starting with "sha256:", is not in its key's name.
// They now do, and "What a client can make Redis keep" lists them.
func TestAtk53KnownAndAnySourceKeysNameTheTrackingForm(t *testing.T) {
	b := Builder{Prefix: "guard:"}
	for _, u := range []string{strings.Repeat("u", 300), "sha256:plant-7"} {
		assert.Equal(t, "guard:known:"+Tracking(u), b.Known(u), "README: guard:known:<username>, in its tracking form")
		assert.Equal(t, "guard:fail:anysource:username:"+Tracking(u), b.ThrottleCount(u),
			"README: rate:guard:fail:anysource:username:<username>, in its tracking form")
		assert.Len(t, b.Known(u), len("guard:known:")+71)
	}
	assert.Equal(t, "guard:known:plant-7", b.Known("plant-7"), "a short username is itself")
}
