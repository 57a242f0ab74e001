package store

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

func TestWriteConns(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	old := Conn{ID: "i1-1", Instance: "i1", Broker: "b", Principal: "alice", IP: "192.0.2.1", ConnectedMs: 1000}
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "dev:1", Instance: "i1", Live: &old, Seen: &old}}, time.Hour))
	live, seen, err := state(s, "dev:1")
	require.NoError(t, err)
	require.Len(t, live, 1)
	require.Len(t, seen, 1)
	assert.Equal(t, "1", r.CLI("SCARD", "guard:brokerconns:i1"))

	// Another broker's newer connection of alice: our disconnect must not overwrite its record.
	other := Conn{ID: "i2-1", Instance: "i2", Principal: "alice", ConnectedMs: 1500}
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "dev:1", Instance: "i2", Live: &other, Seen: &other}}, time.Hour))
	left := old
	left.DisconnectedMs = 2000
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "dev:1", Instance: "i1", Gone: &left, Unlist: true, Left: &left}}, time.Hour))
	live, seen, err = state(s, "dev:1")
	require.NoError(t, err)
	require.Len(t, live, 1)
	assert.Equal(t, "i2-1", live[0].ID)
	assert.Equal(t, "i2-1", seen[0].ID, "a stale disconnect leaves the newer record")
	assert.Equal(t, "0", r.CLI("SCARD", "guard:brokerconns:i1"))

	// Our own disconnect is recorded when the record is ours.
	left2 := other
	left2.DisconnectedMs = 3000
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "dev:1", Instance: "i2", Gone: &left2, Unlist: true, Left: &left2}}, time.Hour))
	live, seen, err = state(s, "dev:1")
	require.NoError(t, err)
	assert.Empty(t, live)
	assert.EqualValues(t, 3000, seen[0].DisconnectedMs)
	assert.NotEqual(t, "-1", r.CLI("TTL", "guard:seen:dev:1"), "seen expires after the conflict window")
}

func TestLeaseAndReap(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	long := strings.Repeat("q", 20000)
	for _, id := range []string{"a", "b*", long} {
		dead, alive := Conn{ID: "dead-1", Instance: "dead", Principal: "p", ConnectedMs: 1}, Conn{ID: "alive-1", Instance: "alive", Principal: "p", ConnectedMs: 1}
		require.NoError(t, writeConns(ctx, s, []ConnWrite{
			{ClientID: id, Instance: "dead", Live: &dead}, {ClientID: id, Instance: "alive", Live: &alive},
		}, time.Hour))
	}
	l, err := s.RenewLease(ctx, "dead", 50*time.Millisecond)
	require.NoError(t, err)
	assert.True(t, l.Live["dead"])
	assert.True(t, l.Lapsed, "a first renewal adds the instance")
	time.Sleep(80 * time.Millisecond)
	l, err = s.RenewLease(ctx, "alive", time.Minute)
	require.NoError(t, err)
	assert.False(t, l.Live["dead"])
	assert.True(t, l.Live["alive"])
	assert.Equal(t, []string{"dead"}, l.Dead)
	require.NoError(t, s.Reap(ctx, "dead", 2, 0, time.Hour))
	require.NoError(t, s.Reap(ctx, "dead", 2, 0, time.Hour), "reaping twice is harmless")
	for _, id := range []string{"a", "b*", long} {
		l, _, err := state(s, id)
		require.NoError(t, err)
		require.Len(t, l, 1)
		assert.Equal(t, "alive", l[0].Instance)
	}
	assert.Equal(t, "0", r.CLI("EXISTS", "guard:brokerconns:dead"))
	assert.Equal(t, "", r.CLI("ZSCORE", "guard:brokers", "dead"))
}

