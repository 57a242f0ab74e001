package conflicts

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// Was a DEFECT (atk27; cc99c8b's ARGV[6]), fixed: the reap now keeps only a record that ended
// at or after the earliest its connection may have ended. alice left out of a finding, or a missed one. The reap kept
// a NEWER connection's ended record even when that connection ended long
// BEFORE the one being reaped. Alice holds "dev" on ia (a device, for
// hours); she also connects on ib a minute later with the same client ID
// (a tool, a second path) and leaves a minute after that: her seen record
// is that short connection, ended at +2 min. Carol uses "dev" at +1 h
// 40 s (flagged with alice, rightly; her write keeps the seen hash, whose
// TTL is the window from its last write). ia keeps alice's device until
// +2 h, then stops (shutdown; or dies and is reaped 30 s later). The reap writes her
// device's end only over an OLDER connection's record: the short one on ib
// connected later, so it is kept, and alice's use is recorded as ended at
// +2 min instead of +2 h. Bob takes "dev" on ib 20 s after ia's stop (or
// its reap): after the shutdown the finding names bob and carol, not
// alice, who held "dev" 20 s before; after the reap there is NO finding
// at all (carol is out of the window by then). The
// README's "A principal's use so counts for conflict_window from the stop"
// is false here. (73e75bd wrote the end over the earlier-ended record.)
// The keep rule should compare ends (or the dead broker's last sign of
// life), not connects.
func TestAtk27ReapKeepsAnEarlierEndedNewerRecord(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	opts := testOptions()
	opts.Window = time.Hour

	// bob's finding: with the shutdown, carol (+1 h 40 s) is still within
	// the window at +2 h 20 s; with the lease (bob at +2 h 50 s) she is not,
	// and bob is not flagged at all. (In production the seen hash, its TTL
	// the window from carol's write, is gone by then too: the reap kept the
	// record without renewing it; the same outcome.)
	want := map[string]string{"shutdown": "alice,bob,carol", "lease ran out": "alice,bob"}
	for _, how := range []string{"shutdown", "lease ran out"} {
		t.Run(how, func(t *testing.T) {
			r.CLI("FLUSHALL")
			a, _, aclk := redisTracker(t, r, "ia", opts)
			b, bs, bclk := redisTracker(t, r, "ib", opts)
			a.renew()
			b.renew()
			t0 := aclk.now()
			x := a.NewConn("alice", "192.0.2.1", aclk.now())
			require.NoError(t, a.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: x}}))

			bclk.advance(t0.Add(time.Minute).Sub(bclk.now()))
			y := b.NewConn("alice", "198.51.100.7", bclk.now())
			require.NoError(t, b.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: y}}))
			bclk.advance(time.Minute)
			require.NoError(t, b.handle(ctx, []event{{kind: evDisconnect, clientID: "dev", conn: y}}))

			bclk.advance(t0.Add(time.Hour + 40*time.Second).Sub(bclk.now()))
			w := b.NewConn("carol", "203.0.113.10", bclk.now())
			require.NoError(t, b.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: w}}))
			require.NoError(t, b.handle(ctx, []event{{kind: evDisconnect, clientID: "dev", conn: w}}))
			require.Equal(t, []string{"alice,carol"}, bs.findings["dev"])

			aclk.advance(2 * time.Hour) // alice's device stays on ia
			end := aclk.now().UnixMilli()
			bclk.advance(aclk.now().Sub(bclk.now()))
			switch how {
			case "shutdown":
				a.Close(ctx)
			default:
				end += opts.Lease.Milliseconds()
				r.CLI("ZADD", "guard:brokers", strconv.FormatInt(end, 10), "ia")
				bclk.advance(opts.Lease + time.Second) // past the lease's end: a lease that still runs is not reaped
				b.renew()
			}
			var seen store.Conn
			require.NoError(t, json.Unmarshal([]byte(r.CLI("HGET", "guard:seen:dev", "alice")), &seen))
			assert.GreaterOrEqual(t, seen.DisconnectedMs, end, "alice's use of dev lasted until ia's stop")

			bclk.advance(20 * time.Second)
			b.renew()
			z := b.NewConn("bob", "203.0.113.9", bclk.now())
			require.NoError(t, b.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: z}}))
			assert.Equal(t, []string{"alice,carol", want[how]}, bs.findings["dev"], "alice held dev until 20 s before bob took it (50 s: the lease)")
		})
	}
}

