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
	return newStoreWith(t, "guard:", Options{ClientIDsMax: n, Tracking: true})
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
// ClientIDsMax uses in Redis: those it made first; past the bound its new
// client IDs are not remembered, and nothing is removed from another
// principal's uses of the same client IDs (atk82: one account grew Redis by
// 610 bytes a new client ID, kept conflict_window, until Redis refused the
// writes that ban). Under flag (Sole) and deny alike, connects and their
// disconnects.
func TestClientIDsBoundPerPrincipal(t *testing.T) {
	for _, sole := range []bool{true, false} {
		t.Run("sole="+strconv.FormatBool(sole), func(t *testing.T) {
			s, _ := storeWithIDsMax(t, 5)
			ctx := context.Background()
			now := time.Now().UnixMilli()
			// carol used every client ID first, each ended.
			var ws []ConnWrite
			for i := range 12 {
				c := Conn{ID: "i2-" + strconv.Itoa(i+1), Instance: "i2", Principal: "carol", IP: "192.0.2.9", ConnectedMs: now + int64(i)}
				c.DisconnectedMs = c.ConnectedMs + 1
				ws = append(ws, ConnWrite{ClientID: "dev" + strconv.Itoa(i), Instance: "i2", Live: &c, Seen: &c, Ended: true, Sole: sole})
			}
			_, err := s.WriteConns(ctx, ws, time.Hour)
			require.NoError(t, err)
			carol := seenOf(t, s, "dev", 12, "carol")
			require.Equal(t, []int{0, 1, 2, 3, 4}, carol, "carol's first 5 uses kept, the 7 after not")
			// mallory: 12 client IDs, each connected, then ended.
			for i := range 12 {
				c := Conn{ID: "i1-" + strconv.Itoa(i+1), Instance: "i1", Principal: "mallory", IP: "192.0.2.1", ConnectedMs: now + 100 + int64(i)}
				_, err := s.WriteConns(ctx, []ConnWrite{{ClientID: "dev" + strconv.Itoa(i), Instance: "i1", Live: &c, Seen: &c, Read: true, Sole: sole}}, time.Hour)
				require.NoError(t, err)
				end := c
				end.DisconnectedMs = c.ConnectedMs + 1
				_, err = s.WriteConns(ctx, []ConnWrite{{ClientID: "dev" + strconv.Itoa(i), Instance: "i1", Gone: &c, Unlist: true, Left: &end, Sole: sole}}, time.Hour)
				require.NoError(t, err)
			}
			assert.Equal(t, []int{0, 1, 2, 3, 4}, seenOf(t, s, "dev", 12, "mallory"), "mallory's first 5 uses kept")
			assert.Equal(t, carol, seenOf(t, s, "dev", 12, "carol"), "carol's uses untouched by mallory's")
			n, err := s.rdb.ZCard(ctx, s.kb.ClientIDs("mallory")).Result()
			require.NoError(t, err)
			assert.EqualValues(t, 5, n)
			assert.EqualValues(t, 21, s.RefusedUses(), "carol's 7; mallory's 7 connects and their 7 ends")
			ttl := s.rdb.PTTL(ctx, s.kb.ClientIDs("mallory")).Val()
			assert.Greater(t, ttl, 59*time.Minute, "the index is kept the window")
			// A known client ID is still recorded at the bound: mallory's
			// reconnect with dev2 rewrites her use there.
			c := Conn{ID: "i1-99", Instance: "i1", Principal: "mallory", IP: "192.0.2.1", ConnectedMs: now + 500}
			_, err = s.WriteConns(ctx, []ConnWrite{{ClientID: "dev2", Instance: "i1", Live: &c, Seen: &c, Read: true, Sole: sole}}, time.Hour)
			require.NoError(t, err)
			_, seen, err := state(s, "dev2")
			require.NoError(t, err)
			var mine []string
			for _, u := range seen {
				if u.Principal == "mallory" {
					mine = append(mine, u.ID)
				}
			}
			assert.Equal(t, []string{"i1-99"}, mine, "a known client ID's use recorded at the bound")
		})
	}
}

