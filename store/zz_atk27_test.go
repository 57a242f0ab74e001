package store

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// atk27SeenOf returns principal's record of client ID id, decoded.
func atk27SeenOf(t *testing.T, s *Store, id, principal string) Conn {
	t.Helper()
	_, seen, err := state(s, id)
	require.NoError(t, err)
	for _, c := range seen {
		if c.Principal == principal {
			return c
		}
	}
	t.Fatalf("no record of %q for %q", principal, id)
	return Conn{}
}

// HOLDS: the ordinary DISCONNECT path (WriteConns' Left, leftScript without
// ARGV[6]) behaves as before 73e75bd. In particular a Left of an OLDER
// connection that ended later still replaces a NEWER connection's record
// that ended earlier (only Reap passes ARGV[6]); a live record and a
// later-ended one are kept; a missing one or this connection's is written.
func TestAtk27DisconnectLeftUnchanged(t *testing.T) {
	s, _ := newStore(t, "guard:")
	ctx := context.Background()
	older := Conn{ID: "b1-1", Instance: "b1", Principal: "alice", ConnectedMs: 1_000}
	newer := Conn{ID: "b2-1", Instance: "b2", Principal: "alice", ConnectedMs: 2_000}
	left := func(c Conn, end int64) Conn { c.DisconnectedMs = end; return c }

	cases := []struct {
		name   string
		before *Conn // alice's record before the Left (nil: none)
		write  Conn  // the Left
		want   Conn
	}{
		{"newer ended earlier: overwritten", ptr(left(newer, 3_000)), left(older, 4_000), left(older, 4_000)},
		{"newer ended later: kept", ptr(left(newer, 5_000)), left(older, 4_000), left(newer, 5_000)},
		{"newer live: kept", &newer, left(older, 4_000), newer},
		{"older ended earlier: overwritten", ptr(left(older, 3_000)), left(newer, 4_000), left(newer, 4_000)},
		{"this connection: written", &older, left(older, 4_000), left(older, 4_000)},
		{"missing: written", nil, left(older, 4_000), left(older, 4_000)},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := "dev" + string(rune('a'+i))
			if tc.before != nil {
				require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: id, Instance: tc.before.Instance, Seen: tc.before}}, time.Hour))
			}
			w := tc.write
			require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: id, Instance: w.Instance, Left: &w}}, time.Hour))
			assert.Equal(t, tc.want, atk27SeenOf(t, s, id, "alice"))
		})
	}
}

func ptr(c Conn) *Conn { return &c }

// HOLDS (rewritten with the fix for TestAtk27ReapKeepsAnEarlierEndedNewerRecord:
// the reap now compares ends, not connects): leftScript's ARGV[6] on the
// reap path is the earliest the reaped connection may have ended (its dead
// broker's lease end less broker_lease, here 9 000 - 5 000). Another
// connection's record that ended before it is overwritten, whatever its
// connect (the same, none, later); one that ended at it or after is kept.
func TestAtk27ReapArgv6EdgeCases(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	kb := keys.Builder{Prefix: "guard:"}
	dead := Conn{ID: "dead-1", Instance: "dead", Principal: "alice", ConnectedMs: 1_000}
	reaped := dead
	reaped.DisconnectedMs = 9_000

	// equal connected_ms
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "eq", Instance: "dead", Live: &dead}}, time.Hour))
	eq := Conn{ID: "other-1", Instance: "other", Principal: "alice", ConnectedMs: 1_000, DisconnectedMs: 2_000}
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "eq", Instance: "other", Seen: &eq}}, time.Hour))
	// no connected_ms
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "noc", Instance: "dead", Live: &dead}}, time.Hour))
	r.CLI("HSET", kb.Seen("noc"), "alice", `{"id":"old-7","instance":"old","principal":"alice","disconnected_ms":2000}`)
	// later connect, ended before the earliest end
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "later", Instance: "dead", Live: &dead}}, time.Hour))
	later := Conn{ID: "other-2", Instance: "other", Principal: "alice", ConnectedMs: 1_001, DisconnectedMs: 2_000}
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "later", Instance: "other", Seen: &later}}, time.Hour))
	// later connect, ended at the earliest end: kept
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "moved", Instance: "dead", Live: &dead}}, time.Hour))
	moved := Conn{ID: "other-3", Instance: "other", Principal: "alice", ConnectedMs: 3_000, DisconnectedMs: 4_000}
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "moved", Instance: "other", Seen: &moved}}, time.Hour))

	r.CLI("ZADD", "guard:brokers", "9000", "dead")
	require.NoError(t, s.Reap(ctx, "dead", 20_000, 5*time.Second, time.Hour))
	assert.Equal(t, reaped, atk27SeenOf(t, s, "eq", "alice"), "equal connect, ended before: overwritten")
	assert.Equal(t, reaped, atk27SeenOf(t, s, "noc", "alice"), "no connected_ms, ended before: overwritten")
	assert.Equal(t, reaped, atk27SeenOf(t, s, "later", "alice"), "later connect, ended before: overwritten")
	assert.Equal(t, moved, atk27SeenOf(t, s, "moved", "alice"), "ended at the earliest end: kept")
}

