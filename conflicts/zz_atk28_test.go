package conflicts

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// Was a DEFECT (atk28), fixed: Reap answers ErrLeaseRuns, and renew logs nothing (minor: a false log line): when Reap leaves a broker alone
// because its lease runs again (1adb217: "A lease that runs at the reap is
// not reaped", store.Reap returns nil), renew still logs "cleared the live
// connections of broker instance ia: its lease ran out". Reap's nil does
// not say whether it reaped. Here the fake clock (2023) stands behind real
// time, so RenewLease (real time) lists ia, whose lease ran out 1 s ago in
// real time, as dead, while Reap at the tracker's now sees ia's lease
// running: the same as ia renewing between the reaper's RenewLease and its
// Reap (a broker back from a pause). Nothing is cleared (ia's connection
// stays live) but the notice says it was, on every renewal while it holds.
func TestAtk28RenewLogsClearedForARenewedLease(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	st := newRecStore(t, r)
	a, aclk, _ := tracker(t, st, testOptions())
	a.instance = "ia"
	b, _, logs := tracker(t, st, testOptions())
	b.instance = "ib"
	x := a.NewConn("alice", "192.0.2.1", aclk.now())
	require.NoError(t, a.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: x}}))
	r.CLI("ZADD", "guard:brokers", strconv.FormatInt(time.Now().UnixMilli()-1_000, 10), "ia")

	b.renew()
	assert.Equal(t, "1", r.CLI("HLEN", "guard:conn:dev"), "ia's lease runs at the reap's time: not reaped")
	assert.NotContains(t, logs.all(), "cleared the live connections of broker instance", "nothing was cleared")
}
