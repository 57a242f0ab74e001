package replica

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
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

// Under OperatorsOnly an automatic entry is skipped in the search, so that
// an operator's entry behind it is found: a wider range behind an automatic
// narrower one (atk52), and a claim's tracking form behind an automatic
// entry at the value itself (written by hand; the plugin writes automatic
// bans of such a claim by its form). store.Lookup reads them all alike.
func TestLookupOperatorsOnlySkipsToTheOperators(t *testing.T) {
	r := New(kb)
	require.NoError(t, r.Put("guard:block:cidr:2001:db8::/64", "auto: failed authentication", time.Time{}))
	require.NoError(t, r.Put("guard:block:cidr:2001:db8::/32", "abuse report", time.Time{}))
	require.NoError(t, r.Put("guard:block:clientid:sha256:dev", "auto: by hand", time.Time{}))
	require.NoError(t, r.Put("guard:block:clientid:"+keys.Tracking("sha256:dev"), "stolen", time.Time{}))
	now := time.Now()
	q := store.Query{IP: netip.MustParseAddr("2001:db8::1")}
	b := r.Lookup(q, now).Block
	require.NotNil(t, b)
	assert.Equal(t, "guard:block:cidr:2001:db8::/64", b.Key, "a CONNECT: the narrowest")
	q.OperatorsOnly = true
	b = r.Lookup(q, now).Block
	require.NotNil(t, b, "the re-check: the operator's wider range")
	assert.Equal(t, "guard:block:cidr:2001:db8::/32", b.Key)

	q = store.Query{ClientID: "sha256:dev", OperatorsOnly: true}
	b = r.Lookup(q, now).Block
	require.NotNil(t, b, "the re-check: the operator's ban of the form")
	assert.Equal(t, "guard:block:clientid:"+keys.Tracking("sha256:dev"), b.Key)
}
