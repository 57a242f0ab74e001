package store

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Was a DEFECT (atk28), fixed: the lease is read again before each batch's writes and before the
// set and lease go (ErrLeaseRuns). A lease renewed WHILE the reap ran was reaped anyway, and
// its fresh lease is deleted. 1adb217 reads the lease once (ZSCORE) before
// the scan; ia comes back from a pause right after that read (its
// RenewLease lands between Reap's ZSCORE and its writes: reapHook). The
// reap still ends alice's connection at the old lease end (40 000) though
// she stays connected on ia, deletes her live entry, DELs ia's whole
// brokerconns set (the connection ia recorded after coming back, "dev2",
// is dropped from it, so ia's own stop never ends it), and ZREMs ia's
// fresh lease: for up to one renewal the others treat ia as dead, and
// under clientid_conflict deny a claim of "dev" elsewhere no longer sees
// alice live. The commit's "A lease that runs at the reap is not reaped"
// holds only for a renewal before the ZSCORE. The ZREM (and DEL) should be
// conditional on the score read (a script comparing it), or the score
// re-checked before the writes.
func TestAtk28ReapLeaseRenewedMidReap(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	c := Conn{ID: "ia-1", Instance: "ia", Principal: "alice", ConnectedMs: 1_000}
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "dev", Instance: "ia", Live: &c, Seen: &c}}, time.Hour))
	r.CLI("ZADD", "guard:brokers", "40000", "ia") // lapsed when the reaper looked
	c2 := Conn{ID: "ia-2", Instance: "ia", Principal: "carol", ConnectedMs: 74_000}
	reapHook = func() {
		// ia is back: it renews its lease and records a new connection.
		r.CLI("ZADD", "guard:brokers", strconv.FormatInt(time.Now().UnixMilli()+30_000, 10), "ia")
		require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "dev2", Instance: "ia", Live: &c2, Seen: &c2}}, time.Hour))
	}
	t.Cleanup(func() { reapHook = nil })
	require.ErrorIs(t, s.Reap(ctx, "ia", 75_000, 30*time.Second, time.Hour), ErrLeaseRuns)

	assert.NotEqual(t, "", r.CLI("ZSCORE", "guard:brokers", "ia"), "ia's renewed lease was deleted by the reap")
	assert.Equal(t, "1", r.CLI("SISMEMBER", "guard:brokerconns:ia", "dev2"), "ia's newer connection dropped from its set: its own stop will not end it")
	live, _, err := state(s, "dev")
	require.NoError(t, err)
	assert.Len(t, live, 1, "alice is still connected on ia, whose lease runs again")
}

// Was a DEFECT (atk28), fixed: the own record is kept only if it ended at or after the earliest end
// (a regression of 1adb217; cc99c8b overwrote its own record
// at the stop): a broker's OWN stop (lease 0, an exact end) keeps its
// connection's own record when that record already has an EARLIER end.
// At its own stop no DISCONNECT runs concurrently (Close runs after Run
// returned), so an own record with an end before the stop comes only from
// a reap by mistake: ia was paused past its lease, ib reaped it (alice's
// record ended at the lease end, 40 000, her live entry deleted); ia came
// back and its conflict worker's late connect write (under deny the broker
// thread's claim came first; a memo-fresh seen record means the write
// carries Live and no Seen) re-recorded the live entry. Alice stays
// connected until ia stops at 500 000: her record keeps 40 000, 460 s
// early (any amount: hours), and bob taking "dev" at 40 000 + window + 1 is
// not flagged though alice held it until window − 459 s before. The same
// own-record rule keeps a mistaken reap's end when ia later really dies (the
// "died later" case: its true lease end 200 000 is not written).
func TestAtk28OwnEndFromMistakenReapIsKept(t *testing.T) {
	for _, how := range []string{"own stop", "died later"} {
		t.Run(how, func(t *testing.T) {
			s, r := newStore(t, "guard:")
			ctx := context.Background()
			c := Conn{ID: "ia-1", Instance: "ia", Principal: "alice", ConnectedMs: 1_000}
			require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "dev", Instance: "ia", Live: &c, Seen: &c}}, time.Hour))
			r.CLI("ZADD", "guard:brokers", "40000", "ia")
			require.NoError(t, s.Reap(ctx, "ia", 45_000, 30*time.Second, time.Hour)) // by mistake: ia is paused
			require.Equal(t, int64(40_000), atk27SeenOf(t, s, "dev", "alice").DisconnectedMs)
			// ia is back: its lease again, and the worker's late Live write.
			r.CLI("ZADD", "guard:brokers", "200000", "ia")
			require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "dev", Instance: "ia", Live: &c}}, time.Hour))
			want := int64(500_000)
			if how == "own stop" {
				require.NoError(t, s.Reap(ctx, "ia", 500_000, 0, time.Hour))
			} else {
				want = 200_000
				require.NoError(t, s.Reap(ctx, "ia", 500_000, 30*time.Second, time.Hour))
			}
			live, _, err := state(s, "dev")
			require.NoError(t, err)
			require.Empty(t, live, "the stop (or reap) ended alice's connection")
			assert.Equal(t, want, atk27SeenOf(t, s, "dev", "alice").DisconnectedMs, "alice's use of dev lasted until ia's stop / lease end")
		})
	}
}

// HOLDS: float lease scores around endMs (10 000; broker_lease 30 s). A
// score equal to endMs (also written 1e4), or a fraction above it, is a
// lease that runs: nothing reaped, the lease kept. A fraction below endMs
// is reaped, its end the score truncated to whole ms (9 999).
func TestAtk28ReapFractionalScoreBoundary(t *testing.T) {
	cases := []struct {
		score  string
		reaped bool
		end    int64
	}{
		{"10000", false, 0},
		{"10000.0001", false, 0},
		{"9999.9999", true, 9_999},
		{"9999", true, 9_999},
		{"1e4", false, 0},
		{"9.9995e3", true, 9_999},
	}
	for _, tc := range cases {
		t.Run(tc.score, func(t *testing.T) {
			s, r := newStore(t, "guard:")
			ctx := context.Background()
			c := Conn{ID: "ia-1", Instance: "ia", Principal: "alice", ConnectedMs: 1_000}
			require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "dev", Instance: "ia", Live: &c, Seen: &c}}, time.Hour))
			r.CLI("ZADD", "guard:brokers", tc.score, "ia")
			if err := s.Reap(ctx, "ia", 10_000, 30*time.Second, time.Hour); tc.reaped {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, ErrLeaseRuns)
			}
			live, _, err := state(s, "dev")
			require.NoError(t, err)
			if !tc.reaped {
				assert.Len(t, live, 1)
				assert.NotEqual(t, "", r.CLI("ZSCORE", "guard:brokers", "ia"))
				return
			}
			assert.Empty(t, live)
			assert.Equal(t, tc.end, atk27SeenOf(t, s, "dev", "alice").DisconnectedMs)
		})
	}
}
