package store

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// Was a DEFECT (atk26), fixed: the reap keeps a newer connection's record. The reap of a dead broker wrote its end (the reap's
// time, up to broker_lease after the death) over the principal's record of
// a NEWER connection: alice's connection on the dead broker "dead"
// (connected at 1 000) was followed by her reconnect on "alive" (connected
// at 3 000, after the death), which ended at 4 000. The reap at 5 000 puts
// the dead broker's old connection back as alice's record, ended at 5 000:
// a connection that really ended before 3 000 (alice had moved) is shown
// as her latest one (old IP, old broker), and her use is stretched past
// her real last use. The README's key table says the record is "each
// one's latest connection". leftScript compares only ends; it never
// considers that the record it replaces connected after the connection it
// writes.
func TestAtk26DeadReapOverwritesANewerConnectionsRecord(t *testing.T) {
	s, _ := newStore(t, "guard:")
	ctx := context.Background()
	old := Conn{ID: "dead-1", Instance: "dead", Broker: "b1", Principal: "alice", IP: "192.0.2.1", ConnectedMs: 1_000}
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "dev", Instance: "dead", Live: &old, Seen: &old}}, time.Hour))
	// "dead" dies; alice reconnects on "alive" and leaves.
	moved := Conn{ID: "alive-1", Instance: "alive", Broker: "b2", Principal: "alice", IP: "198.51.100.7", ConnectedMs: 3_000}
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "dev", Instance: "alive", Live: &moved, Seen: &moved}}, time.Hour))
	left := moved
	left.DisconnectedMs = 4_000
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "dev", Instance: "alive", Gone: &moved, Unlist: true, Left: &left}}, time.Hour))

	require.NoError(t, s.Reap(ctx, "dead", 5_000, 30*time.Second, time.Hour)) // "alive" sees the lease run out

	_, seen, err := state(s, "dev")
	require.NoError(t, err)
	require.Len(t, seen, 1)
	assert.Equal(t, left, seen[0], "alice's latest connection is the one on alive, ended at 4 000; the reap replaced it with the dead broker's older one")
}

// Was a DEFECT (atk26), fixed: such a principal gets no end (store API only: Mosquitto refuses a username or client ID
// that is not UTF-8, and certificate IDs are hex, so no broker reaches it).
// The connect records a principal's use under the principal's bytes;
// Reap takes the principal from the live entry's JSON, where invalid UTF-8
// became U+FFFD, so it writes the end under another field: the seen hash
// holds two records of one principal, the connect's one without an end.
func TestAtk26ReapInvalidUTF8PrincipalWritesAnotherField(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	kb := keys.Builder{Prefix: "guard:"}
	c := Conn{ID: "dead-1", Instance: "dead", Principal: "al\xffice", ConnectedMs: 1_000}
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "dev", Instance: "dead", Live: &c, Seen: &c}}, time.Hour))
	require.NoError(t, s.Reap(ctx, "dead", 5_000, 0, time.Hour))
	assert.Equal(t, "1", r.CLI("HLEN", kb.Seen("dev")), "one principal, one record: %q", r.CLI("HKEYS", kb.Seen("dev")))
}

