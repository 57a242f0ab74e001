package replica

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Issue 12: a lookup that matches nothing, the common CONNECT, allocates
// nothing (it built six key strings before); a match still gives the key
// and value it always did.
func TestLookupWithoutMatchAllocatesNothing(t *testing.T) {
	r := New(kb)
	require.NoError(t, r.Put("guard:block:ip:198.51.100.7", "x", time.Time{}))
	require.NoError(t, r.Put("guard:block:cidr:203.0.113.0/24", "y", time.Time{}))
	now := time.Now()
	miss := q("dev-1", "192.0.2.1", "alice")
	miss.Cert = "ab12"
	assert.Zero(t, testing.AllocsPerRun(100, func() { r.Lookup(miss, now) }))

	a := r.Lookup(q("dev-1", "198.51.100.7", "alice"), now)
	require.NotNil(t, a.Block)
	assert.Equal(t, "guard:block:ip:198.51.100.7", a.Block.Key)
	assert.Equal(t, "198.51.100.7", a.Block.Value)
	a = r.Lookup(q("dev-1", "203.0.113.9", "alice"), now)
	require.NotNil(t, a.Block)
	assert.Equal(t, "guard:block:cidr:203.0.113.0/24", a.Block.Key)
}