// Each connection that takes a client ID over counts once, up to the
// limit (takeover_limit): the hash keeps at most that many connections.
// The window runs from the first.
func TestCountTakeover(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	for want := int64(1); want <= 3; want++ {
		n, err := s.CountTakeover(ctx, "dev", "c"+strconv.FormatInt(want, 10), 200*time.Millisecond, 3)
		require.NoError(t, err)
		assert.Equal(t, want, n)
	}
	n, err := s.CountTakeover(ctx, "dev", "c3", 200*time.Millisecond, 3)
	require.NoError(t, err)
	assert.EqualValues(t, 3, n, "the same connection again: not counted twice")
	for range 5 {
		n, err = s.CountTakeover(ctx, "dev", "c"+strconv.Itoa(10+int(n)), 200*time.Millisecond, 3)
		require.NoError(t, err)
		assert.EqualValues(t, 3, n, "at the limit")
	}
	assert.Equal(t, "3", r.CLI("HLEN", "guard:takeoverconns:dev"), "no more than the limit kept")
	assert.NotEqual(t, "-1", r.CLI("PTTL", "guard:takeoverconns:dev"))
	time.Sleep(250 * time.Millisecond)
	n, err = s.CountTakeover(ctx, "dev", "c4", 200*time.Millisecond, 3)
	require.NoError(t, err)
	assert.EqualValues(t, 1, n, "a new window")
}

// writeConns is WriteConns for tests that read nothing back.
func writeConns(ctx context.Context, s *Store, ws []ConnWrite, window time.Duration) error {
	_, err := s.WriteConns(ctx, ws, window)
	return err
}

func state(s *Store, id string) (live, seen []Conn, err error) {
	m, err := s.clientIDStates(context.Background(), []string{id})
	return m[id].Live, m[id].Seen, err
}

// After SCRIPT FLUSH (a restarted or new node) the batch still applies.
func TestWriteConnsSurvivesScriptFlush(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	c := Conn{ID: "i-1", Instance: "i", Principal: "p", ConnectedMs: 1}
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "x", Instance: "i", Live: &c, Seen: &c}}, time.Hour))
	r.CLI("SCRIPT", "FLUSH")
	c.DisconnectedMs = 2
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "x", Instance: "i", Gone: &c, Unlist: true, Left: &c}}, time.Hour))
	live, seen, err := state(s, "x")
	require.NoError(t, err)
	assert.Empty(t, live)
	assert.EqualValues(t, 2, seen[0].DisconnectedMs)
}

// Client IDs and usernames are the client's choice, up to 65 535 bytes each,
// and tracking keeps them for the conflict window: keys, fields, members and
// values stay bounded, and one long client ID still maps to one set of keys.
func TestWriteConnsBoundsClientChosenValues(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	id := strings.Repeat("C", 65535)
	h := keys.Tracking(id)
	user := keys.Tracking(strings.Repeat("U", 65535)) // as the plugin passes a principal
	raw := strings.Repeat("V", 65535)                 // a caller that forgot: hashed all the same
	a := Conn{ID: "i1-1", Instance: "i1", Broker: "b", Principal: user, IP: "192.0.2.1", ConnectedMs: 1000}
	b := Conn{ID: "i2-1", Instance: "i2", Broker: "b", Principal: raw, IP: "192.0.2.2", ConnectedMs: 1500}
	require.NoError(t, writeConns(ctx, s, []ConnWrite{
		{ClientID: id, Instance: "i1", Live: &a, Seen: &a},
		{ClientID: id, Instance: "i2", Live: &b, Seen: &b},
	}, time.Hour))

	assert.Equal(t, "2", r.CLI("HLEN", "guard:conn:"+h))
	assert.Equal(t, "2", r.CLI("HLEN", "guard:seen:"+h))
	assert.Equal(t, h, r.CLI("SMEMBERS", "guard:brokerconns:i1"))
	assert.ElementsMatch(t, []string{user, keys.Tracking(raw)}, strings.Split(r.CLI("HKEYS", "guard:seen:"+h), "\n"))
	assertBounded(t, s)

	live, seen, err := state(s, id)
	require.NoError(t, err)
	require.Len(t, live, 2)
	require.Len(t, seen, 2)
	assert.Equal(t, keys.Tracking(raw), live[0].Principal)
	assert.Equal(t, user, seen[1].Principal, "a principal in its Tracking form is stored as it is")
	lc, err := s.LiveConns(ctx, id)
	require.NoError(t, err)
	assert.Len(t, lc, 2)

	// The disconnect of the long principal finds its record.
	left := b
	left.DisconnectedMs = 2000
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: id, Instance: "i2", Gone: &left, Unlist: true, Left: &left}}, time.Hour))
	live, seen, err = state(s, id)
	require.NoError(t, err)
	assert.Len(t, live, 1)
	assert.EqualValues(t, 2000, seen[0].DisconnectedMs)
	assert.Equal(t, "0", r.CLI("SCARD", "guard:brokerconns:i2"))

	// A short client ID that reads like the hash has keys of its own.
	c := Conn{ID: "i1-2", Instance: "i1", Principal: "p", ConnectedMs: 3000}
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: h, Instance: "i1", Live: &c, Seen: &c}}, time.Hour))
	live, _, err = state(s, h)
	require.NoError(t, err)
	require.Len(t, live, 1)
	assert.Equal(t, "i1-2", live[0].ID)
	live, _, err = state(s, id)
	require.NoError(t, err)
	require.Len(t, live, 1)
	assert.Equal(t, "i1-1", live[0].ID)

	n, err := s.CountTakeover(ctx, id, "i1-2", time.Minute, 3)
	require.NoError(t, err)
	assert.EqualValues(t, 1, n)
	assert.Equal(t, "1", r.CLI("HLEN", "guard:takeoverconns:"+h))

	// Reaping a broker clears its long client IDs by their stored form.
	require.NoError(t, s.Reap(ctx, "i1", 2, 0, time.Hour))
	live, _, err = state(s, id)
	require.NoError(t, err)
	assert.Empty(t, live)
	assertBounded(t, s)
}

