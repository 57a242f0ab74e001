package store

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// storeWithIDsMax is newStore with Options.ClientIDsMax n.
func storeWithIDsMax(t *testing.T, n int) (*Store, *testenv.Redis) {
	t.Helper()
	r := testenv.StartRedis(t)
	s := New(Options{Addrs: []string{r.Addr}, Timeout: time.Second, ClientIDsMax: n}, keys.Builder{Prefix: "guard:"})
	t.Cleanup(func() { s.Close() })
	return s, r
}

// seenOf is how many seen hashes hold a use of principal, of client IDs
// "<prefix>0" to "<prefix>n-1".
func seenOf(t *testing.T, s *Store, prefix string, n int, principal string) (held []int) {
	t.Helper()
	for i := range n {
		ok, err := s.rdb.HExists(context.Background(), s.kb.Seen(prefix+strconv.Itoa(i)), principal).Result()
		require.NoError(t, err)
		if ok {
			held = append(held, i)
		}
	}
	return held
}

// One principal connecting with ever new client IDs keeps at most
// ClientIDsMax uses in Redis, its most recent ones; another principal's
// uses of the same client IDs are not touched (atk82: one account grew
// Redis by 610 bytes a new client ID, kept conflict_window, until Redis
// refused the writes that ban). Under flag (Sole) and deny alike, connects
// and their disconnects.
func TestClientIDsBoundPerPrincipal(t *testing.T) {
	for _, sole := range []bool{true, false} {
		t.Run("sole="+strconv.FormatBool(sole), func(t *testing.T) {
			s, _ := storeWithIDsMax(t, 5)
			ctx := context.Background()
			// carol used every client ID first: her uses stay.
			var ws []ConnWrite
			for i := range 12 {
				c := Conn{ID: "i2-" + strconv.Itoa(i+1), Instance: "i2", Principal: "carol", IP: "192.0.2.9", ConnectedMs: 1000 + int64(i)}
				c.DisconnectedMs = c.ConnectedMs + 1
				ws = append(ws, ConnWrite{ClientID: "dev" + strconv.Itoa(i), Instance: "i2", Live: &c, Seen: &c, Ended: true, Sole: sole})
			}
			_, err := s.WriteConns(ctx, ws, time.Hour)
			require.NoError(t, err)
			require.Len(t, seenOf(t, s, "dev", 12, "carol"), 5, "carol's 12 uses, 5 kept")
			carol := seenOf(t, s, "dev", 12, "carol")
			// mallory: 12 client IDs, each connected, then ended.
			for i := range 12 {
				c := Conn{ID: "i1-" + strconv.Itoa(i+1), Instance: "i1", Principal: "mallory", IP: "192.0.2.1", ConnectedMs: 2000 + int64(i)}
				_, err := s.WriteConns(ctx, []ConnWrite{{ClientID: "dev" + strconv.Itoa(i), Instance: "i1", Live: &c, Seen: &c, Read: true, Sole: sole}}, time.Hour)
				require.NoError(t, err)
				end := c
				end.DisconnectedMs = c.ConnectedMs + 1
				_, err = s.WriteConns(ctx, []ConnWrite{{ClientID: "dev" + strconv.Itoa(i), Instance: "i1", Gone: &c, Unlist: true, Left: &end, Sole: sole}}, time.Hour)
				require.NoError(t, err)
			}
			assert.Equal(t, []int{7, 8, 9, 10, 11}, seenOf(t, s, "dev", 12, "mallory"), "mallory's 5 latest uses kept")
			assert.Equal(t, carol, seenOf(t, s, "dev", 12, "carol"), "carol's uses untouched by mallory's")
			n, err := s.rdb.ZCard(ctx, s.kb.ClientIDs("mallory")).Result()
			require.NoError(t, err)
			assert.EqualValues(t, 5, n)
			ttl := s.rdb.PTTL(ctx, s.kb.ClientIDs("mallory")).Val()
			assert.Greater(t, ttl, 59*time.Minute, "the index is kept the window")
		})
	}
}

