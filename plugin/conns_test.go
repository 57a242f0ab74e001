package plugin

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// Issue 12: a live connection's record is 80 bytes (Go's size class 80).
// Before: 112 (a netip.Addr of 24 bytes, its client ID and username two
// strings, the tracking connection a deferred one took over and the
// connection it took over in every record), and before that 256 and more
// (a whole store.Conn, a time.Time, the certificate's strings in every
// record), with the tracking connection's ID and IP strings beside it.
func TestLiveConnBytes(t *testing.T) {
	assert.LessOrEqual(t, unsafe.Sizeof(liveConn{}), uintptr(80))
	assert.Equal(t, uintptr(0), unsafe.Sizeof(liveConn{})%8)
}

// A record gives back the client ID and username it was admitted with: as
// cgo makes them (IDs: the client's strings, no copy) or not (a copy), an
// empty client ID, no username, an empty one.
func TestLiveConnIDs(t *testing.T) {
	g, _, _, _ := newGuard(t, nil)
	ip := netip.MustParseAddr("192.0.2.1")
	for i, c := range []Client{
		cl(1, "192.0.2.1", "device-1", "alice", ""),
		{ClientID: "device-2", Username: "bob", HasUsername: true},
		{ClientID: "device-3", Username: "bob", HasUsername: true, IDs: "device-3bobby"}, // not theirs: not kept
		{ClientID: "", Username: "carol", HasUsername: true},
		{ClientID: "device-5"},
		{ClientID: "device-6", Username: "", HasUsername: true},
		{},
	} {
		c.Handle = uintptr(100 + i)
		g.admit(&c, ip, false, false)
		g.mu.Lock()
		lc := g.conns.get(c.Handle)
		g.mu.Unlock()
		require.NotNil(t, lc)
		assert.Equal(t, c.ClientID, lc.clientID, "%d", i)
		assert.Equal(t, c.Username, lc.username(), "%d", i)
		assert.Equal(t, c.HasUsername, lc.hasUsername, "%d", i)
		if c.IDs != "" && c.IDs == c.ClientID+c.Username {
			assert.Same(t, unsafe.StringData(c.IDs), unsafe.StringData(lc.clientID), "%d: cgo's string kept, not copied", i)
		}
	}
	assert.Empty(t, (&liveConn{clientID: "x"}).username(), "a record set otherwise has no username")
}

// A record gives back the IP it was admitted with, whatever its form: the
// plain ones from its 16 bytes, the others (none, a zone, IPv4-mapped) from
// its connRare.
func TestLiveConnIP(t *testing.T) {
	for _, ip := range []netip.Addr{
		netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("::"),
		netip.MustParseAddr("0.0.0.0"), netip.MustParseAddr("::ffff:192.0.2.1"), netip.MustParseAddr("fe80::1%eth0"), {},
	} {
		g, _, _, _ := newGuard(t, nil)
		g.admit(&Client{Handle: 1, ClientID: "dev", Address: "somewhere"}, ip, false, false)
		lc := g.conns.get(1)
		require.NotNil(t, lc)
		assert.Equal(t, ip, lc.ipAddr(), "%v", ip)
		_, plain := packIP(ip)
		assert.Equal(t, !plain, lc.connRare != noRare, "%v: a connRare only for an IP the 16 bytes cannot keep", ip)
	}
}

// claimRecorder is a conflict store whose claims succeed and are recorded.
type claimRecorder struct {
	failingClaims
	mu     sync.Mutex
	claims []store.Conn
}

func (r *claimRecorder) Claim(_ context.Context, _ string, c store.Conn, _ store.Brokers) (*store.Conn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.claims = append(r.claims, c)
	return nil, nil
}

// The tracking connection a record rebuilds (connOf: at DISCONNECT, at a
// takeover, at a deferred connection's confirmation) is the one claimed
// and recorded at admit, field for field: for a username, a certificate
// (its principal), and an address that is not an IP (kept as it came).
func TestConnOfIsTheAdmittedConn(t *testing.T) {
	rec := &claimRecorder{}
	g, _ := denyBroker(t, rec, "broker-a")
	cert := certCl(2, "192.0.2.2", "cam", "bob", "bob-pw", "der-2", "CN="+strings.Repeat("x", 300))
	unix := cl(3, "/run/mosquitto.sock", "door-3", "alice", "alice-pw")
	v6 := cl(4, "::ffff:192.0.2.4", "door-4", "alice", "alice-pw")
	for i, c := range []Client{cl(1, "192.0.2.1", "door", "alice", "alice-pw"), cert, unix, v6} {
		require.Equal(t, Allow, g.Authenticate(c).Result, c.ClientID)
		rec.mu.Lock()
		require.Len(t, rec.claims, i+1)
		claimed := rec.claims[i]
		rec.mu.Unlock()
		g.mu.Lock()
		lc := g.conns.get(c.Handle)
		g.mu.Unlock()
		assert.Equal(t, claimed, g.tracker.StoreConn(g.connOf(lc)), c.ClientID)
		assert.Equal(t, c.CertID, lc.certID)
	}
	assert.Equal(t, "/run/mosquitto.sock", rec.claims[2].IP)
	assert.Equal(t, "192.0.2.4", rec.claims[3].IP)
	assert.Len(t, g.conns.get(2).certSubject, 200, "a subject is kept as far as a log line shows it")
	assert.Same(t, noRare, g.conns.get(1).connRare, "a client without a certificate has no record of its own")
	assert.Empty(t, noRare.certID+noRare.certSubject+noRare.addr, "noRare is never written")
	// Distinct connections, distinct IDs.
	assert.NotEqual(t, rec.claims[0].ID, rec.claims[1].ID)
}

// The broker's address is taken for ip's canonical text only where it is
// that text: what tracking records and the known sources' keys are the same
// as formatting ip gives, for every form of address the broker may report.
func TestIPTextIsCanonical(t *testing.T) {
	for _, addr := range []string{
		"192.0.2.1", "0.0.0.0", "255.255.255.255", "127.1.200.3",
		"::ffff:192.0.2.1", "::FFFF:192.0.2.1", "2001:db8::1", "2001:DB8:0:0:0:0:0:1",
		"fe80::1%eth0", "::1", "::", "::ffff:0.0.0.0", "64:ff9b::192.0.2.1", "::192.0.2.1",
	} {
		ip, err := keys.NormalizeIP(addr)
		require.NoError(t, err, addr)
		want := ip.String()
		assert.Equal(t, want, addrString(&Client{Address: addr}, ip), addr)
		assert.Equal(t, want, string(appendIPText(nil, ip, addr)), addr)
		assert.Equal(t, "ip:"+want, string(appendIPText([]byte("ip:"), ip, addr)), addr)
	}
	assert.Equal(t, "host.example", addrString(&Client{Address: "host.example"}, netip.Addr{}), "not an IP: the broker's text")
	ip := netip.MustParseAddr("192.0.2.1")
	assert.Equal(t, "ip:192.0.2.1", string(appendIPText([]byte("ip:"), ip, "")), "no text given: formatted")
}