// assertBounded checks that no key, hash field, set member or hash value
// in Redis is sized by a client: keys, fields and members at most 300
// bytes, values at most 1 KB.
func assertBounded(t *testing.T, s *Store) {
	t.Helper()
	ctx := context.Background()
	rdb := s.Client()
	iter := rdb.Scan(ctx, 0, "*", 1000).Iterator()
	n := 0
	for iter.Next(ctx) {
		k := iter.Val()
		n++
		assert.LessOrEqual(t, len(k), 300, "key %.60q", k)
		switch rdb.Type(ctx, k).Val() {
		case "hash":
			for f, v := range rdb.HGetAll(ctx, k).Val() {
				assert.LessOrEqual(t, len(f), 300, "field of %.60q", k)
				assert.LessOrEqual(t, len(v), 1024, "value of %.60q: %.60q", k, v)
			}
		case "set":
			for _, m := range rdb.SMembers(ctx, k).Val() {
				assert.LessOrEqual(t, len(m), 300, "member of %.60q", k)
			}
		}
	}
	require.NoError(t, iter.Err())
	assert.NotZero(t, n)
}

// TestTrackingMemoryPerConnection measures what conflict tracking keeps in
// Redis per connection when clients choose the largest values: live (conn
// hash, seen hash, brokerconns member), then after the disconnect (the seen
// entry, kept for the conflict window). Run with -v for the figures.
func TestTrackingMemoryPerConnection(t *testing.T) {
	const n = 2000
	cases := []struct {
		name       string
		id         func(int) string
		principal  string
		live, kept int64 // bounds, bytes per connection
	}{
		{"65535-byte client ID and username (hashed)",
			func(i int) string { return fmt.Sprintf("%05d", i) + strings.Repeat("C", 65530) },
			keys.Tracking(strings.Repeat("U", 65535)), 2048, 1024},
		{"256-byte client ID and username of '\"' (stored as they are; JSON doubles the username)",
			func(i int) string { return fmt.Sprintf("%05d", i) + strings.Repeat(`\`, 251) },
			strings.Repeat(`"`, 256), 4096, 2304}, // 2 048 before the principal's client-ID index (its entry: ~0.4 KB)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := newStore(t, "guard:")
			ctx := context.Background()
			memory := func() int64 {
				info := s.Client().Info(ctx, "memory").Val()
				field := func(name string) int64 {
					for _, l := range strings.Split(info, "\n") {
						if v, ok := strings.CutPrefix(strings.TrimSpace(l), name+":"); ok {
							n, _ := strconv.ParseInt(v, 10, 64)
							return n
						}
					}
					t.Fatalf("no %s", name)
					return 0
				}
				return field("used_memory") - field("mem_clients_normal")
			}
			conn := func(i int) Conn {
				return Conn{ID: fmt.Sprintf("0123456789ab-%d", i+1000), Instance: "0123456789ab", Broker: "broker-1",
					Principal: tc.principal, IP: "192.0.2.1", ConnectedMs: 1_796_000_000_000 + int64(i)}
			}
			write := func(w func(i int) ConnWrite) {
				for i := 0; i < n; i += 500 {
					var ws []ConnWrite
					for j := i; j < i+500 && j < n; j++ {
						ws = append(ws, w(j))
					}
					require.NoError(t, writeConns(ctx, s, ws, 31*24*time.Hour))
				}
			}
			// Load the script and make the set before measuring.
			warm := Conn{ID: "w-1", Instance: "0123456789ab", Principal: "p"}
			require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "warm", Instance: "0123456789ab", Live: &warm, Seen: &warm, Left: &warm}}, time.Hour))
			time.Sleep(100 * time.Millisecond)

			before := memory()
			write(func(i int) ConnWrite {
				c := conn(i)
				return ConnWrite{ClientID: tc.id(i), Instance: c.Instance, Live: &c, Seen: &c}
			})
			live := (memory() - before) / n
			write(func(i int) ConnWrite {
				c := conn(i)
				c.DisconnectedMs = c.ConnectedMs + 1
				return ConnWrite{ClientID: tc.id(i), Instance: c.Instance, Gone: &c, Unlist: true, Left: &c}
			})
			kept := (memory() - before) / n
			t.Logf("%s: %d bytes per live connection, %d bytes kept per client ID and principal after it", tc.name, live, kept)
			assert.Less(t, live, tc.live)
			assert.Less(t, kept, tc.kept)
			assertBounded(t, s)
		})
	}
}

