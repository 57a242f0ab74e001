package keys

import (
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestListKeysAreExact(t *testing.T) {
	b := Builder{Prefix: "guard:"}
	long := strings.Repeat("x", 20000)
	cases := []struct {
		scope Scope
		value string
		want  string
	}{
		{ClientID, "dev-1", "guard:block:clientid:dev-1"},
		{ClientID, "a:b", "guard:block:clientid:a:b"},
		{ClientID, "*", "guard:block:clientid:*"},
		{ClientID, "with space\nand newline", "guard:block:clientid:with space\nand newline"},
		{Username, "", "guard:block:username:"},
		{IP, "192.0.2.1", "guard:block:ip:192.0.2.1"},
		{CIDR, "203.0.113.0/24", "guard:block:cidr:203.0.113.0/24"},
		{ClientID, long, "guard:block:clientid:" + long},
	}
	for _, c := range cases {
		got := b.List(Block, c.scope, c.value)
		assert.Equal(t, c.want, got)
		kind, scope, value, ok := b.Split(got)
		require.True(t, ok, "split %q", got)
		assert.Equal(t, Block, kind)
		assert.Equal(t, c.scope, scope)
		assert.Equal(t, c.value, value, "round trip must be exact")
	}
	// Different values never share a key, even across scopes.
	assert.NotEqual(t, b.List(Block, ClientID, "ip:1.2.3.4"), b.List(Block, IP, "1.2.3.4"))
}

func TestSplitRejectsForeignKeys(t *testing.T) {
	b := Builder{Prefix: "guard:"}
	for _, k := range []string{"other:block:ip:1.2.3.4", "guard:user:bob", "guard:block:country:FR", "guard:block", "guard:block:ip"} {
		_, _, _, ok := b.Split(k)
		assert.False(t, ok, k)
	}
}

func TestNormalizeIP(t *testing.T) {
	cases := map[string]string{
		"192.0.2.7":              "192.0.2.7",
		"::ffff:192.0.2.7":       "192.0.2.7",
		"2001:DB8:0:0:0:0:0:1":   "2001:db8::1",
		"2001:db8::1%eth0":       "2001:db8::1",
		"::1":                    "::1",
		"2001:0db8:0000::0:0001": "2001:db8::1",
	}
	for in, want := range cases {
		a, err := NormalizeIP(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, a.String(), in)
	}
	for _, bad := range []string{"", "host.example", "1.2.3", "1.2.3.4:5"} {
		_, err := NormalizeIP(bad)
		assert.Error(t, err, bad)
	}
}

func TestParseIPKey(t *testing.T) {
	for _, good := range []string{"192.0.2.7", "0.0.0.0", "::1", "::", "2001:db8::1", "fe80::1", "2001:db8:0:1:1:1:1:1", "::102:304"} {
		a, err := ParseIPKey(good)
		require.NoError(t, err, good)
		assert.Equal(t, good, a.String())
		n, err := NormalizeIP(good)
		require.NoError(t, err)
		assert.Equal(t, n, a, "a canonical key matches the client address it names")
	}
	// Addresses written in another form: the error names the canonical one.
	for in, want := range map[string]string{
		"0:0:0:0:0:0:0:1":        "::1",
		"::ffff:1.2.3.4":         "1.2.3.4",
		"::FFFF:1.2.3.4":         "1.2.3.4",
		"2001:DB8::1":            "2001:db8::1",
		"2001:db8:0:0:0:0:0:1":   "2001:db8::1",
		"2001:0db8::1":           "2001:db8::1",
		"2001:db8::1%eth0":       "2001:db8::1",
		"2001:db8:0:1:1:1:1:1%x": "2001:db8:0:1:1:1:1:1",
	} {
		_, err := ParseIPKey(in)
		require.Error(t, err, in)
		assert.Equal(t, `keys: bad IP address "`+in+`": expected the canonical address `+want, err.Error())
	}
	// No address at all (netip refuses IPv4 octets with leading zeros: 010
	// is 8 to inet_aton, so no canonical form is guessed).
	for _, bad := range []string{"", "not-an-ip", "127.000.0.1", "1.2.3", "1.2.3.4:5", "1.2.3.4/32", " 1.2.3.4", "1.2.3.4\n", "[::1]"} {
		_, err := ParseIPKey(bad)
		require.Error(t, err, "%q", bad)
		assert.Contains(t, err.Error(), "expected an address such as 192.0.2.1 or 2001:db8::1", "%q", bad)
	}
}

func FuzzParseIPKey(f *testing.F) {
	for _, s := range []string{"192.0.2.1", "::1", "0:0:0:0:0:0:0:1", "::ffff:1.2.3.4", "2001:DB8::1", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseIPKey(s)
		if err != nil {
			return
		}
		// Accepted: exactly the form the plugin looks up.
		n, nerr := NormalizeIP(s)
		if nerr != nil || n != a || a.String() != s {
			t.Fatalf("ParseIPKey accepted %q, which a client address normalises to %v (%v)", s, n, nerr)
		}
	})
}