// atk83 (a hostile review of the first bound, which evicted a principal's
// oldest use): every anonymous client is one principal, as is a fleet
// sharing a username, so one member connecting with new client IDs erased
// the others' uses, and another principal then took a device's client ID
// with no finding. Now a full index refuses the new client IDs: the
// device's use stays, and the taker's connect reads it.
func TestClientIDsSharedPrincipalKeepsDevicesUse(t *testing.T) {
	s, _ := storeWithIDsMax(t, 10)
	ctx := context.Background()
	now := time.Now().UnixMilli()
	dev := Conn{ID: "i1-1", Instance: "i1", Principal: "<anonymous>", IP: "192.0.2.7", ConnectedMs: now, DisconnectedMs: now + 1}
	_, err := s.WriteConns(ctx, []ConnWrite{{ClientID: "device-7", Instance: "i1", Live: &dev, Seen: &dev, Ended: true, Sole: true}}, time.Hour)
	require.NoError(t, err)
	var ws []ConnWrite
	for i := range 40 { // the flood, in one batch
		c := Conn{ID: "i1-" + strconv.Itoa(i+2), Instance: "i1", Principal: "<anonymous>", IP: "192.0.2.66", ConnectedMs: now + 10 + int64(i)}
		c.DisconnectedMs = c.ConnectedMs + 1
		ws = append(ws, ConnWrite{ClientID: "junk-" + strconv.Itoa(i), Instance: "i1", Live: &c, Seen: &c, Ended: true, Sole: true})
	}
	_, err = s.WriteConns(ctx, ws, time.Hour)
	require.NoError(t, err)
	m := Conn{ID: "i2-1", Instance: "i2", Principal: "mallory", IP: "192.0.2.9", ConnectedMs: now + 100}
	st, err := s.WriteConns(ctx, []ConnWrite{{ClientID: "device-7", Instance: "i2", Live: &m, Seen: &m, Read: true, Sole: true}}, time.Hour)
	require.NoError(t, err)
	var principals []string
	for _, u := range st[0].Seen {
		principals = append(principals, u.Principal)
	}
	assert.ElementsMatch(t, []string{"<anonymous>", "mallory"}, principals, "mallory's connect does not see the device's use")
	assert.Len(t, seenOf(t, s, "junk-", 40, "<anonymous>"), 9, "the flood's uses: the bound's room")
}

// atk83 (of the first bound): a use written again in the batch that had
// its field removed was erased. Now a refused use's removal deletes only
// the value it wrote: a known client ID's rewrite in the same batch as
// refused ones keeps its latest use, and a refused client ID written twice
// in one batch keeps neither.
func TestClientIDsRefusalRemovesOnlyItsOwnWrite(t *testing.T) {
	s, _ := storeWithIDsMax(t, 2)
	ctx := context.Background()
	now := time.Now().UnixMilli()
	mk := func(id string, n int) ConnWrite {
		c := Conn{ID: "i1-" + strconv.Itoa(n), Instance: "i1", Principal: "p", IP: "192.0.2.1", ConnectedMs: now + int64(n)}
		c.DisconnectedMs = c.ConnectedMs + 1
		return ConnWrite{ClientID: id, Instance: "i1", Live: &c, Seen: &c, Ended: true, Sole: true}
	}
	_, err := s.WriteConns(ctx, []ConnWrite{mk("a", 1), mk("b", 2), mk("c", 3)}, time.Hour)
	require.NoError(t, err)
	assert.Empty(t, seenOf(t, s, "c", 1, "p"), "c refused")
	_, err = s.WriteConns(ctx, []ConnWrite{mk("c", 4), mk("b", 5), mk("c", 6), mk("b", 7)}, time.Hour)
	require.NoError(t, err)
	assert.Empty(t, seenOf(t, s, "c", 1, "p"), "c refused twice")
	_, seen, err := state(s, "b")
	require.NoError(t, err)
	require.Len(t, seen, 1)
	assert.Equal(t, "i1-7", seen[0].ID, "b's latest use, written beside the refused ones")
}

