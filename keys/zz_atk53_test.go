package keys

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// atk53: a README audit (commit 648f3ea).

// DEFECT (a figure). README line 243-244: an automatic ban under
// fail_scopes clientid or username names a long value by its hashed
// tracking form, "as do its `guard:offences:` and `rate:guard:fail:` keys,
// so that a stranger's failures with 65 535-byte claims write 71-byte key
// names". 71 bytes is the hashed form (keys.go:208, "sha256:" and 64 hex
// digits), the value part; the key names the failures write are 92
// (guard:block:clientid:), 95 (guard:offences:clientid:) and 96
// (rate:guard:fail:clientid:, redis_rate's prefix in front) bytes with
// the default prefix: bounded, but not 71.
func TestAtk53HashedFailureKeyNamesAre71Bytes(t *testing.T) {
	long := strings.Repeat("x", 65535)
	scope, value, ok := FailKey(ClientID, netip.MustParseAddr("192.0.2.1"), 64, long, "")
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
		assert.LessOrEqual(t, len(k), 71, "README: 65 535-byte claims write 71-byte key names (%s)", what)
	}
}

// DEFECT. README line 222: "guard:known:<username> | sorted set of the
// sources (`ip:<ip>`, `clientid:<id>`) that authenticated as the
// username", and line 226: "rate:guard:fail:anysource:username:<username>";
// neither row (unlike guard:throttle:username:, line 221: "a username over
// 256 bytes by its tracking form"), nor "What a client can make Redis keep"
// (line 235-236), says these keys and the `clientid:` members
// (plugin/known.go:173, sourceTracked) take the tracking form: a username
// over 256 bytes, or one starting with "sha256:", is not in its key's name
// (keys.go:170-185); `redis-cli ZRANGE guard:known:<username>` finds
// nothing for such a user.
func TestAtk53KnownAndAnySourceKeysNameTheUsername(t *testing.T) {
	b := Builder{Prefix: "guard:"}
	for _, u := range []string{strings.Repeat("u", 300), "sha256:plant-7"} {
		assert.Equal(t, "guard:known:"+u, b.Known(u), "README: guard:known:<username>")
		assert.Equal(t, "guard:fail:anysource:username:"+u, b.ThrottleCount(u),
			"README: rate:guard:fail:anysource:username:<username>")
	}
}