func TestPrefixes(t *testing.T) {
	v4 := Prefixes(netip.MustParseAddr("203.0.113.77"))
	require.Len(t, v4, 33)
	assert.Equal(t, "203.0.113.77/32", v4[0].String())
	assert.Equal(t, "203.0.113.0/24", v4[8].String())
	assert.Equal(t, "0.0.0.0/0", v4[32].String())
	v6 := Prefixes(netip.MustParseAddr("2001:db8::1"))
	require.Len(t, v6, 129)
	assert.Equal(t, "2001:db8::/32", v6[96].String())
}

func TestParseCIDR(t *testing.T) {
	good := map[string]string{
		"203.0.113.0/24": "203.0.113.0/24",
		"2001:db8::/32":  "2001:db8::/32",
		"10.0.0.0/8":     "10.0.0.0/8",
		"0.0.0.0/0":      "0.0.0.0/0",
		"192.0.2.1/32":   "192.0.2.1/32",
	}
	for in, want := range good {
		p, err := ParseCIDR(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, p.String())
	}
	for _, bad := range []string{"203.0.113.5/24", "203.0.113.0", "2001:DB8::/32", "2001:db8:0::/32", "1.2.3.0/33", "nonsense", "::ffff:1.2.3.0/120"} {
		_, err := ParseCIDR(bad)
		assert.Error(t, err, bad)
	}
}

func FuzzSplitRoundTrip(f *testing.F) {
	f.Add("dev-1")
	f.Add("a:b:c")
	f.Add("*?[]\n")
	f.Fuzz(func(t *testing.T, v string) {
		b := Builder{Prefix: "guard:"}
		for _, sc := range Scopes {
			_, scope, value, ok := b.Split(b.List(Allow, sc, v))
			if !ok || scope != sc || value != v {
				t.Fatalf("round trip of %q in %s failed", v, sc)
			}
		}
	})
}

func TestGlobEscapeIsByteExact(t *testing.T) {
	assert.Equal(t, `guard:`, GlobEscape("guard:"))
	assert.Equal(t, `g\[1\]\*\?\\:`, GlobEscape(`g[1]*?\:`))
	assert.Equal(t, "\xff\\*", GlobEscape("\xff*"), "invalid UTF-8 is kept as it is")
}

func TestTracking(t *testing.T) {
	at := strings.Repeat("a", TrackingMax)
	over := at + "b"
	long := strings.Repeat("x", 65535)
	hashOf := func(s string) string {
		sum := sha256.Sum256([]byte(s))
		return "sha256:" + hex.EncodeToString(sum[:])
	}
	for _, s := range []string{"", "dev-1", "a:b*", "line\nbreak", "<anonymous>", "sha256", at} {
		assert.Equal(t, s, Tracking(s), "kept as it is: %.40q", s)
	}
	for _, s := range []string{over, long, "sha256:", "sha256:abc", hashOf(long)} {
		got := Tracking(s)
		assert.Equal(t, hashOf(s), got, "hashed: %.40q", s)
		assert.Len(t, got, 71)
	}
	assert.Equal(t, Tracking(long), Tracking(strings.Repeat("x", 65535)), "the same value, the same form")
	assert.NotEqual(t, Tracking(long), Tracking(long[1:]))
	assert.NotEqual(t, Tracking(long), Tracking(Tracking(long)), "a short value never poses as the hash of a long one")
	// One allocation, its result: the value is hashed in place (a copy of
	// it first was 64 KB of garbage a call for a stranger's long strings).
	assert.LessOrEqual(t, testing.AllocsPerRun(20, func() { Tracking(long) }), 1.0)
	assert.Zero(t, testing.AllocsPerRun(20, func() { Tracking(at) }))
}