// A disconnect that writes its use where the field is gone (its connect was
// refused) is indexed then, and refused too: a principal holding
// connections while it connects with new client IDs does not keep uses
// past its bound through their ends. The broker's stop (Reap) writes ends
// the same way.
func TestClientIDsBoundThroughEnds(t *testing.T) {
	s, _ := storeWithIDsMax(t, 3)
	ctx := context.Background()
	now := time.Now().UnixMilli()
	var held []Conn
	for i := range 6 {
		c := Conn{ID: "i1-" + strconv.Itoa(i+1), Instance: "i1", Principal: "mallory", IP: "192.0.2.1", ConnectedMs: now + int64(i)}
		held = append(held, c)
		_, err := s.WriteConns(ctx, []ConnWrite{{ClientID: "held" + strconv.Itoa(i), Instance: "i1", Live: &c, Seen: &c, Read: true, Sole: true}}, time.Hour)
		require.NoError(t, err)
	}
	require.Equal(t, []int{0, 1, 2}, seenOf(t, s, "held", 6, "mallory"))
	// held3..5 end now: their fields were refused; each end writes one, is
	// indexed, refused, and removed.
	for i := 3; i < 6; i++ {
		end := held[i]
		end.DisconnectedMs = now + 5000 + int64(i)
		_, err := s.WriteConns(ctx, []ConnWrite{{ClientID: "held" + strconv.Itoa(i), Instance: "i1", Gone: &held[i], Unlist: true, Left: &end, Sole: true}}, time.Hour)
		require.NoError(t, err)
	}
	assert.Equal(t, []int{0, 1, 2}, seenOf(t, s, "held", 6, "mallory"), "3 uses at most, ends included")
	// The broker's stop ends the rest.
	require.NoError(t, s.Reap(ctx, "i1", now+9000, 0, time.Hour))
	assert.Equal(t, []int{0, 1, 2}, seenOf(t, s, "held", 6, "mallory"), "after the stop's ends")
	n, err := s.rdb.ZCard(ctx, s.kb.ClientIDs("mallory")).Result()
	require.NoError(t, err)
	assert.EqualValues(t, 3, n)
}

// Uses older than the window leave the index: a principal that stopped
// using its client IDs may record new ones a window later.
func TestClientIDsIndexForgetsPastTheWindow(t *testing.T) {
	s, _ := storeWithIDsMax(t, 2)
	ctx := context.Background()
	now := time.Now().UnixMilli()
	write := func(id string, at int64) {
		c := Conn{ID: "i1-" + id, Instance: "i1", Principal: "p", IP: "192.0.2.1", ConnectedMs: at, DisconnectedMs: at + 1}
		_, err := s.WriteConns(ctx, []ConnWrite{{ClientID: id, Instance: "i1", Live: &c, Seen: &c, Ended: true, Sole: true}}, time.Minute)
		require.NoError(t, err)
	}
	write("old1", now-2*time.Minute.Milliseconds())
	write("old2", now-2*time.Minute.Milliseconds())
	write("new1", now)
	assert.Equal(t, []int{1}, seenOf(t, s, "new", 2, "p"), "the window's old uses made room")
}

