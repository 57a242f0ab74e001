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