// HOLDS: crash and quick reconnect elsewhere, three brokers. Alice's device
// on ia (connected for hours) moves to ib when ia dies, and leaves ib ten
// minutes later; ic reaps ia when its lease runs out (before alice left
// ib: her record is live then, kept). Bob taking "dev" on ic 30 min after
// alice left ib is flagged (within the hour); carol taking it 61 min after
// alice left is not flagged for alice (no false finding from the reap) but
// is for bob.
func TestAtk27ThreeBrokersCrashMoveNoFalseFinding(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	opts := testOptions()
	opts.Window = time.Hour

	a, _, aclk := redisTracker(t, r, "ia", opts)
	b, _, bclk := redisTracker(t, r, "ib", opts)
	c, cs, cclk := redisTracker(t, r, "ic", opts)
	a.renew()
	b.renew()
	c.renew()
	x := a.NewConn("alice", "192.0.2.1", aclk.now())
	require.NoError(t, a.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: x}}))
	aclk.advance(3 * time.Hour)
	death := aclk.now() // ia dies, its lease renewed here
	bclk.advance(death.Sub(bclk.now()) + 2*time.Second)
	y := b.NewConn("alice", "198.51.100.7", bclk.now())
	require.NoError(t, b.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: y}}))

	cclk.advance(death.Sub(cclk.now()) + opts.Lease + time.Second)
	r.CLI("ZADD", "guard:brokers", strconv.FormatInt(death.Add(opts.Lease).UnixMilli(), 10), "ia")
	c.renew() // reaps ia
	assert.Equal(t, "1", r.CLI("HLEN", "guard:conn:dev"), "only alice's ib connection is live")

	bclk.advance(10 * time.Minute)
	require.NoError(t, b.handle(ctx, []event{{kind: evDisconnect, clientID: "dev", conn: y}}))
	aliceLeft := bclk.now()

	cclk.advance(aliceLeft.Add(30 * time.Minute).Sub(cclk.now()))
	c.renew()
	z := c.NewConn("bob", "203.0.113.9", cclk.now())
	require.NoError(t, c.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: z}}))
	require.NoError(t, c.handle(ctx, []event{{kind: evDisconnect, clientID: "dev", conn: z}}))
	assert.Equal(t, []string{"alice,bob"}, cs.findings["dev"])

	cclk.advance(31 * time.Minute)
	c.renew()
	w := c.NewConn("carol", "203.0.113.10", cclk.now())
	require.NoError(t, c.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: w}}))
	assert.Equal(t, []string{"alice,bob", "bob,carol"}, cs.findings["dev"])
}

// Was a DEFECT (atk27, minor), fixed: a broker's own stop reads no lease. A broker's own stop ended its connections at its LAPSED
// lease's end, not at the stop. ia could not renew for a while (Redis cut
// off from it, or its renewals timing out behind a retry flush) and its
// lease ran out 20 min ago; nobody reaped it (no other broker, or the
// others cut off too). Redis answers again and ia shuts down before its
// next renewal: Tracker.Close calls Reap(ia, now), Reap reads ia's own
// lapsed lease and takes it as the end, as for a dead broker. Alice, held
// on ia until the stop, is recorded as gone 20 min before it. The README:
// "A connection still held when its broker stops is ended in Redis as its
// DISCONNECT would have been". Close knows the stop's time; only a reap of
// another instance needs the lease bound.
func TestAtk27CloseWithLapsedOwnLeaseEndsTooEarly(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	opts := testOptions()
	opts.Window = time.Hour
	a, _, aclk := redisTracker(t, r, "ia", opts)
	a.renew()
	x := a.NewConn("alice", "192.0.2.1", aclk.now())
	require.NoError(t, a.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: x}}))
	aclk.advance(time.Hour)
	lapsed := aclk.now().Add(-20 * time.Minute).UnixMilli()
	r.CLI("ZADD", "guard:brokers", strconv.FormatInt(lapsed, 10), "ia")
	stop := aclk.now().UnixMilli()
	a.Close(ctx)
	var seen store.Conn
	require.NoError(t, json.Unmarshal([]byte(r.CLI("HGET", "guard:seen:dev", "alice")), &seen))
	assert.Equal(t, stop, seen.DisconnectedMs, "alice was connected until ia stopped")
}