// clientIDStates reads the state of several client IDs in one round trip:
// a plain read, for the tests (conflict detection reads what it records in
// the same step: WriteConns with Read, Claim).
func (s *Store) clientIDStates(ctx context.Context, ids []string) (map[string]State, error) {
	type cmds struct{ live, seen *redis.MapStringStringCmd }
	pending := make(map[string]cmds, len(ids))
	pipe := s.rdb.Pipeline()
	for _, id := range ids {
		if _, ok := pending[id]; !ok {
			pending[id] = cmds{pipe.HGetAll(ctx, s.kb.Conn(id)), pipe.HGetAll(ctx, s.kb.Seen(id))}
		}
	}
	if len(pending) == 0 {
		return map[string]State{}, nil
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("store: client id state: %w", err)
	}
	out := make(map[string]State, len(pending))
	for id, c := range pending {
		out[id] = State{Live: decodeConns(c.live.Val()), Seen: decodeConns(c.seen.Val())}
	}
	return out, nil
}

// A connect's read is the live hash as an HGETALL after its record returns
// it (the script reads the hash once and applies its record to what it
// read): its own entry replaced, a newer one of its instance kept, the
// other instances' entries as they are.
func TestWriteConnsReadIsHashAfterRecord(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	other := Conn{ID: "i2-4", Instance: "i2", Principal: "bob", ConnectedMs: 1}
	newer := Conn{ID: "i1-5", Instance: "i1", Principal: "alice", ConnectedMs: 2}
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "d", Instance: "i2", Live: &other}, {ClientID: "d", Instance: "i1", Live: &newer}}, time.Hour))
	hash := func() []Conn {
		var list []any
		for _, v := range strings.Split(r.CLI("HGETALL", "guard:conn:d"), "\n") {
			list = append(list, v)
		}
		return decodeConnList(list)
	}
	for _, tc := range []struct {
		c    Conn
		want []string
	}{
		{Conn{ID: "i1-3", Instance: "i1", Principal: "alice", ConnectedMs: 3}, []string{"i1-5", "i2-4"}}, // older: not recorded
		{Conn{ID: "i1-7", Instance: "i1", Principal: "alice", ConnectedMs: 4}, []string{"i1-7", "i2-4"}},
		{Conn{ID: "i3-1", Instance: "i3", Principal: "carol", ConnectedMs: 5}, []string{"i3-1", "i1-7", "i2-4"}},
	} {
		c := tc.c
		st, err := s.WriteConns(ctx, []ConnWrite{{ClientID: "d", Instance: c.Instance, Live: &c, Read: true}}, time.Hour)
		require.NoError(t, err)
		var ids []string
		for _, x := range st[0].Live {
			ids = append(ids, x.ID)
		}
		assert.Equal(t, tc.want, ids, "after %s", c.ID)
		assert.Equal(t, hash(), st[0].Live, "the reply is the hash after %s", c.ID)
	}
}

