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

// TestQuietReconnectCommands states what a device's reconnect costs Redis
// when its client ID was read quiet less than 10 s before and its
// connection outlives a batch (not folded away), under flag: its live
// entry (HSET) and the read of the live hash after it (HGETALL, since
// atk47: a device of the same principal live on another broker is a
// takeover: 2 commands before), and its client ID in this broker's set:
// two SADDs for every 16 of the batch's devices (one per device before;
// store's listRuns, listRunMax). Logged: 1 000 devices in one batch, the
// commands of their reconnects and of their ends (2 each).
func TestQuietReconnectCommands(t *testing.T) {
	const n, runMax = 1000, 16 // runMax: store's listRunMax
	r := testenv.StartRedis(t)
	tr, _, clk := redisTracker(t, r, "ia", testOptions())
	tr.renew()
	ctx := context.Background()
	conns := make([]Conn, n)
	step := func(connect bool) int64 {
		before := commandsSoFar(t, r)
		var batch []event
		for i := range n {
			id := "dev-" + strconv.Itoa(i)
			if connect {
				conns[i] = tr.NewConn("user-"+strconv.Itoa(i), "192.0.2.7", clk.now())
				batch = append(batch, event{kind: evConnect, clientID: id, conn: conns[i]})
			} else {
				batch = append(batch, event{kind: evDisconnect, clientID: id, conn: conns[i]})
			}
		}
		require.NoError(t, tr.handle(ctx, batch))
		clk.advance(200 * time.Millisecond)
		return commandsSoFar(t, r) - before
	}
	first := step(true)
	step(false)
	var reconnects, ends []int64
	for range 3 {
		reconnects = append(reconnects, step(true))
		ends = append(ends, step(false))
	}
	t.Logf("%d devices: first connects %d commands; quiet reconnects %v, their ends %v", n, first, reconnects, ends)
	for _, c := range reconnects {
		assert.Equal(t, int64(2*n+2*((n+runMax-1)/runMax)), c, "a quiet reconnect: HSET, HGETALL; two SADDs for every 16")
	}
}
