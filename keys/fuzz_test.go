package keys

import (
	"net/netip"
	"testing"
)

// FuzzParseCIDR checks that a cidr key is accepted only in the one form the
// plugin looks ranges up in: canonical, host bits zero, never IPv4-mapped;
// and that every such range is among keys.Prefixes of its own first
// address, so an accepted key can match a client.
// Run it with: go test -run '^$' -fuzz '^FuzzParseCIDR$' ./keys
func FuzzParseCIDR(f *testing.F) {
	for _, s := range []string{"203.0.113.0/24", "2001:db8::/32", "0.0.0.0/0", "::/0", "192.0.2.1/32",
		"203.0.113.5/24", "::ffff:1.2.3.0/120", "::ffff:0.0.0.0/95", "1.2.3.0/33", "2001:DB8::/32", "1.2.3.0/024", "fe80::%eth0/64", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseCIDR(s)
		if err != nil {
			if len(err.Error()) > 200+4*len(s) {
				t.Fatalf("error of %d bytes for an input of %d", len(err.Error()), len(s))
			}
			return
		}
		if !p.IsValid() || p.String() != s || p.Masked() != p || p.Addr().Is4In6() || p.Addr().Zone() != "" {
			t.Fatalf("ParseCIDR accepted %q as %v, not its canonical form", s, p)
		}
		a, err := NormalizeIP(p.Addr().String())
		if err != nil {
			t.Fatalf("first address of %v: %v", p, err)
		}
		found := false
		for _, q := range Prefixes(a) {
			found = found || q == p
		}
		if !found {
			t.Fatalf("accepted range %v is not among the prefixes looked up for %v", p, a)
		}
	})
}

// FuzzNormalizeIP checks that the form a client address is looked up in is
// stable (normalising it again changes nothing), has no zone and no
// IPv4-mapped form, and is what ParseIPKey accepts.
// Run it with: go test -run '^$' -fuzz '^FuzzNormalizeIP$' ./keys
func FuzzNormalizeIP(f *testing.F) {
	for _, s := range []string{"192.0.2.1", "::1", "::ffff:192.0.2.1", "fe80::1%eth0", "2001:DB8:0::1", "::ffff:0:0", "1.2.3", "127.000.0.1", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := NormalizeIP(s)
		if err != nil {
			return
		}
		if a.Zone() != "" || a.Is4In6() || !a.IsValid() {
			t.Fatalf("NormalizeIP(%q) = %v: zone or mapped form kept", s, a)
		}
		again, err := NormalizeIP(a.String())
		if err != nil || again != a {
			t.Fatalf("NormalizeIP(%q) = %v, but NormalizeIP(%v) = %v, %v", s, a, a, again, err)
		}
		if k, err := ParseIPKey(a.String()); err != nil || k != a {
			t.Fatalf("ParseIPKey refuses the normal form %v of %q: %v", a, s, err)
		}
		if want, _ := netip.ParseAddr(s); want.Unmap().WithZone("") != a {
			t.Fatalf("NormalizeIP(%q) = %v, not the address itself", s, a)
		}
	})
}
