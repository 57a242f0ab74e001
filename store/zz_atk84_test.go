package store

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// atk84, a hostile review of 9646324 (the client-ID index that refuses a
// new client ID past conflict_clientids_max). Each test below failed on it;
// they pass since every end is indexed (scored by its time) and a refused
// use is removed by its connection's prefix, its end's record included.
// Its two other findings are limits of any per-principal bound, in the
// README's Known limits: a member of a shared principal can fill the
// index, and a principal can fill its own.

func atk84Holds(t *testing.T, s *Store, clientID, principal string) bool {
	t.Helper()
	ok, err := s.rdb.HExists(context.Background(), s.kb.Seen(clientID), principal).Result()
	require.NoError(t, err)
	return ok
}

func atk84Principals(st State) []string {
	var out []string
	for _, c := range st.Seen {
		out = append(out, c.Principal)
	}
	return out
}

// F1: under clientid_conflict deny (no Sole, no Ended fold), a connect and
// its own disconnect in one batch: leftScript finds the connect's record
// (own: returns 2, not -1, so indexMade does not index it), writes the end
// over it; refuseUses' compare-and-delete then compares the connect's
// value, which the end record no longer starts with, and keeps it. Each
// such pair leaves an unindexed use: no bound.
func TestAtk84DenyPairInOneBatchOutlivesBound(t *testing.T) {
	s, _ := storeWithIDsMax(t, 2)
	ctx := context.Background()
	now := time.Now().UnixMilli()
	for i := range 20 {
		id := "x" + strconv.Itoa(i)
		c := Conn{ID: "i1-" + strconv.Itoa(i+1), Instance: "i1", Principal: "mallory", IP: "192.0.2.1", ConnectedMs: now + int64(i)}
		end := c
		end.DisconnectedMs = c.ConnectedMs + 1
		_, err := s.WriteConns(ctx, []ConnWrite{
			{ClientID: id, Instance: "i1", Live: &c, Seen: &c, Read: true},
			{ClientID: id, Instance: "i1", Gone: &c, Unlist: true, Left: &end, Check: true},
		}, time.Hour)
		require.NoError(t, err)
	}
	n := 0
	for i := range 20 {
		if atk84Holds(t, s, "x"+strconv.Itoa(i), "mallory") {
			n++
		}
	}
	assert.LessOrEqual(t, n, 2, "mallory keeps %d uses with conflict_clientids_max 2", n)
}

// F2: the index scores a use by its connect; a connection's end renews its
// seen hash's TTL without touching the index. Connections held just under
// a window, ended, then dropped from the full index as "older than the
// window" while their uses live another window: twice the bound.
func TestAtk84HeldConnectionsDoubleTheBound(t *testing.T) {
	s, _ := storeWithIDsMax(t, 3)
	ctx := context.Background()
	const window = time.Hour
	now := time.Now().UnixMilli()
	held := now - window.Milliseconds() + 300 // connected ~a window ago
	for i := range 3 {
		id := "held" + strconv.Itoa(i)
		c := Conn{ID: "i1-" + strconv.Itoa(i+1), Instance: "i1", Principal: "mallory", IP: "192.0.2.1", ConnectedMs: held + int64(i)}
		_, err := s.WriteConns(ctx, []ConnWrite{{ClientID: id, Instance: "i1", Live: &c, Seen: &c, Read: true, Sole: true}}, window)
		require.NoError(t, err)
		end := c
		end.DisconnectedMs = now
		_, err = s.WriteConns(ctx, []ConnWrite{{ClientID: id, Instance: "i1", Gone: &c, Unlist: true, Left: &end, Sole: true, Check: true}}, window)
		require.NoError(t, err)
	}
	time.Sleep(500 * time.Millisecond)
	for i := range 3 {
		c := Conn{ID: "i1-" + strconv.Itoa(100+i), Instance: "i1", Principal: "mallory", IP: "192.0.2.1", ConnectedMs: time.Now().UnixMilli(), DisconnectedMs: time.Now().UnixMilli() + 1}
		_, err := s.WriteConns(ctx, []ConnWrite{{ClientID: "new" + strconv.Itoa(i), Instance: "i1", Live: &c, Seen: &c, Ended: true, Read: true, Sole: true}}, window)
		require.NoError(t, err)
	}
	n := 0
	for _, p := range []string{"held", "new"} {
		for i := range 3 {
			if atk84Holds(t, s, p+strconv.Itoa(i), "mallory") {
				n++
				ttl := s.rdb.PTTL(ctx, s.kb.Seen(p+strconv.Itoa(i))).Val()
				t.Logf("%s%d kept, TTL %v", p, i, ttl)
			}
		}
	}
	assert.LessOrEqual(t, n, 3, "mallory keeps %d uses with conflict_clientids_max 3", n)
}

