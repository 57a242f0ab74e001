package conflicts

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// Was a DEFECT (atk26), fixed (the reap keeps the newer record; the end is the lease's): a false finding made by the reap of a dead broker.
// Broker ia dies holding alice's connection to "dev"; alice reconnects on
// ib at once and leaves 2 s later: her last use of "dev" ended then. ib
// reaps ia when its lease has run out (35 s later) and writes ia's old
// connection as alice's record, ended at the reap, over her newer record
// (ended at +2 s). Bob takes "dev" window+5 s after alice's real last use:
// before 73e75bd he was not flagged (no principal used it within the
// window); now he is, alice's use being stretched to the reap's time.
func TestAtk26DeadReapFalseFinding(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	opts := testOptions()
	opts.Window = time.Minute

	a, _, aclk := redisTracker(t, r, "ia", opts)
	a.renew()
	x := a.NewConn("alice", "192.0.2.1", aclk.now())
	require.NoError(t, a.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: x}}))
	// ia dies now; alice moves to ib.
	b, bs, bclk := redisTracker(t, r, "ib", opts)
	bclk.advance(aclk.now().Sub(bclk.now()) + time.Second)
	b.renew()
	y := b.NewConn("alice", "198.51.100.7", bclk.now())
	require.NoError(t, b.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: y}}))
	bclk.advance(time.Second)
	require.NoError(t, b.handle(ctx, []event{{kind: evDisconnect, clientID: "dev", conn: y}}))
	lastUse := bclk.now()

	// ia's lease runs out; ib's renewal reaps it.
	bclk.advance(35 * time.Second)
	r.CLI("ZADD", "guard:brokers", "1", "ia")
	b.renew()

	bclk.advance(lastUse.Add(opts.Window + 5*time.Second).Sub(bclk.now()))
	b.renew()
	z := b.NewConn("bob", "203.0.113.9", bclk.now())
	require.NoError(t, b.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: z}}))
	assert.Empty(t, bs.findings["dev"], "alice last used dev more than conflict_window before bob took it")
}

// HOLDS: no false finding after a restart. Alice's connection held when ia
// stops gets its end; alice connecting again on ib right after (the broker
// restarted) makes no cross-principal finding, and no duplicate either:
// nothing of hers is live any more.
func TestAtk26RestartSamePrincipalNoFinding(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	opts := testOptions()
	opts.Window = time.Hour

	a, as, aclk := redisTracker(t, r, "ia", opts)
	a.renew()
	x := a.NewConn("alice", "192.0.2.1", aclk.now())
	require.NoError(t, a.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: x}}))
	aclk.advance(2 * time.Hour)
	a.Close(ctx)

	b, bs, bclk := redisTracker(t, r, "ib", opts)
	bclk.advance(aclk.now().Sub(bclk.now()))
	b.renew()
	for i := 0; i < 5; i++ { // past takeover_limit
		y := b.NewConn("alice", "192.0.2.1", bclk.now())
		require.NoError(t, b.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: y}}))
		bclk.advance(time.Second)
		require.NoError(t, b.handle(ctx, []event{{kind: evDisconnect, clientID: "dev", conn: y}}))
	}
	assert.Empty(t, bs.findings)
	assert.Empty(t, as.findings)
}

// HOLDS: Tracker.Close (broker shutdown) stays within its 2 s while Redis
// takes no writes (CLIENT PAUSE WRITE for 4 s): the cleanup does not hang
// the broker; the live entry is left for the lease's reap.
func TestAtk26CloseBoundedWhileRedisStalls(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	opts := testOptions()
	a, _, aclk := redisTracker(t, r, "ia", opts)
	a.renew()
	for _, id := range []string{"d1", "d2", "d3"} {
		x := a.NewConn("alice", "192.0.2.1", aclk.now())
		require.NoError(t, a.handle(ctx, []event{{kind: evConnect, clientID: id, conn: x}}))
	}
	r.CLI("CLIENT", "PAUSE", "4000", "WRITE")
	start := time.Now()
	a.Close(ctx)
	took := time.Since(start)
	assert.Less(t, took, 2500*time.Millisecond, "Close overran its 2 s")
	time.Sleep(4 * time.Second) // the pause ends
	assert.Equal(t, "1", r.CLI("HLEN", "guard:conn:d1"), "left for the lease's reap")
	assert.Equal(t, "1", r.CLI("EXISTS", "guard:brokerconns:ia"))
}

// Was a DEFECT (atk26), fixed (the end is the dead lease's, not the reap's time): a false finding after a crash and a late restart. The
// README says a dead broker's connections get the reap's time as their end
// "up to broker_lease and one renewal after the death". With no other
// broker running, the reap is the restarted broker's first renewal, however
// long the broker was down: ia crashes (no cleanup) holding alice's
// connection to "dev"; it comes back as ib three hours later and its first
// renewal writes alice's end three hours after her connection really ended.
// Bob taking "dev" a minute later is flagged, though nobody used "dev" in
// the hour's window before. Before 73e75bd he was not (alice's record,
// with no end, counted from her connect).
func TestAtk26LateRestartReapFalseFinding(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	opts := testOptions()
	opts.Window = time.Hour

	a, _, aclk := redisTracker(t, r, "ia", opts)
	a.renew()
	x := a.NewConn("alice", "192.0.2.1", aclk.now())
	require.NoError(t, a.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: x}}))
	aclk.advance(10 * time.Minute)
	crash := aclk.now() // ia dies here: no Close

	b, bs, bclk := redisTracker(t, r, "ib", opts)
	bclk.advance(crash.Add(3 * time.Hour).Sub(bclk.now()))
	r.CLI("ZADD", "guard:brokers", "1", "ia") // its lease ran out long ago
	b.renew()                                 // the restarted broker's first renewal reaps ia

	var seen store.Conn
	require.NoError(t, json.Unmarshal([]byte(r.CLI("HGET", "guard:seen:dev", "alice")), &seen))
	assert.LessOrEqual(t, seen.DisconnectedMs, crash.Add(opts.Lease+opts.Lease/3).UnixMilli(),
		"README: the end is up to broker_lease and one renewal after the death; it is %s after", time.Duration(seen.DisconnectedMs-crash.UnixMilli())*time.Millisecond)

	bclk.advance(time.Minute)
	b.renew()
	z := b.NewConn("bob", "203.0.113.9", bclk.now())
	require.NoError(t, b.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: z}}))
	assert.Empty(t, bs.findings["dev"], "nobody used dev within the window before bob")
}
