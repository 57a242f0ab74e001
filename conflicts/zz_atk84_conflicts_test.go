package conflicts

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// F1 through the worker under clientid_conflict deny: a client that
// connects and disconnects within one batch (any short session while the
// worker waits on Redis) with ever new client IDs; conflict_clientids_max 3.
func TestAtk84DenyShortSessionsUnbounded(t *testing.T) {
	r := testenv.StartRedis(t)
	s := &recStore{Store: store.New(store.Options{Addrs: []string{r.Addr}, Timeout: 5 * time.Second, ClientIDsMax: 3}, keys.Builder{Prefix: "guard:"})}
	t.Cleanup(func() { s.Close() })
	opts := testOptions()
	opts.Deny = true
	c, clk, _ := tracker(t, s, opts)
	clk.advance(time.Since(clk.now())) // the index ages uses by Redis's side's wall clock: the records' times must be now's
	ctx := context.Background()
	for i := range 30 {
		id := "x" + strconv.Itoa(i)
		conn, holder, err := c.Claim(id, "mallory", "192.0.2.1", clk.now())
		require.NoError(t, err)
		require.Nil(t, holder)
		require.NoError(t, c.handle(ctx, []event{{kind: evConnect, clientID: id, conn: conn}, {kind: evDisconnect, clientID: id, conn: conn}}))
	}
	n := 0
	for i := range 30 {
		if r.CLI("HEXISTS", "guard:seen:x"+strconv.Itoa(i), "mallory") == "1" {
			n++
		}
	}
	assert.LessOrEqual(t, n, 3, "mallory keeps %d uses with conflict_clientids_max 3", n)
}