// What one principal can make Redis keep is bounded by ClientIDsMax uses,
// whatever the number of client IDs: 2 000 new client IDs of 254 bytes with
// the bound at 100 leave at most 100 seen hashes and an index of 100; the
// bytes Redis reports for them stated per use (README: about 2 KB a use at
// most).
func TestClientIDsBoundMemory(t *testing.T) {
	s, r := storeWithIDsMax(t, 100)
	ctx := context.Background()
	now := time.Now().UnixMilli()
	long := strings.Repeat("x", 250)
	for b := 0; b < 2000; b += 100 {
		var ws []ConnWrite
		conns := make([]Conn, 100)
		for i := range conns {
			conns[i] = Conn{ID: "0123456789ab-" + strconv.Itoa(b+i+1), Instance: "0123456789ab", Broker: "edge-1", Principal: strings.Repeat("p", 256), IP: "2001:db8::1", ConnectedMs: now + int64(b+i)}
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
// user without ZCARD or ZREMRANGEBYSCORE (run by the index's script) is refused,
// naming the command; without tracking they are not asked.
func TestClientIDsIndexCommandsChecked(t *testing.T) {
	r := testenv.StartRedis(t)
	for _, without := range []string{"zcard", "zremrangebyscore"} {
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

// The first batch a Redis sees (or the first after SCRIPT FLUSH) meets
// NOSCRIPT at its index calls. Under flag (Sole) such a batch holds no other
// script, and it used to be replayed whole: a connect's read then saw a use
// written after it in the same batch by the first attempt, and a conflict
// was reported twice (e2e TestGuardctlAuditsPluginFindings, count 2). Now
// only the index calls are run again: each read sees what was written before
// it, and a use refused is counted once.
func TestClientIDsIndexNoScriptKeepsReadsInOrder(t *testing.T) {
	s, _ := storeWithIDsMax(t, 1)
	ctx := context.Background()
	flushUnseen(t, s)
	now := time.Now().UnixMilli()
	alice := Conn{ID: "i1-1", Instance: "i1", Principal: "alice", IP: "192.0.2.1", ConnectedMs: now}
	alice.DisconnectedMs = now + 1
	bob := Conn{ID: "i1-2", Instance: "i1", Principal: "bob", IP: "192.0.2.2", ConnectedMs: now + 2}
	bob.DisconnectedMs = now + 3
	// alice already holds her one slot: her use of dev-b is refused.
	other := Conn{ID: "i1-3", Instance: "i1", Principal: "alice", IP: "192.0.2.1", ConnectedMs: now + 4}
	other.DisconnectedMs = now + 5
	out, err := s.WriteConns(ctx, []ConnWrite{
		{ClientID: "dev-a", Instance: "i1", Live: &alice, Seen: &alice, Read: true, Ended: true, Sole: true},
		{ClientID: "dev-a", Instance: "i1", Live: &bob, Seen: &bob, Read: true, Ended: true, Sole: true},
		{ClientID: "dev-b", Instance: "i1", Live: &other, Seen: &other, Read: true, Ended: true, Sole: true},
	}, time.Hour)
	require.NoError(t, err)
	require.Len(t, out, 3)
	var first []string
	for _, c := range out[0].Seen {
		first = append(first, c.Principal)
	}
	assert.Equal(t, []string{"alice"}, first, "alice's connect read bob's use, written after it")
	assert.Len(t, out[1].Seen, 2, "bob's connect sees alice's use")
	assert.EqualValues(t, 1, s.RefusedUses(), "alice's use of dev-b refused once")
	ok, err := s.rdb.HExists(ctx, s.kb.Seen("dev-b"), "alice").Result()
	require.NoError(t, err)
	assert.False(t, ok, "alice's refused use of dev-b is removed")
	ok, err = s.rdb.HExists(ctx, s.kb.Seen("dev-a"), "alice").Result()
	require.NoError(t, err)
	assert.True(t, ok, "alice's use of dev-a is kept")
}

// Under deny (no Sole) a batch's own scripts meet NOSCRIPT too, and the
// batch is replayed whole with the index calls in it: a use refused is
// counted once, by the replay.
func TestClientIDsIndexNoScriptReplayCountsOnce(t *testing.T) {
	s, _ := storeWithIDsMax(t, 1)
	ctx := context.Background()
	flushUnseen(t, s)
	now := time.Now().UnixMilli()
	a := Conn{ID: "i1-1", Instance: "i1", Principal: "alice", IP: "192.0.2.1", ConnectedMs: now}
	b := Conn{ID: "i1-2", Instance: "i1", Principal: "alice", IP: "192.0.2.1", ConnectedMs: now + 1}
	_, err := s.WriteConns(ctx, []ConnWrite{
		{ClientID: "dev-a", Instance: "i1", Live: &a, Seen: &a, Read: true},
		{ClientID: "dev-b", Instance: "i1", Live: &b, Seen: &b, Read: true},
	}, time.Hour)
	require.NoError(t, err)
	assert.EqualValues(t, 1, s.RefusedUses())
	ok, err := s.rdb.HExists(ctx, s.kb.Seen("dev-b"), "alice").Result()
	require.NoError(t, err)
	assert.False(t, ok, "alice's refused use of dev-b is removed")
}

// An index call's own error other than NOSCRIPT fails the batch, as any
// write's does (atk85: f5127af skipped every index call when judging a
// failed batch, so with the index key unusable, WRONGTYPE here, every use
// was kept past the bound and WriteConns reported success: nothing was
// retried or told).
func TestClientIDsIndexErrorFailsTheBatch(t *testing.T) {
	s, _ := storeWithIDsMax(t, 1)
	ctx := context.Background()
	require.NoError(t, s.rdb.Set(ctx, s.kb.ClientIDs("alice"), "x", 0).Err())
	now := time.Now().UnixMilli()
	var ws []ConnWrite
	for i := range 3 {
		c := Conn{ID: "i1-" + strconv.Itoa(i+1), Instance: "i1", Principal: "alice", IP: "192.0.2.1", ConnectedMs: now + int64(i), DisconnectedMs: now + int64(i) + 1}
		ws = append(ws, ConnWrite{ClientID: "dev" + strconv.Itoa(i), Instance: "i1", Live: &c, Seen: &c, Ended: true, Sole: true})
	}
	for _, flush := range []bool{false, true} {
		if flush {
			flushUnseen(t, s)
		}
		_, err := s.WriteConns(ctx, ws, time.Hour)
		require.Error(t, err, "flush=%v: every index call failed, WriteConns reported success", flush)
		assert.Contains(t, err.Error(), "WRONGTYPE", "flush=%v", flush)
	}
}

// atk86Batch is a batch under flag: carol's disconnect (leftScript), then
// alice's and bob's connects of one client ID (client ID "dev-a<at>").
func atk86Batch(at int64) []ConnWrite {
	carol := Conn{ID: "i1-1", Instance: "i1", Principal: "carol", IP: "192.0.2.3", ConnectedMs: at}
	end := carol
	end.DisconnectedMs = at + 10
	alice := Conn{ID: "i1-2", Instance: "i1", Principal: "alice", IP: "192.0.2.1", ConnectedMs: at + 1, DisconnectedMs: at + 2}
	bob := Conn{ID: "i1-3", Instance: "i1", Principal: "bob", IP: "192.0.2.2", ConnectedMs: at + 3, DisconnectedMs: at + 4}
	id := "dev-a" + strconv.FormatInt(at, 10)
	return []ConnWrite{
		{ClientID: "dev-c", Instance: "i1", Gone: &carol, Unlist: true, Left: &end, Sole: true, Check: true},
		{ClientID: id, Instance: "i1", Live: &alice, Seen: &alice, Read: true, Ended: true, Sole: true},
		{ClientID: id, Instance: "i1", Live: &bob, Seen: &bob, Read: true, Ended: true, Sole: true},
	}
}

// checkInOrder writes atk86Batch(at) and checks that alice's connect read
// only what was written before it: no replay of the batch (a replay's
// reads see its later writes of the first attempt, and one conflict was
// reported twice).
func checkInOrder(t *testing.T, s *Store, what string, at int64) {
	t.Helper()
	out, err := s.WriteConns(context.Background(), atk86Batch(at), time.Hour)
	require.NoError(t, err, what)
	var first []string
	for _, c := range out[1].Seen {
		first = append(first, c.Principal)
	}
	assert.Equal(t, []string{"alice"}, first, "%s: alice's connect read bob's use, written after it (the batch was replayed)", what)
	assert.Len(t, out[2].Seen, 2, what)
}

// The first batch a fresh Redis sees, under flag, with a disconnect in it
// (leftScript) and two connects of one client ID: eval sends each script by
// its source until Redis answered one such call, so no NOSCRIPT and no
// replay (atk85: with only the index's NOSCRIPT kept out of the replay,
// leftScript's still replayed it). Then by hash.
func TestScriptsSentBySourceFirst(t *testing.T) {
	s, _ := storeWithIDsMax(t, 10)
	checkInOrder(t, s, "a fresh Redis", time.Now().UnixMilli())
	for _, sc := range []scriptArgs{leftArgs, idsArgs} {
		assert.True(t, s.clients.sent[sc.id].Load(), "script %d not marked sent", sc.id)
	}
	assert.Zero(t, s.clients.bySource.Load(), "calls by source left to look for")
}

// A Redis restart that go-redis's retries ride through (no error to the
// caller, none to the health probe: atk86) leaves the background client's
// new connection to an empty script cache. Its new connections load the
// scripts before their first command (loadScripts), so the tracker's next
// batch, its EVALSHAs queued before the restart was found, meets no
// NOSCRIPT and is not replayed.
func TestRestartUnseenLoadsScripts(t *testing.T) {
	s0, r := storeWithIDsMax(t, 10)
	s := s0.Background()
	now := time.Now().UnixMilli()
	checkInOrder(t, s, "before the restart", now)
	r.Restart()
	checkInOrder(t, s, "after a restart", now+100)
}

// loadScripts (a new connection's) sends each script with no keys: Redis
// caches it, and no key is read or written, and a user whose ACL allows the
// plugin's keys alone is refused nothing (its ACL LOG stays empty).
func TestLoadScriptsTouchesNothing(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("ACL", "SETUSER", "g", "on", ">pw", "~guard:*", "~rate:guard:*", "&*", "-@all", "+eval", "+evalsha", "+@read", "+@write", "+ping", "+time")
	s := New(Options{Addrs: []string{r.Addr}, Username: "g", Password: "pw", Timeout: time.Second, Tracking: true}, keys.Builder{Prefix: "guard:"}).Background()
	t.Cleanup(func() { s.Close() })
	ctx := context.Background()
	r.CLI("ACL", "LOG", "RESET")
	require.NoError(t, s.Ping(ctx))
	for _, sc := range evalArgs {
		assert.Equal(t, "1", strings.TrimSpace(r.CLI("SCRIPT", "EXISTS", sc.sha.(string))), "script %d not loaded", sc.id)
	}
	assert.Equal(t, "0", strings.TrimSpace(r.CLI("DBSIZE")), "a key was written")
	assert.Empty(t, strings.TrimSpace(r.CLI("ACL", "LOG")), "the user was refused something")
}

// An index call that met NOSCRIPT in a batch that failed for another
// reason (another client ID's key WRONGTYPE) is sent again all the same:
// the conflict worker retries only a failed batch's disconnects, so the
// connect's use, written, was left unindexed past the bound (atk86).
func TestClientIDsIndexSentAgainWhenTheBatchFailed(t *testing.T) {
	s, _ := storeWithIDsMax(t, 1)
	ctx := context.Background()
	require.NoError(t, s.rdb.Set(ctx, s.kb.Seen("dev-x"), "x", 0).Err())
	flushUnseen(t, s)
	now := time.Now().UnixMilli()
	a := Conn{ID: "i1-1", Instance: "i1", Principal: "alice", IP: "192.0.2.1", ConnectedMs: now, DisconnectedMs: now + 1}
	x := Conn{ID: "i1-2", Instance: "i1", Principal: "bob", IP: "192.0.2.2", ConnectedMs: now + 2, DisconnectedMs: now + 3}
	_, err := s.WriteConns(ctx, []ConnWrite{
		{ClientID: "dev-a", Instance: "i1", Live: &a, Seen: &a, Ended: true, Sole: true},
		{ClientID: "dev-x", Instance: "i1", Live: &x, Seen: &x, Ended: true, Sole: true},
	}, time.Hour)
	require.Error(t, err)
	b := Conn{ID: "i1-3", Instance: "i1", Principal: "alice", IP: "192.0.2.1", ConnectedMs: now + 4, DisconnectedMs: now + 5}
	_, err = s.WriteConns(ctx, []ConnWrite{{ClientID: "dev-b", Instance: "i1", Live: &b, Seen: &b, Ended: true, Sole: true}}, time.Hour)
	require.NoError(t, err)
	var held []string
	for _, id := range []string{"dev-a", "dev-b"} {
		ok, err := s.rdb.HExists(ctx, s.kb.Seen(id), "alice").Result()
		require.NoError(t, err)
		if ok {
			held = append(held, id)
		}
	}
	assert.Equal(t, []string{"dev-a"}, held, "alice's uses with conflict_clientids_max 1")
}

// Once the calls by source were answered, markSent looks at no batch
// again: under flag, where liveScript and seenScript are never called, it
// walked every batch's commands for ever (atk86).
func TestMarkSentSettles(t *testing.T) {
	s, _ := storeWithIDsMax(t, 10)
	now := time.Now().UnixMilli()
	for i := range 3 {
		checkInOrder(t, s, "batch "+strconv.Itoa(i), now+int64(i)*100)
	}
	assert.Zero(t, s.clients.bySource.Load())
	assert.False(t, s.clients.sent[liveArgs.id].Load(), "liveScript is not called under flag")
	allocs := testing.AllocsPerRun(100, func() { s.markSent(nil) })
	assert.Zero(t, allocs)
}

// flushUnseen empties Redis's script cache while s believes every script
// loaded (a SCRIPT FLUSH, or a restart, that s did not see): its next
// batch meets NOSCRIPT.
func flushUnseen(t *testing.T, s *Store) {
	t.Helper()
	require.NoError(t, s.rdb.ScriptFlush(context.Background()).Err())
	for i := range s.clients.sent {
		s.clients.sent[i].Store(true)
	}
}

// A Redis busy in a script (or loading its data after a restart) refuses
// the new connection's loading calls and the batch's calls by source
// before compiling them: neither counts as loaded. Before (atk87): the
// new connection's refusals were ignored, the scripts kept for sent from
// before the restart, and a refusal of a call by source marked its script
// sent; once Redis ran scripts again, the next batch met NOSCRIPT and was
// replayed whole.
func TestScriptsNotCountedLoadedWhenRefused(t *testing.T) {
	r := testenv.StartRedis(t, "--busy-reply-threshold", "50")
	s := New(Options{Addrs: []string{r.Addr}, Timeout: time.Second, BackgroundTimeout: 2 * time.Second, ClientIDsMax: 10, Tracking: true}, keys.Builder{Prefix: "guard:"}).Background()
	t.Cleanup(func() { s.Close() })
	now := time.Now().UnixMilli()
	checkInOrder(t, s, "before the restart", now)
	r.Restart()
	busy := make(chan struct{})
	go func() {
		defer close(busy)
		_, _ = r.TryCLI("EVAL", "while true do end", "0")
	}()
	require.Eventually(t, func() bool {
		out, _ := r.TryCLI("PING")
		return strings.Contains(out, "BUSY")
	}, 5*time.Second, 20*time.Millisecond, "Redis not busy")
	_, err := s.WriteConns(context.Background(), atk86Batch(now+50), time.Hour)
	require.Error(t, err, "a batch while Redis is busy")
	t.Logf("while busy: %v", err)
	_, _ = r.TryCLI("SCRIPT", "KILL")
	<-busy
	checkInOrder(t, s, "after the busy script", now+100)
}