// With Sole (clientid_conflict flag: plain commands instead of scripts) the
// same events store the same bytes, with the same expiry, and read back the
// same states as with the scripts.
func TestWriteConnsSoleStoresTheSame(t *testing.T) {
	ctx := context.Background()
	run := func(sole bool) (map[string]string, []State) {
		s, _ := newStore(t, "guard:")
		a := Conn{ID: "i1-1", Instance: "i1", Broker: "edge-1", Principal: "alice", IP: "192.0.2.1", ConnectedMs: 1000}
		b := Conn{ID: "i1-2", Instance: "i1", Broker: "edge-1", Principal: "bob", IP: "192.0.2.2", ConnectedMs: 2000}
		long := Conn{ID: "i1-3", Instance: "i1", Broker: "edge-1", Principal: strings.Repeat("p", 300), IP: "192.0.2.3", ConnectedMs: 3000}
		other := Conn{ID: "i2-1", Instance: "i2", Broker: "edge-2", Principal: "carol", IP: "192.0.2.4", ConnectedMs: 1500}
		var states []State
		for _, ws := range [][]ConnWrite{
			{{ClientID: "dev", Instance: "i2", Live: &other, Seen: &other, Read: true}},
			{{ClientID: "dev", Instance: "i1", Live: &a, Seen: &a, Read: true, Sole: sole}},
			{{ClientID: "dev", Instance: "i1", Live: &b, Seen: &b, Read: true, Sole: sole},
				{ClientID: "dev", Instance: "i1", Gone: &a, Left: &a}},
			{{ClientID: "dev", Instance: "i1", Live: &long, Seen: &long, Read: true, Sole: sole},
				{ClientID: "dev", Instance: "i1", Gone: &b, Left: &b}},
			{{ClientID: "dev", Instance: "i1", Gone: &long, Unlist: true, Left: &long, Sole: sole},
				{ClientID: "dev2", Instance: "i1", Live: &a, Seen: &a, Read: true, Sole: sole}},
		} {
			st, err := s.WriteConns(ctx, ws, time.Hour)
			require.NoError(t, err)
			states = append(states, st...)
		}
		dump := map[string]string{}
		for _, k := range []string{s.kb.Conn("dev"), s.kb.Seen("dev"), s.kb.Conn("dev2"), s.kb.Seen("dev2"), s.kb.BrokerConns("i1"), s.kb.BrokerConns("i2")} {
			typ := s.rdb.Type(ctx, k).Val()
			v := typ
			switch typ {
			case "hash":
				v += fmt.Sprint(s.rdb.HGetAll(ctx, k).Val())
			case "set":
				v += fmt.Sprint(s.rdb.SMembers(ctx, k).Val())
			}
			switch ttl := s.rdb.PTTL(ctx, k).Val(); {
			case ttl < 0:
				v += " no expiry"
			case ttl > time.Hour-time.Minute:
				v += " expires in the window"
			default:
				v += " expires early: " + ttl.String()
			}
			dump[k] = v
		}
		return dump, states
	}
	scriptDump, scriptStates := run(false)
	soleDump, soleStates := run(true)
	assert.Equal(t, scriptDump, soleDump)
	assert.Equal(t, scriptStates, soleStates)
	assert.Contains(t, scriptDump[keys.Builder{Prefix: "guard:"}.Seen("dev")], "carol")
}