// A disconnect that writes its use where the field is gone (popped while
// the connection lasted) indexes it again, popping the oldest: a principal
// that holds connections while it connects with new client IDs does not
// keep uses past its bound through their ends. The broker's stop (Reap)
// writes ends the same way.
func TestClientIDsBoundThroughEnds(t *testing.T) {
	s, _ := storeWithIDsMax(t, 3)
	ctx := context.Background()
	var held []Conn
	for i := range 6 {
		c := Conn{ID: "i1-" + strconv.Itoa(i+1), Instance: "i1", Principal: "mallory", IP: "192.0.2.1", ConnectedMs: 1000 + int64(i)}
		held = append(held, c)
		_, err := s.WriteConns(ctx, []ConnWrite{{ClientID: "held" + strconv.Itoa(i), Instance: "i1", Live: &c, Seen: &c, Read: true, Sole: true}}, time.Hour)
		require.NoError(t, err)
	}
	require.Equal(t, []int{3, 4, 5}, seenOf(t, s, "held", 6, "mallory"))
	// held0..2 end now: their fields were popped; each end writes one and
	// indexes it, popping another.
	for i := range 3 {
		end := held[i]
		end.DisconnectedMs = 5000 + int64(i)
		_, err := s.WriteConns(ctx, []ConnWrite{{ClientID: "held" + strconv.Itoa(i), Instance: "i1", Gone: &held[i], Unlist: true, Left: &end, Sole: true}}, time.Hour)
		require.NoError(t, err)
	}
	assert.Len(t, seenOf(t, s, "held", 6, "mallory"), 3, "3 uses at most, ends included")
	assert.Equal(t, []int{0, 1, 2}, seenOf(t, s, "held", 6, "mallory"), "the latest uses: the ends")
	// The broker's stop ends the rest (held3..5, their fields popped).
	require.NoError(t, s.Reap(ctx, "i1", 9000, 0, time.Hour))
	got := seenOf(t, s, "held", 6, "mallory")
	assert.Len(t, got, 3, "3 uses at most after the stop's ends: %v", got)
	n, err := s.rdb.ZCard(ctx, s.kb.ClientIDs("mallory")).Result()
	require.NoError(t, err)
	assert.EqualValues(t, 3, n)
}

// What one principal can make Redis keep is bounded by ClientIDsMax uses,
// whatever the number of client IDs: 2 000 new client IDs of 256 bytes with
// the bound at 100 leave at most 100 seen hashes and an index of 100; the
// bytes Redis reports for them stated per use (README: about 2 KB a use at
// most).
func TestClientIDsBoundMemory(t *testing.T) {
	s, r := storeWithIDsMax(t, 100)
	ctx := context.Background()
	long := strings.Repeat("x", 250)
	for b := 0; b < 2000; b += 100 {
		var ws []ConnWrite
		conns := make([]Conn, 100)
		for i := range conns {
			conns[i] = Conn{ID: "0123456789ab-" + strconv.Itoa(b+i+1), Instance: "0123456789ab", Broker: "edge-1", Principal: strings.Repeat("p", 256), IP: "2001:db8::1", ConnectedMs: 1700000000000 + int64(b+i)}
			conns[i].DisconnectedMs = conns[i].ConnectedMs + 1
			ws = append(ws, ConnWrite{ClientID: long + strconv.Itoa(b+i), Instance: conns[i].Instance, Live: &conns[i], Seen: &conns[i], Ended: true, Sole: true})
		}
		_, err := s.WriteConns(ctx, ws, time.Hour)
		require.NoError(t, err)
	}
	keysOf := func(pattern string) []string {
		var out []string
		iter := s.rdb.Scan(ctx, 0, pattern, 1000).Iterator()
		for iter.Next(ctx) {
			out = append(out, iter.Val())
		}
		require.NoError(t, iter.Err())
		return out
	}
	seen := keysOf("guard:seen:*")
	assert.LessOrEqual(t, len(seen), 100, "seen hashes of one principal")
	var bytes int64
	for _, k := range append(seen, keysOf("guard:clientids:*")...) {
		n, err := s.rdb.MemoryUsage(ctx, k).Result()
		require.NoError(t, err)
		bytes += n
	}
	per := float64(bytes) / 100
	t.Logf("%d seen hashes; %.0f bytes a use, index included (256-byte principal, 254-byte client IDs); redis %s", len(seen), per, r.Addr)
	assert.Less(t, per, 2048.0, "bytes a use")
}

// The index's commands are asked at start where client-ID tracking runs: a
// user without ZCARD or ZPOPMIN (run by the index's script) is refused,
// naming the command; without tracking they are not asked.
func TestClientIDsIndexCommandsChecked(t *testing.T) {
	r := testenv.StartRedis(t)
	for _, without := range []string{"zcard", "zpopmin"} {
		u := "no" + without
		r.CLI("ACL", "SETUSER", u, "on", ">pw", "~*", "&*", "+@all", "-"+without)
		o := Options{Addrs: []string{r.Addr}, Username: u, Password: "pw"}
		_, err := atk64Check(o, "guard:", SettingsNeeds{Counts: true, Known: true, Tracking: true})
		require.Error(t, err, "a user without %s started with tracking", without)
		assert.Contains(t, strings.ToLower(err.Error()), without)
		_, err = atk64Check(o, "guard:", SettingsNeeds{Counts: true, Known: true})
		assert.NoError(t, err, "a user without %s refused though tracking is off", without)
	}
}