func TestTrackingKeys(t *testing.T) {
	b := Builder{Prefix: "guard:"}
	long := strings.Repeat("L", 65535)
	h := Tracking(long)
	assert.Equal(t, "guard:conn:"+h, b.Conn(long))
	assert.Equal(t, "guard:seen:"+h, b.Seen(long))
	assert.Equal(t, "guard:takeoverconns:"+h, b.TakeoverConns(long))
	assert.Equal(t, b.Conn(long), b.ConnTracked(h), "a brokerconns member names its conn key")
	for _, k := range []string{b.Conn(long), b.Seen(long), b.TakeoverConns(long)} {
		assert.LessOrEqual(t, len(k), len("guard:takeoverconns:")+TrackingMax)
	}
	// Short client IDs keep their readable keys.
	assert.Equal(t, "guard:conn:dev-1", b.Conn("dev-1"))
	assert.Equal(t, "guard:seen:a:b", b.Seen("a:b"))
	assert.Equal(t, "guard:takeoverconns:dev-1", b.TakeoverConns("dev-1"))
	// The operator-facing keys name every value exactly.
	assert.Equal(t, "guard:block:clientid:"+long, b.List(Block, ClientID, long))
	assert.Equal(t, "guard:allow:username:"+long, b.List(Allow, Username, long))
}

func TestCertID(t *testing.T) {
	der := []byte("not really DER, but any bytes hash")
	id := CertID(der)
	assert.True(t, IsCertID(id))
	upper := strings.ToUpper(id)
	var pairs []string
	for i := 0; i < len(upper); i += 2 {
		pairs = append(pairs, upper[i:i+2])
	}
	for _, in := range []string{id, upper, strings.Join(pairs, ":"), "sha256 Fingerprint=" + strings.Join(pairs, ":"), " " + id + "\n"} {
		got, err := ParseCertID(in)
		require.NoError(t, err, in)
		assert.Equal(t, id, got, in)
	}
	for _, bad := range []string{"", id[:63], id + "0", strings.Replace(id, id[:1], "g", 1), "cert.pem"} {
		_, err := ParseCertID(bad)
		assert.Error(t, err, bad)
		assert.False(t, IsCertID(bad), bad)
	}
	assert.True(t, Cert.Proof(), "a verified certificate is proof")
	assert.True(t, Exempts(Cert, IP), "an allow entry on a certificate lifts an IP ban")
	assert.False(t, Exempts(ClientID, Cert), "a claimed client ID does not lift a certificate ban")
	s, err := ParseScope("cert")
	require.NoError(t, err)
	assert.Equal(t, Cert, s)
}

func TestFailKey(t *testing.T) {
	long := strings.Repeat("u", 300)
	cases := []struct {
		scope      Scope
		ip         string
		prefix     int
		id, user   string
		wantScope  Scope
		wantValue  string
		wantCounts bool
	}{
		{IP, "192.0.2.7", 64, "c", "u", IP, "192.0.2.7", true},
		{IP, "::ffff:192.0.2.7", 64, "c", "u", IP, "192.0.2.7", true}, // mapped counts as IPv4
		{IP, "2001:db8:1:2:3:4:5:6", 64, "c", "u", CIDR, "2001:db8:1:2::/64", true},
		{IP, "2001:db8:1:2:3:4:5:6", 48, "c", "u", CIDR, "2001:db8:1::/48", true},
		{IP, "2001:db8:1:2:3:4:5:6", 128, "c", "u", IP, "2001:db8:1:2:3:4:5:6", true},
		{IP, "", 64, "c", "u", "", "", false},
		{ClientID, "192.0.2.7", 64, "dev 1", "u", ClientID, "dev 1", true},
		{ClientID, "", 64, long, "u", ClientID, Tracking(long), true},
		{Username, "", 64, "c", long, Username, Tracking(long), true},
		{CIDR, "192.0.2.7", 64, "c", "u", "", "", false},
	}
	for _, c := range cases {
		var ip netip.Addr
		if c.ip != "" {
			ip = netip.MustParseAddr(c.ip)
		}
		s, v, ok := FailKey(c.scope, ip, c.prefix, c.id, c.user)
		assert.Equal(t, c.wantCounts, ok, "%s %s", c.scope, c.ip)
		assert.Equal(t, c.wantScope, s, "%s %s", c.scope, c.ip)
		assert.Equal(t, c.wantValue, v, "%s %s", c.scope, c.ip)
	}
}

// Hashed says exactly when Tracking hashes: over TrackingMax bytes, or
// starting with "sha256:" (kicks use it to hash only such claims).
func TestHashedIsWhenTrackingHashes(t *testing.T) {
	for _, s := range []string{"", "dev", strings.Repeat("x", TrackingMax), strings.Repeat("x", TrackingMax+1), "sha256:", "sha256:dev", "SHA256:dev", "xsha256:"} {
		assert.Equal(t, Tracking(s) != s, Hashed(s), "%.20q", s)
		if Hashed(s) {
			assert.True(t, IsTrackingHash(Tracking(s)))
		}
	}
}
