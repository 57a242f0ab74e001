package store

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// oldDecode is the decoding before the hand-written one: json.Unmarshal of
// each value, entries without an ID skipped.
func oldDecode(vals []string) []Conn {
	out := []Conn{}
	for _, v := range vals {
		var c Conn
		if json.Unmarshal([]byte(v), &c) == nil && c.ID != "" {
			out = append(out, c)
		}
	}
	sortNewestFirst(out)
	return out
}

// Hostile client IDs and principals, and hashes holding entries of older
// brokers and of operators (redis-cli edits), read through the live
// script's patched HGETALL: the reply decodes to what json.Unmarshal of an
// HGETALL after the record reads, and the stored bytes are encoding/json's.
func TestAttackI12HostileConnsThroughLiveScript(t *testing.T) {
	s, r := newStore(t, "guard:")
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx := context.Background()
	hostile := []string{
		`"`, `\`, `\"\\`, "\x00", "a\x00b", "\xff\xfe", "é\xe2\x80", "\u2028\u2029", "<>&", "\x7f\x1f",
		strings.Repeat("\\\"", 32*1024), strings.Repeat("x", 64*1024), "é" + strings.Repeat("\xed\xa0\x80", 10),
	}
	operator := []string{
		`{ "id" : "op-1", "instance":"op","broker":"b","principal":"p","ip":"1","connected_ms": 5 }`,
		`{"principal":"p","id":"op-2","connected_ms":1e3}`,
		`{"id":"op-3","instance":"op","broker":"b","principal":"p","ip":"1","connected_ms":-7,"extra":{"a":[1,2]}}`,
		`{"id":"op-4","connected_ms":99999999999999999999}`,
		`{"id":"op-5","connected_ms":9223372036854775807,"disconnected_ms":-9223372036854775808}`,
		`{"ID":"op-6","Connected_MS":12}`,
		`{"id":"op-7","principal":"\ud800x\u2028\/","connected_ms":3}`,
		`{"id":"","connected_ms":3}`, `not json`, ``, `{"id":"op-8","connected_ms":3}x`,
	}
	for i, h := range hostile {
		clientID := h + "-cid"
		key := keys.Builder{Prefix: "guard:"}.Conn(clientID)
		older := Conn{ID: "old-1", Instance: "old", Broker: h, Principal: h, IP: h, ConnectedMs: int64(i)}
		fields := []any{"old", jsonString(older.bounded())}
		for j, v := range operator {
			fields = append(fields, "op"+string(rune('a'+j)), v)
		}
		require.NoError(t, rdb.HSet(ctx, key, fields...).Err())
		c := Conn{ID: "i1-" + string(rune('1'+i%9)), Instance: "i1", Broker: h, Principal: h, IP: h, ConnectedMs: 100 + int64(i)}
		st, err := s.WriteConns(ctx, []ConnWrite{{ClientID: clientID, Instance: "i1", Live: &c, Seen: &c, Read: true}}, time.Hour)
		require.NoError(t, err, "hostile %d", i)
		all, err := rdb.HGetAll(ctx, key).Result()
		require.NoError(t, err)
		assert.Equal(t, c.encode(), all["i1"], "hostile %d: stored bytes", i)
		assert.Equal(t, jsonString(c.bounded()), all["i1"], "hostile %d: encoding/json's bytes", i)
		var vals []string
		for _, v := range all {
			vals = append(vals, v)
		}
		want := oldDecode(vals)
		got := st[0].Live
		assert.ElementsMatch(t, want, got, "hostile %d: live reply", i)
		assert.Len(t, got, 7, "hostile %d: i1, old, op-1, op-3, op-5, op-6, op-7", i)
		seen, err := rdb.HGetAll(ctx, keys.Builder{Prefix: "guard:"}.Seen(clientID)).Result()
		require.NoError(t, err)
		vals = vals[:0]
		for _, v := range seen {
			vals = append(vals, v)
		}
		assert.ElementsMatch(t, oldDecode(vals), st[0].Seen, "hostile %d: seen reply", i)
	}
}
