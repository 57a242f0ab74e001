package replica

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// The broker's re-check after a reload asks with OperatorsOnly: automatic
// bans (reason "auto: ...") are left out, operators' bans still count, as
// kicks count them (atk51: an automatic ban of a NAT address dropped the
// devices behind it at SIGHUP).
func TestLookupOperatorsOnly(t *testing.T) {
	r := New(kb)
	require.NoError(t, r.Put("guard:block:ip:192.0.2.7", "auto: failed authentication", time.Time{}))
	require.NoError(t, r.Put("guard:block:clientid:dev", "auto: failed authentication", time.Time{}))
	q := store.Query{ClientID: "dev", IP: netip.MustParseAddr("192.0.2.7")}
	now := time.Now()
	require.NotNil(t, r.Lookup(q, now).Block, "a CONNECT: refused")
	q.OperatorsOnly = true
	assert.Nil(t, r.Lookup(q, now).Block, "the re-check: automatic bans left out")
	require.NoError(t, r.Put("guard:block:cidr:192.0.2.0/24", "stolen devices", time.Time{}))
	b := r.Lookup(q, now).Block
	require.NotNil(t, b, "an operator's ban still refuses")
	assert.Equal(t, "guard:block:cidr:192.0.2.0/24", b.Key)
}
