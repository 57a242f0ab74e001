package conflicts

import (
	"context"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// addrConn is c described as the plugin describes a connection again at
// its DISCONNECT (connOf): its IP as 16 bytes (Addr), no text.
func addrConn(c Conn) Conn {
	c.Addr, c.IP = netip.MustParseAddr(c.IP), ""
	return c
}

// Issue 12: a connection described by its IP's 16 bytes (Conn.Addr) is
// recorded as the one described by the IP's text, byte for byte: alone
// (StoreConn), in a batch among connections described either way
// (storeConns, which cuts the IP texts it formats from the batch's one
// string: still two allocations a batch), and with no address at all.
func TestConnAddrRecordsTheText(t *testing.T) {
	tr, clk, _ := tracker(t, newMemStore(), testOptions())
	var text, mixed []event
	for i, ip := range []string{"192.0.2.1", "10.0.0.255", "255.255.255.255", "2001:db8::7", "::1", "fe80::1:2:3:4",
		"2001:db8:1234:5678:9abc:def0:1234:5678", "::ffff:192.0.2.1", "/run/mosquitto.sock", ""} {
		c := tr.NewConn("alice", ip, clk.now())
		c.Seq = uint64(1) << (6 * i) // IDs of several lengths
		text = append(text, event{kind: evDisconnect, clientID: "dev", conn: c})
		if a, err := netip.ParseAddr(ip); err == nil && a.String() == ip {
			c = addrConn(c)
			assert.Equal(t, tr.StoreConn(text[i].conn), tr.StoreConn(c), ip)
		}
		mixed = append(mixed, event{kind: evDisconnect, clientID: "dev", conn: c})
	}
	want := append(tr.storeConns(text)[:0:0], tr.storeConns(text)...)
	got := tr.storeConns(mixed)
	assert.Equal(t, want, got)
	for i := range got {
		assert.Equal(t, text[i].conn.IP, got[i].IP)
	}
	if !raceEnabled {
		assert.Equal(t, 2.0, testing.AllocsPerRun(100, func() { tr.storeConns(mixed) }))
	}
}

// Issue 12: on a real Redis, what tracking writes (the live hash, the seen
// record, the broker's connections, the findings) is the same, byte for
// byte, whether the plugin describes its connections' IPs by their text or
// by their 16 bytes (Conn.Addr, at the DISCONNECT and for a connection
// taken over): the keys are an interface other brokers read.
func TestConnAddrSameRedisBytes(t *testing.T) {
	r := testenv.StartRedis(t)
	kb := keys.Builder{Prefix: "guard:"}
	streamID := regexp.MustCompile(`^[0-9]+-[0-9]+$`)
	run := func(byAddr bool) []string {
		r.CLI("FLUSHALL")
		c, _, clk := redisTracker(t, r, "i1", testOptions())
		ctx := context.Background()
		var dumps []string
		step := func(evs ...event) {
			require.NoError(t, c.handle(ctx, evs))
			d := dumpKeys(t, r, []string{"dev-4", "dev-6", "dev-x"}, "i1")
			var fs []string
			for _, l := range strings.Split(r.CLI("XRANGE", kb.Findings(), "-", "+"), "\n") {
				switch {
				case streamID.MatchString(strings.TrimSpace(l)): // the stream's entry IDs are Redis's clock
				case len(fs) > 0 && fs[len(fs)-1] == "token":
					fs = append(fs, "<random>") // an occurrence's token (store.AddFinding)
				default:
					fs = append(fs, l)
				}
			}
			dumps = append(dumps, strings.Join([]string{d[kb.Conn("dev-4")], d[kb.Seen("dev-4")], d[kb.Conn("dev-6")], d[kb.Seen("dev-6")],
				d[kb.Conn("dev-x")], d[kb.Seen("dev-x")], d[kb.BrokerConns("i1")], strings.Join(fs, "\n")}, "\n"))
			clk.advance(seenRefresh + 1) // the next pair records its use again
		}
		again := func(x Conn) Conn { // the plugin's DISCONNECT (connOf)
			if byAddr {
				return addrConn(x)
			}
			return x
		}
		a4 := c.NewConn("alice", "192.0.2.1", clk.now())
		a6 := c.NewConn("alice", "2001:db8::7", clk.now())
		step(event{kind: evConnect, clientID: "dev-4", conn: a4}, event{kind: evConnect, clientID: "dev-6", conn: a6})
		step(event{kind: evDisconnect, clientID: "dev-4", conn: again(a4)}, event{kind: evDisconnect, clientID: "dev-6", conn: again(a6)})
		// A pair within one batch (folded), then a takeover by another
		// principal (a finding naming both IPs), ended in the next batch.
		b4 := c.NewConn("alice", "192.0.2.9", clk.now())
		step(event{kind: evConnect, clientID: "dev-x", conn: b4}, event{kind: evDisconnect, clientID: "dev-x", conn: again(b4)})
		x1 := c.NewConn("alice", "2001:db8::1", clk.now())
		step(event{kind: evConnect, clientID: "dev-x", conn: x1})
		x2 := c.NewConn("bob", "198.51.100.7", clk.now())
		o := again(x1)
		step(event{kind: evConnect, clientID: "dev-x", conn: x2, other: &o})
		step(event{kind: evDisconnect, clientID: "dev-x", conn: again(x1)}, event{kind: evDisconnect, clientID: "dev-x", conn: again(x2)})
		return dumps
	}
	text := run(false)
	assert.Contains(t, strings.Join(text, "\n"), `"ip":"2001:db8::7"`)
	assert.Contains(t, strings.Join(text, "\n"), "198.51.100.7", "a finding")
	assert.Equal(t, text, run(true))
}
