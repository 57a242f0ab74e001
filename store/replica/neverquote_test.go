package replica

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// A key that can never match is quoted in its line as every other value
// is (logval): cut at logval.Max bytes, and Redis's echo marker written with
// its comma escaped, so the line keeps its words after the key through the
// log's redaction (store.RedactArgs cuts a line at the marker) and stays
// short whatever the key's length (an operator's key, or one a script
// wrote: Redis keys reach 512 MB).
func TestNeverMatchKeyQuotedLikeAnyValue(t *testing.T) {
	r := New(kb)
	long := strings.Repeat("x", 100_000)
	for _, key := range []string{
		"guard:block:cidr:10.0.0.1/8" + logval.ArgsEcho + " 'secret'",
		"guard:block:ip:" + long,
		"guard:block:cert:" + long + logval.ArgsEcho,
		"guard:allow:cidr:" + long,
	} {
		err := r.Put(key, "typo", time.Time{})
		require.Error(t, err)
		line := store.RedactArgs("mosquitto-guard: " + err.Error())
		assert.Contains(t, line, "can never match", "the line's words after the key survive its redaction")
		assert.Less(t, len(line), 2*logval.Max+300, "bounded whatever the key's length")
	}
	assert.Equal(t, 0, r.Len())
}