// F3: every anonymous client is one principal. A device's use whose index
// score (its connect) is older than the window while its record is not (it
// ended within the window) is dropped from the index by one anonymous
// client's junk; the device's next connect is then refused, its HSET
// overwrites its recorded use and the compare-and-delete removes it; then
// another principal takes the client ID with nothing in its seen hash.
// Before e86582e the device's use stood and mallory was seen.
func TestAtk84SharedPrincipalReconnectErasesDevice(t *testing.T) {
	s, _ := storeWithIDsMax(t, 3)
	ctx := context.Background()
	const window = time.Hour
	const anon = "<anonymous>"
	now := time.Now().UnixMilli()
	d := Conn{ID: "i1-1", Instance: "i1", Principal: anon, IP: "192.0.2.7", ConnectedMs: now - window.Milliseconds() + 300}
	_, err := s.WriteConns(ctx, []ConnWrite{{ClientID: "device-7", Instance: "i1", Live: &d, Seen: &d, Read: true, Sole: true}}, window)
	require.NoError(t, err)
	end := d
	end.DisconnectedMs = now
	_, err = s.WriteConns(ctx, []ConnWrite{{ClientID: "device-7", Instance: "i1", Gone: &d, Unlist: true, Left: &end, Sole: true, Check: true}}, window)
	require.NoError(t, err)
	time.Sleep(500 * time.Millisecond)
	// one anonymous client, three junk client IDs
	for i := range 3 {
		ms := time.Now().UnixMilli()
		c := Conn{ID: "i1-" + strconv.Itoa(10+i), Instance: "i1", Principal: anon, IP: "203.0.113.5", ConnectedMs: ms, DisconnectedMs: ms + 1}
		_, err := s.WriteConns(ctx, []ConnWrite{{ClientID: "junk" + strconv.Itoa(i), Instance: "i1", Live: &c, Seen: &c, Ended: true, Read: true, Sole: true}}, window)
		require.NoError(t, err)
	}
	require.True(t, atk84Holds(t, s, "device-7", anon), "device's use still recorded here")
	// the device reconnects briefly
	ms := time.Now().UnixMilli()
	d2 := Conn{ID: "i1-50", Instance: "i1", Principal: anon, IP: "192.0.2.7", ConnectedMs: ms, DisconnectedMs: ms + 5}
	_, err = s.WriteConns(ctx, []ConnWrite{{ClientID: "device-7", Instance: "i1", Live: &d2, Seen: &d2, Ended: true, Read: true, Sole: true}}, window)
	require.NoError(t, err)
	m := Conn{ID: "i2-1", Instance: "i2", Principal: "mallory", IP: "198.51.100.1", ConnectedMs: ms + 1000}
	st, err := s.WriteConns(ctx, []ConnWrite{{ClientID: "device-7", Instance: "i2", Live: &m, Seen: &m, Read: true, Sole: true}}, window)
	require.NoError(t, err)
	assert.Contains(t, atk84Principals(st[0]), anon, "mallory's connect must see the device's use")
}