// HOLDS. Hostile principals (quotes, backslashes, NUL and other control
// bytes, U+2028, a JSON-looking tail, 65 535 bytes: hashed) and hostile
// client IDs (the same, and 65 535 bytes): Reap writes each end in the very
// field the connect wrote (one record per principal), the record decodes to
// the connection with its end, and the live entry is gone.
func TestAtk26ReapHostileValuesStayInTheirField(t *testing.T) {
	s, _ := newStore(t, "guard:")
	ctx := context.Background()
	kb := keys.Builder{Prefix: "guard:"}
	hostile := []string{
		`a"b\c`,
		"nul\x00byte\x01\x1f",
		"line\u2028sep\u2029",
		`x","disconnected_ms":1,"y":"`,
		`\","principal":"bob`,
		strings.Repeat(`"\`, 65535/2),
		strings.Repeat("é", 30000),
	}
	for i, p := range hostile {
		id := p + "#id"
		if i == 5 {
			id = strings.Repeat("\\", 65535)
		}
		c := Conn{ID: "dead-" + string(rune('1'+i)), Instance: "dead", Broker: "b", Principal: bound(p), IP: "192.0.2.1", ConnectedMs: 1_000}
		require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: id, Instance: "dead", Live: &c, Seen: &c}}, time.Hour))
	}
	require.NoError(t, s.Reap(ctx, "dead", 5_000, 0, time.Hour))
	for i, p := range hostile {
		id := p + "#id"
		if i == 5 {
			id = strings.Repeat("\\", 65535)
		}
		live, seen, err := state(s, id)
		require.NoError(t, err)
		assert.Empty(t, live, i)
		assert.EqualValues(t, 1, s.rdb.HLen(ctx, kb.Seen(id)).Val(), i)
		if assert.Len(t, seen, 1, i) {
			assert.Equal(t, bound(p), seen[0].Principal, i)
			assert.EqualValues(t, 5_000, seen[0].DisconnectedMs, i)
		}
	}
}

// HOLDS. A principal's bytes cannot pose as the "disconnected_ms" field
// leftScript reads: alice's record of a connection live on another broker,
// whose principal text holds `"disconnected_ms":1`, is kept (read as having
// no end), not taken for one that ended at 1 and overwritten.
func TestAtk26ReapForgedEndInPrincipalKeepsLiveRecord(t *testing.T) {
	s, _ := newStore(t, "guard:")
	ctx := context.Background()
	p := `m","disconnected_ms":1,"z":"`
	dead := Conn{ID: "dead-1", Instance: "dead", Principal: p, ConnectedMs: 1_000}
	other := Conn{ID: "alive-1", Instance: "alive", Principal: p, ConnectedMs: 2_000}
	require.NoError(t, writeConns(ctx, s, []ConnWrite{
		{ClientID: "dev", Instance: "dead", Live: &dead, Seen: &dead},
		{ClientID: "dev", Instance: "alive", Live: &other, Seen: &other},
	}, time.Hour))
	require.NoError(t, s.Reap(ctx, "dead", 5_000, 0, time.Hour))
	live, seen, err := state(s, "dev")
	require.NoError(t, err)
	assert.Equal(t, []Conn{other}, live)
	assert.Equal(t, []Conn{other}, seen)
}

// HOLDS. A live entry written by clientid_conflict deny's broker-thread
// claim (Claim; the worker never wrote the connect: no seen record yet) is
// ended like any other: the seen record is the claimed connection with the
// stop's end, the live entry is gone. A holder of another principal live
// on another broker, whose claim refused ours, is left alone.
func TestAtk26ReapEndsAClaimedEntry(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	kb := keys.Builder{Prefix: "guard:"}
	c := Conn{ID: "dead-7", Instance: "dead", Broker: "b", Principal: "alice", IP: "192.0.2.1", ConnectedMs: 1_000}
	h, err := s.Claim(ctx, "claimed id", c, Brokers{})
	require.NoError(t, err)
	require.Nil(t, h)
	bob := Conn{ID: "alive-1", Instance: "alive", Principal: "bob", ConnectedMs: 500}
	h, err = s.Claim(ctx, "held", bob, Brokers{})
	require.NoError(t, err)
	require.Nil(t, h)
	refused := Conn{ID: "dead-8", Instance: "dead", Principal: "alice", ConnectedMs: 1_100}
	h, err = s.Claim(ctx, "held", refused, Brokers{})
	require.NoError(t, err)
	require.NotNil(t, h, "bob holds it")

	require.NoError(t, s.Reap(ctx, "dead", 5_000, 0, time.Hour))
	live, seen, err := state(s, "claimed id")
	require.NoError(t, err)
	assert.Empty(t, live)
	want := c
	want.DisconnectedMs = 5_000
	assert.Equal(t, []Conn{want}, seen)
	live, _, err = state(s, "held")
	require.NoError(t, err)
	assert.Equal(t, []Conn{bob}, live)
	assert.Equal(t, "0", r.CLI("EXISTS", kb.Seen("held")), "the refused claim left nothing to end")
}

// HOLDS. Reap is bounded by its context when Redis stops answering writes
// (CLIENT PAUSE WRITE: the scripts wait): it returns within the context's
// bound and leaves the instance's set and lease for a later reap.
func TestAtk26ReapBoundedWhileRedisStalls(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	kb := keys.Builder{Prefix: "guard:"}
	c := Conn{ID: "dead-1", Instance: "dead", Principal: "alice", ConnectedMs: 1_000}
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "dev", Instance: "dead", Live: &c, Seen: &c}}, time.Hour))
	r.CLI("ZADD", kb.Brokers(), "4000", "dead") // its lease ran out at 4 000
	r.CLI("CLIENT", "PAUSE", "3000", "WRITE")
	cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := s.Reap(cctx, "dead", 5_000, 30*time.Second, time.Hour)
	took := time.Since(start)
	assert.Error(t, err)
	assert.Less(t, took, 900*time.Millisecond, "Reap overran its context")
	time.Sleep(3 * time.Second) // the pause ends
	assert.Equal(t, "1", r.CLI("EXISTS", kb.BrokerConns("dead")), "the set stays for the next reap")
	require.NoError(t, s.Reap(ctx, "dead", 6_000, 30*time.Second, time.Hour))
	_, seen, err := state(s, "dev")
	require.NoError(t, err)
	require.Len(t, seen, 1)
	assert.EqualValues(t, 4_000, seen[0].DisconnectedMs, "the end is the lease's, whenever the reap runs")
}

// HOLDS. On a Redis Cluster whose nodes all lost their script cache
// (SCRIPT FLUSH on each), Reap still ends every held connection, long
// client IDs (stored hashed) included.
func TestAtk26ReapClusterAfterScriptFlush(t *testing.T) {
	if testing.Short() {
		t.Skip("forms a Redis Cluster")
	}
	testenv.Need(t, "redis-server", "redis-cli")
	cl := testenv.StartRedisCluster(t, 3)
	s := New(Options{Addrs: []string{cl.Nodes[0].Addr, cl.Nodes[1].Addr, cl.Nodes[2].Addr}, Timeout: time.Second}, keys.Builder{Prefix: "guard:"})
	t.Cleanup(func() { s.Close() })
	ctx := context.Background()
	ids := []string{"a", "b", "c", "d", "e", strings.Repeat("L", 70000/2), `q"\`}
	for i, id := range ids {
		c := Conn{ID: "dead-" + string(rune('1'+i)), Instance: "dead", Principal: "p" + id[:1], ConnectedMs: 1}
		require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: id, Instance: "dead", Live: &c, Seen: &c}}, time.Hour))
	}
	for _, n := range cl.Nodes {
		n.CLI("SCRIPT", "FLUSH")
	}
	require.NoError(t, s.Reap(ctx, "dead", 9, 0, time.Hour))
	for _, id := range ids {
		live, seen, err := state(s, id)
		require.NoError(t, err)
		assert.Empty(t, live)
		if assert.Len(t, seen, 1) {
			assert.EqualValues(t, 9, seen[0].DisconnectedMs)
		}
	}
}