// HOLDS: the lease-end choice for ordinary scores (a dead broker's reap,
// broker_lease 30 s). Missing lease entry: endMs. A lease in the future
// (the broker is back): nothing reaped (changed with the fix for
// TestAtk27ReapIgnoresARenewedLease; it read endMs). A lease
// before endMs: the lease, as a float score truncated to whole ms. A lease
// before the connect (garbage: 0, negative): the connect itself, so the
// principal's use counts from its connect, as before 73e75bd.
func TestAtk27ReapLeaseEndChoice(t *testing.T) {
	cases := []struct {
		name  string
		score string // "" = no lease entry
		want  int64
	}{
		{"missing", "", 50_000},
		{"future", "99000000000000", 0}, // a lease that runs: not reaped (TestAtk27ReapIgnoresARenewedLease)
		{"past", "20000", 20_000},
		{"float", "20000.9", 20_000},
		{"before connect", "500", 1_000},
		{"zero", "0", 1_000},
		{"negative", "-7", 1_000},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, r := newStore(t, "guard:")
			ctx := context.Background()
			c := Conn{ID: "dead-1", Instance: "dead", Principal: "alice", ConnectedMs: 1_000}
			require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "dev", Instance: "dead", Live: &c, Seen: &c}}, time.Hour))
			if tc.score != "" {
				r.CLI("ZADD", "guard:brokers", tc.score, "dead")
			}
			if err := s.Reap(ctx, "dead", 50_000, 30*time.Second, time.Hour); tc.want != 0 || !errors.Is(err, ErrLeaseRuns) {
				require.NoError(t, err)
			}
			assert.Equal(t, tc.want, atk27SeenOf(t, s, "dev", "alice").DisconnectedMs)
			if tc.want == 0 {
				assert.Equal(t, "1", r.CLI("EXISTS", "guard:brokers"))
				return
			}
			assert.Equal(t, "0", r.CLI("EXISTS", "guard:brokers"))
		})
	}
}

// Was a DEFECT (atk27), fixed: this broker's own stop reads no lease. A lease score of +inf (or any score past
// 2^63) makes the stop's end the connection's CONNECT, not endMs: Reap
// compares int64(lease) < endMs, and Go's float-to-int64 conversion of an
// out-of-range value is implementation-defined (amd64: math.MinInt64), so
// a lease that runs forever is taken for one that ran out before
// everything. The principal's use then counts from its connect, the very
// defect 73e75bd fixed. The comparison should be done in float64.
func TestAtk27ReapInfiniteLeaseEndsAtConnect(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	c := Conn{ID: "ia-1", Instance: "ia", Principal: "alice", ConnectedMs: 1_000}
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "dev", Instance: "ia", Live: &c, Seen: &c}}, time.Hour))
	r.CLI("ZADD", "guard:brokers", "+inf", "ia")
	require.NoError(t, s.Reap(ctx, "ia", 50_000, 0, time.Hour)) // ia's own stop
	assert.Equal(t, int64(50_000), atk27SeenOf(t, s, "dev", "alice").DisconnectedMs, "a lease that still runs: the stop's time is the end")
}

// Was a DEFECT (atk27), fixed: a reaped connection's own ended record is kept. The reap replaced a connection's REAL end, written by its own
// DISCONNECT, with an earlier bound. A broker reaped by mistake (paused
// past its lease, e.g. a VM freeze; or a reap racing its return) has its
// client disconnect while the reap runs: the reap reads the live entry,
// the disconnect writes alice's record ended at 70 000 and deletes the live
// entry, then the reap's leftScript finds the field holding "this
// connection" (prefix match) and overwrites it unconditionally with the
// lease end, 40 000: alice's last use is shown 30 s earlier than it was
// (any amount: the lease end can be long before the disconnect). leftScript
// keeps a later end only for ANOTHER connection's record; its own record's
// end is never compared, though Reap's end is only a bound.
func TestAtk27ReapOverwritesItsConnectionsRealEnd(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	c := Conn{ID: "ia-1", Instance: "ia", Principal: "alice", ConnectedMs: 1_000}
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "dev", Instance: "ia", Live: &c, Seen: &c}}, time.Hour))
	r.CLI("ZADD", "guard:brokers", "40000", "ia") // ia's lease ran out at 40 000
	gone := c
	gone.DisconnectedMs = 70_000
	reapHook = func() {
		require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "dev", Instance: "ia", Gone: &c, Unlist: true, Left: &gone}}, time.Hour))
	}
	t.Cleanup(func() { reapHook = nil })
	require.NoError(t, s.Reap(ctx, "ia", 75_000, 30*time.Second, time.Hour))
	assert.Equal(t, int64(70_000), atk27SeenOf(t, s, "dev", "alice").DisconnectedMs, "alice's disconnect at 70 000 was her real end")
}

// Was a DEFECT (atk27), fixed: a lease that runs at the reap is not reaped (a live broker reaped by mistake; the race predates 73e75bd, but
// Reap now reads the lease and ignores what it says): a reaper's
// RenewLease lists "ia" as dead, ia then renews (it was paused, or cut off
// from Redis, and came back), and the reap that follows reads ia's lease
// running 30 s into the future, ends ia's connections at the reap's time,
// deletes their live entries and ZREMs ia's fresh lease: for up to one
// renewal period the others see ia as dead, and its held connections are
// no longer live anywhere (alice connected on ia: bob taking the client ID
// elsewhere is judged only on her record).
func TestAtk27ReapIgnoresARenewedLease(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	c := Conn{ID: "ia-1", Instance: "ia", Principal: "alice", ConnectedMs: 1_000}
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "dev", Instance: "ia", Live: &c, Seen: &c}}, time.Hour))
	now := time.Now().UnixMilli()
	_, err := s.RenewLease(ctx, "ia", 30*time.Second) // ia is back
	require.NoError(t, err)
	require.ErrorIs(t, s.Reap(ctx, "ia", now, 30*time.Second, time.Hour), ErrLeaseRuns) // the reaper's decision was taken before
	live, _, err := state(s, "dev")
	require.NoError(t, err)
	assert.Len(t, live, 1, "ia's lease runs: its connection is live")
	assert.Equal(t, "1", r.CLI("ZCOUNT", "guard:brokers", "-inf", "+inf"), "ia's renewed lease is gone")
}
