package store

import (
	"fmt"
	"reflect"
	"testing"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// FuzzConns checks the connection records the plugin keeps in Redis hashes:
// a record as encode writes it decodes to the bounded connection (no field
// longer than keys.TrackingMax), and whatever else a hash holds (written by
// another version, by hand, or corrupted) decodes without panicking to
// records that have an ID, newest first.
// Run it with: go test -run '^$' -fuzz '^FuzzConns$' ./store
func FuzzConns(f *testing.F) {
	f.Add("b1-1", "alice", "192.0.2.1", "edge-1", int64(1700000000000), `{"id":"x","connected_ms":"1"}`)
	f.Add("b1-2", "<>&\"\\", "::1", "", int64(-1), `{"id":"","ip":"1"}`)
	f.Add("id", string(make([]byte, 300)), "x", "\u2028", int64(0), `[1,2]`)
	f.Add("é", "\xff", "", "", int64(1<<62), `{"id":"a","connected_ms":1e400}`)
	f.Fuzz(func(t *testing.T, id, principal, ip, broker string, connected int64, raw string) {
		c := Conn{ID: id, Instance: "i", Broker: broker, Principal: principal, IP: ip, ConnectedMs: connected}
		got := decodeConns(map[string]string{"a": c.encode(), "b": raw})
		for i, d := range got {
			if d.ID == "" {
				t.Fatal("a record without ID decoded")
			}
			if i > 0 && got[i-1].ConnectedMs < d.ConnectedMs {
				t.Fatal("records not newest first")
			}
		}
		if id == "" || !validUTF8(id, principal, ip, broker) {
			return // JSON keeps valid UTF-8 only; an ID is the plugin's own
		}
		want := c.bounded()
		for _, s := range []string{want.Principal, want.IP, want.Broker} {
			if len(s) > keys.TrackingMax {
				t.Fatalf("a field of %d bytes stored", len(s))
			}
		}
		found := false
		for _, d := range got {
			found = found || d == want
		}
		if !found {
			t.Fatalf("record %+v did not decode to itself: %+v", want, got)
		}
	})
}

// FuzzFinding checks the findings stream: an entry as AddFinding writes it
// (values as Redis returns them, all strings) reads back as the finding with
// its client ID and principals in keys.Tracking form; and an entry with any
// other values (another writer, corruption) reads without panicking.
// Run it with: go test -run '^$' -fuzz '^FuzzFinding$' ./store
func FuzzFinding(f *testing.F) {
	f.Add("dev-1", "alice", "bob", "192.0.2.1", int64(1700000000000), `["a",1]`, `[{"id":1}]`, "12")
	f.Add(string(make([]byte, 400)), "", "\xff", "::1", int64(0), `null`, `{}`, "-9223372036854775809")
	f.Add("x", "<a&b>", "\u2028", "", int64(-5), `"s"`, `[{"id":"a","connected_ms":"x"}]`, "")
	f.Fuzz(func(t *testing.T, clientID, p1, p2, ip string, ms int64, rawPrincipals, rawConns, rawCount string) {
		in := Finding{
			Reason: ReasonDuplicateClientID, Severity: SeverityHigh, Kind: KindCrossPrincipal, Action: "flagged",
			ClientID: clientID, Principals: []string{p1, p2},
			Connections:             []Conn{{ID: "b-1", Principal: p1, IP: ip, ConnectedMs: ms}, {ID: "b-2", Principal: p2, ConnectedMs: ms - 1}},
			DisplacedDisconnectedMs: ms, TimeMs: ms, Count: 3, Fold: "f",
		}
		vals := in.values()
		m := redis.XMessage{ID: "1-0", Values: map[string]any{}}
		for i := 0; i+1 < len(vals); i += 2 {
			m.Values[vals[i].(string)] = fmt.Sprint(vals[i+1])
		}
		out := parseFinding(m)
		if out.ClientID != keys.Tracking(clientID) || out.TimeMs != ms || out.Count != 3 || out.FirstSeenMs != ms || out.LastSeenMs != ms {
			t.Fatalf("finding read back as %+v", out)
		}
		if validUTF8(p1, p2, ip) && !reflect.DeepEqual(out.Principals, boundAll(in.Principals)) {
			t.Fatalf("principals %q read back as %q", boundAll(in.Principals), out.Principals)
		}
		if validUTF8(p1, p2, ip) {
			want := []Conn{in.Connections[0].bounded(), in.Connections[1].bounded()}
			if !reflect.DeepEqual(out.Connections, want) {
				t.Fatalf("connections %+v read back as %+v", want, out.Connections)
			}
		}
		// Anything else in the stream.
		raw := redis.XMessage{ID: "2-0", Values: map[string]any{
			"principals": rawPrincipals, "connections": rawConns, "count": rawCount, "time_ms": rawCount,
			"clientid": clientID, "disconnected_ms": []byte(rawCount), "reason": 7,
		}}
		got := parseFinding(raw)
		if got.FirstSeenMs != got.TimeMs || got.LastSeenMs != got.TimeMs || got.Reason != "" {
			t.Fatalf("raw entry read as %+v", got)
		}
	})
}

// validUTF8 reports whether every one of ss is valid UTF-8 on its own (two
// halves of a character are each invalid, though valid together).
// Mosquitto refuses client IDs and usernames that are not.
func validUTF8(ss ...string) bool {
	for _, s := range ss {
		if !utf8.ValidString(s) {
			return false
		}
	}
	return true
}