// An Ended write (a connection whose disconnect the caller folded in, under
// clientid_conflict flag) stores what its pair of writes stores: the same
// seen record (the final one), the same expiry, no live field of its
// instance and no brokerconns member; it reads the live hash as the pair's
// connect read it but for its own field, and the seen hash as it is after
// its record (the pair read its record before its end). It costs 9 Redis
// commands instead of 21 (each with the principal's client-ID index's 4 a
// use written);
// without Sole the seen record is the script's.
func TestWriteConnsEnded(t *testing.T) {
	ctx := context.Background()
	other := Conn{ID: "i2-1", Instance: "i2", Broker: "edge-2", Principal: "carol", IP: "192.0.2.4", ConnectedMs: 1500}
	a := Conn{ID: "i1-1", Instance: "i1", Broker: "edge-1", Principal: strings.Repeat("a", 300), IP: "192.0.2.1", ConnectedMs: 2000}
	end := a
	end.DisconnectedMs = 2500
	type result struct {
		dump  map[string]string
		state State
		cmds  int64
	}
	run := func(ended, sole bool) result {
		s, r := newStore(t, "guard:")
		warm := Conn{ID: "i9-1", Instance: "i9", Principal: "x"} // every script loaded
		_, err := s.WriteConns(ctx, []ConnWrite{{ClientID: "dev", Instance: "i2", Live: &other, Seen: &other, Read: true},
			{ClientID: "warm", Instance: "i9", Gone: &warm, Left: &warm}}, time.Hour)
		require.NoError(t, err)
		before, _ := commandsRun(t, r)
		var st []State
		if ended {
			st, err = s.WriteConns(ctx, []ConnWrite{{ClientID: "dev", Instance: "i1", Live: &a, Seen: &end, Read: true, Sole: sole, Ended: true}}, time.Hour)
		} else {
			st, err = s.WriteConns(ctx, []ConnWrite{
				{ClientID: "dev", Instance: "i1", Live: &a, Seen: &a, Read: true, Sole: sole},
				{ClientID: "dev", Instance: "i1", Gone: &a, Unlist: true, Left: &end, Sole: sole},
			}, time.Hour)
		}
		require.NoError(t, err)
		after, _ := commandsRun(t, r)
		dump := map[string]string{}
		for _, k := range []string{s.kb.Conn("dev"), s.kb.Seen("dev"), s.kb.BrokerConns("i1"), s.kb.BrokerConns("i2")} {
			v := s.rdb.Type(ctx, k).Val()
			switch v {
			case "hash":
				v += fmt.Sprint(s.rdb.HGetAll(ctx, k).Val())
			case "set":
				v += fmt.Sprint(s.rdb.SMembers(ctx, k).Val())
			}
			if ttl := s.rdb.PTTL(ctx, k).Val(); ttl > time.Hour-time.Minute {
				v += " expires in the window"
			} else {
				v += " ttl " + ttl.String()
			}
			dump[k] = v
		}
		return result{dump, st[0], after - before}
	}
	kb := keys.Builder{Prefix: "guard:"}
	for _, sole := range []bool{true, false} {
		pair, fold := run(false, sole), run(true, sole)
		assert.Equal(t, pair.dump, fold.dump, "sole=%v", sole)
		assert.NotContains(t, fold.dump[kb.Conn("dev")], `"i1-1"`, "no live field of i1")
		assert.Contains(t, fold.dump[kb.Seen("dev")], `"disconnected_ms":2500`)
		assert.Equal(t, "none ttl -2ns", fold.dump[kb.BrokerConns("i1")], "no brokerconns member")
		var pairLive []Conn
		for _, c := range pair.state.Live {
			if c.Instance != "i1" {
				pairLive = append(pairLive, c)
			}
		}
		assert.Equal(t, pairLive, fold.state.Live, "the live hash but for its own field")
		assert.Equal(t, []Conn{end.bounded(), other}, fold.state.Seen, "sole=%v", sole)
		if sole {
			// +4 for each use written since atk82: the index of its
			// principal's client IDs (EVALSHA, ZCARD, ZADD, PEXPIRE), at the
			// connect and at the end.
			assert.EqualValues(t, 21, pair.cmds, "12, the end's PEXPIRE, and the index twice")
			assert.EqualValues(t, 9, fold.cmds)
		}
	}
}

