package store

import (
	"encoding/json"
	"reflect"
	"sort"
	"strconv"
	"testing"
)

// FuzzConnEncode holds appendConn (and encode, prefix) to the bytes Redis
// held before it: jsonString's, encoding/json without HTML escaping. Other
// brokers and guardctl read them, and the scripts match prefixes of them.
// Run it with: go test -run '^$' -fuzz '^FuzzConnEncode$' ./store
func FuzzConnEncode(f *testing.F) {
	f.Add("b1-1", "b1", "edge", "alice", "192.0.2.1", int64(1700000000000), int64(0))
	f.Add("<>&\"\\", "\u2028\u2029", "\x00\x1f\x7f\b\f\n\r\t", "\xff\xfe", "é\xe2\x80", int64(-1), int64(-9223372036854775808))
	f.Add("", "", "", string(make([]byte, 300)), "", int64(0), int64(1))
	f.Fuzz(func(t *testing.T, id, instance, broker, principal, ip string, connected, disconnected int64) {
		c := Conn{ID: id, Instance: instance, Broker: broker, Principal: principal, IP: ip, ConnectedMs: connected, DisconnectedMs: disconnected}
		if got, want := string(appendConn(nil, &c)), jsonString(c); got != want {
			t.Fatalf("appendConn %q\njsonString %q", got, want)
		}
		enc := c.encode()
		if want := jsonString(c.bounded()); enc != want {
			t.Fatalf("encode %q, want %q", enc, want)
		}
		want := `{"id":` + strconv.Quote(id)
		if got := c.prefix(); got != want {
			t.Fatalf("prefix %q, want %q", got, want)
		}
		if got := c.prefixOf(enc); got != want {
			t.Fatalf("prefixOf %q, want %q", got, want)
		}
	})
}

// FuzzConnDecode holds decodeConn to json.Unmarshal into a zero Conn, for
// any bytes a hash may hold (another version's, a hand-written or a
// corrupted entry): the same Conn, and an error exactly when Unmarshal
// fails.
// Run it with: go test -run '^$' -fuzz '^FuzzConnDecode$' ./store
func FuzzConnDecode(f *testing.F) {
	for _, c := range []Conn{
		{ID: "b1-1", Instance: "b1", Broker: "edge", Principal: "alice", IP: "192.0.2.1", ConnectedMs: 1700000000000},
		{ID: "b1-2", Instance: "b1", Principal: "é<>&", IP: "::1", ConnectedMs: 5, DisconnectedMs: 7},
		{ID: "x\"y", Principal: "\xff\u2028", ConnectedMs: -3, DisconnectedMs: -9223372036854775808},
	} {
		f.Add(jsonString(c))
	}
	for _, s := range []string{
		`{"id":"a","instance":"b","broker":"c","principal":"d","ip":"e","connected_ms":01}`,
		`{"id":"a","instance":"b","broker":"c","principal":"d","ip":"e","connected_ms":-0,"disconnected_ms":0}`,
		`{"id":"a","instance":"b","broker":"c","principal":"d","ip":"e","connected_ms":1e3}`,
		`{"id":"a","instance":"b","broker":"c","principal":"d","ip":"e","connected_ms":99999999999999999999}`,
		`{"id":"a","instance":"b","broker":"c","principal":"d","ip":"e","connected_ms":1} `,
		`{"id":"a","instance":"b","broker":"c","principal":"d","ip":"\xff","connected_ms":1}`,
		`{"id":"a","instance":"b","broker":"c","principal":"d","ip":"e","connected_ms":1,"disconnected_ms":2,"x":1}`,
		`{"ID":"a","connected_ms":"1"}`, `{"id":"a","id":"b"}`, `[1]`, `null`, ``, `{`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		var want Conn
		wantErr := json.Unmarshal([]byte(v), &want)
		var got Conn
		err := decodeConn(v, &got)
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("decodeConn(%q): error %v, json.Unmarshal: %v", v, err, wantErr)
		}
		if got != want {
			t.Fatalf("decodeConn(%q) = %+v, json.Unmarshal %+v", v, got, want)
		}
		var fast Conn
		if parseConn(v, &fast) && (wantErr != nil || fast != want) {
			t.Fatalf("parseConn(%q) = %+v, json.Unmarshal %+v, %v", v, fast, want, wantErr)
		}
	})
}

// decodeConnList reads a script's reply as decodeConns reads the hash
// (hashOf, as WriteConns decoded replies before): the same entries, newest
// first.
func TestDecodeConnListAsMap(t *testing.T) {
	a := Conn{ID: "a-1", Instance: "a", Principal: "p", ConnectedMs: 3}
	b := Conn{ID: "b-1", Instance: "b", Principal: "q", ConnectedMs: 5, DisconnectedMs: 6}
	for _, list := range [][]any{
		nil, {}, {"a"},
		{"a", jsonString(a), "b", jsonString(b)},
		{"b", jsonString(b), "a", jsonString(a), "c"},
		{"a", `{"id":""}`, "b", "not json", "c", int64(1), "d", jsonString(b)},
		{"x", `{"connected_ms":9,"id":"x"}`, "a", jsonString(a)},
	} {
		got := decodeConnList(list)
		m := map[string]string{}
		for i := 0; i+1 < len(list); i += 2 {
			f, _ := list[i].(string)
			v, _ := list[i+1].(string)
			m[f] = v
		}
		want := decodeConns(m)
		if got == nil || len(got) != len(want) {
			t.Fatalf("%v: got %+v, want %+v", list, got, want)
		}
		if !sort.SliceIsSorted(got, func(i, j int) bool { return got[i].ConnectedMs > got[j].ConnectedMs }) {
			t.Fatalf("%v: not newest first: %+v", list, got)
		}
		byID := func(cs []Conn) []Conn {
			cs = append([]Conn(nil), cs...)
			sort.Slice(cs, func(i, j int) bool { return cs[i].ID < cs[j].ID })
			return cs
		}
		if !reflect.DeepEqual(byID(got), byID(want)) {
			t.Fatalf("%v: got %+v, want %+v", list, got, want)
		}
	}
}

// The conflict worker encodes and decodes a Conn per record: without
// reflection, one allocation for the stored string and none to read one
// back (encoding/json took 7 and 8).
func TestConnJSONAllocs(t *testing.T) {
	c := Conn{ID: "0123456789ab-42", Instance: "0123456789ab", Broker: "edge-1", Principal: "device-17", IP: "192.0.2.1", ConnectedMs: 1700000000000}
	enc := c.encode()
	if n := testing.AllocsPerRun(100, func() { _ = c.encode() }); n > 1 {
		t.Errorf("encode: %v allocations, want at most 1", n)
	}
	var d Conn
	if n := testing.AllocsPerRun(100, func() { _ = decodeConn(enc, &d) }); n > 0 {
		t.Errorf("decodeConn: %v allocations, want none", n)
	}
	list := []any{"0123456789ab", enc, "ba9876543210", enc}
	if n := testing.AllocsPerRun(100, func() { _ = decodeConnList(list) }); n > 1 {
		t.Errorf("decodeConnList: %v allocations, want 1 (the slice)", n)
	}
}
