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
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// A connection held until its broker stops (or dies) was in use until
// then: its principal's use of the client ID counts for conflict_window
// from its end, as a disconnect's would. Before, the reap deleted the live
// entry and left the seen record as written at the connect, with no end:
// a device connected for longer than the window was forgotten the moment
// its broker shut down, and another principal taking its client ID right
// after the restart was not flagged.
func TestReapEndsHeldConnections(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	kb := keys.Builder{Prefix: "guard:"}
	opts := testOptions()
	opts.Window = time.Hour

	for _, how := range []string{"shutdown", "lease ran out"} {
		t.Run(how, func(t *testing.T) {
			r.CLI("FLUSHALL")
			a, _, aclk := redisTracker(t, r, "ia", opts)
			a.renew()
			x := a.NewConn("alice", "192.0.2.1", aclk.now())
			require.NoError(t, a.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: x}}))
			aclk.advance(2 * time.Hour) // alice stayed connected past the window
			end := aclk.now().UnixMilli()

			b, bs, bclk := redisTracker(t, r, "ib", opts)
			bclk.advance(aclk.now().Sub(bclk.now()))
			switch how {
			case "shutdown":
				a.Close(ctx)
			default:
				// ia died at end, its lease renewed then: it runs out
				// broker_lease later, and ib reaps it a minute after that.
				// (RenewLease scores in real time, the trackers' clocks
				// are fake: the score is set by hand.)
				end += opts.Lease.Milliseconds()
				r.CLI("ZADD", "guard:brokers", strconv.FormatInt(end, 10), "ia")
				bclk.advance(opts.Lease + time.Minute)
				b.renew()
			}
			assert.Equal(t, "0", r.CLI("HLEN", kb.Conn("dev")), "nothing of ia's is live")
			var seen store.Conn
			require.NoError(t, json.Unmarshal([]byte(r.CLI("HGET", kb.Seen("dev"), "alice")), &seen))
			assert.Equal(t, a.StoreConn(x).ID, seen.ID)
			assert.Equal(t, end, seen.DisconnectedMs, "alice's use ended at the shutdown, or when the dead broker's lease ran out")

			b.renew()
			y := b.NewConn("bob", "192.0.2.2", bclk.now())
			require.NoError(t, b.handle(ctx, []event{{kind: evConnect, clientID: "dev", conn: y}}))
			assert.Equal(t, []string{"alice,bob"}, bs.findings["dev"], "bob took alice's client ID right after alice's broker stopped")
		})
	}
}