// A connection's end (Left) is its principal's latest use: written over
// its own record, over nothing (the seen hash expired while it lasted
// longer than the window: before, its end was lost), and over another
// connection's record that ended before it (a quick reconnect that found
// the use freshly recorded: before, the older end stood for as long as it
// lasted); kept: a live record of another connection, and one that ended
// later. The hash's TTL is renewed to the window from the end. A
// principal's bytes that spell the ended field cannot fool the script.
func TestWriteConnsLeftIsTheLatestUse(t *testing.T) {
	ctx := context.Background()
	s, r := newStore(t, "guard:")
	key := s.kb.Seen("dev")
	ended := func(id string, p string, at, end int64) Conn {
		return Conn{ID: id, Instance: "i1", Broker: "edge-1", Principal: p, IP: "192.0.2.1", ConnectedMs: at, DisconnectedMs: end}
	}
	left := func(c Conn) {
		_, err := s.WriteConns(ctx, []ConnWrite{{ClientID: "dev", Instance: "i1", Left: &c}}, time.Hour)
		require.NoError(t, err)
	}
	seen := func(p string) Conn {
		st, err := s.rdb.HGet(ctx, key, bound(p)).Result()
		require.NoError(t, err)
		cs := appendDecoded(nil, st)
		require.Len(t, cs, 1)
		return cs[0]
	}
	// Nothing there: recorded, with the window's TTL.
	left(ended("i1-1", "alice", 1000, 5000))
	assert.Equal(t, int64(5000), seen("alice").DisconnectedMs)
	ttl := r.CLI("PTTL", key)
	assert.Greater(t, len(ttl), 6, "a TTL of about an hour: %s", ttl)
	// Another connection of alice that ended before: replaced.
	left(ended("i1-2", "alice", 4000, 9000))
	assert.Equal(t, "i1-2", seen("alice").ID)
	// One that ended before the stored end: kept.
	left(ended("i1-3", "alice", 2000, 7000))
	assert.Equal(t, "i1-2", seen("alice").ID)
	// A live record of another connection: kept (it writes its own end).
	live := ended("i2-9", "alice", 9500, 0)
	_, err := s.WriteConns(ctx, []ConnWrite{{ClientID: "dev", Instance: "i2", Seen: &live}}, time.Hour)
	require.NoError(t, err)
	left(ended("i1-4", "alice", 8000, 12000))
	assert.Equal(t, "i2-9", seen("alice").ID)
	// Its own record: replaced by its end.
	left(ended("i2-9", "alice", 9500, 13000))
	assert.Equal(t, int64(13000), seen("alice").DisconnectedMs)
	// A principal whose bytes spell an early end: a live record of it is
	// still live to the script.
	sly := `x","disconnected_ms":1,"y":"`
	liveSly := ended("i3-1", sly, 20000, 0)
	_, err = s.WriteConns(ctx, []ConnWrite{{ClientID: "dev", Instance: "i3", Seen: &liveSly}}, time.Hour)
	require.NoError(t, err)
	left(ended("i3-0", sly, 10000, 15000))
	assert.Equal(t, "i3-1", seen(sly).ID, "kept: live, whatever its bytes say")
}

// RenewLease says when the instance's lease had lapsed: gone (a reap's
// end, a flush) or run out (a reap may be under way), and not when it
// updated a lease that ran.
func TestRenewLeaseTellsALapsedLease(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	l, err := s.RenewLease(ctx, "i", time.Minute)
	require.NoError(t, err)
	assert.True(t, l.Lapsed, "the first renewal")
	l, err = s.RenewLease(ctx, "i", time.Minute)
	require.NoError(t, err)
	assert.False(t, l.Lapsed, "a lease that runs is updated")
	require.NoError(t, s.Reap(ctx, "i", time.Now().UnixMilli(), 0, time.Hour)) // its lease goes
	l, err = s.RenewLease(ctx, "i", time.Minute)
	require.NoError(t, err)
	assert.True(t, l.Lapsed, "after a reap")
	r.CLI("ZADD", "guard:brokers", strconv.FormatInt(time.Now().UnixMilli()-1000, 10), "i")
	l, err = s.RenewLease(ctx, "i", time.Minute)
	require.NoError(t, err)
	assert.True(t, l.Lapsed, "run out, still there (a reap under way stops at this renewal)")
	r.CLI("FLUSHALL")
	l, err = s.RenewLease(ctx, "i", time.Minute)
	require.NoError(t, err)
	assert.True(t, l.Lapsed, "after a flush")
	assert.True(t, l.Live["i"])
}
