package e2e

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// seenRecord is principal's seen record of clientID in Redis (nil: none).
func (e *env) seenRecord(clientID, principal string) map[string]any {
	e.t.Helper()
	raw := e.redis.CLI("HGET", "guard:seen:"+clientID, principal)
	if raw == "" {
		return nil
	}
	var m map[string]any
	require.NoError(e.t, json.Unmarshal([]byte(raw), &m), "seen record %q", raw)
	return m
}

// occurrences counts the findings reported, folded repeats included.
func (e *env) occurrences() int {
	e.t.Helper()
	n := 0
	for _, f := range e.findings() {
		c, err := strconv.Atoi(e.redis.CLI("HGET", "guard:fold:"+f["fold"], "count"))
		require.NoError(e.t, err)
		n += c
	}
	return n
}

// A device that connects and stays past seenRefresh (30 s) and through
// the worker's sweeps (every 10 s), then leaves: its live field is removed
// from Redis and its principal's seen record carries its end
// (disconnected_ms), from which the conflict window is reckoned; another
// principal taking the ID then is flagged with the device's end. Under
// clientid_conflict flag and deny, one broker each, side by side.
func TestAttackMemoHeldPastRefreshEndRecorded(t *testing.T) {
	for _, mode := range []string{"flag", "deny"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, "auth_opt_clientid_conflict "+mode)
			id := "held-" + mode
			c, code := e.dial(as("127.0.70.1", id, "alice", "alice-pw"))
			require.EqualValues(t, accepted, code)
			e.waitLive(id, 1)
			eventually(t, 5*time.Second, func() bool { return e.seenRecord(id, "alice") != nil }, "alice's use not recorded")
			assert.Nil(t, e.seenRecord(id, "alice")["disconnected_ms"])
			// Others churn meanwhile, so the memos are not idle.
			for i := 0; i < 20; i++ {
				require.EqualValues(t, accepted, e.connect(as("127.0.70.2", "churn-"+strconv.Itoa(i%4), "bob", "bob-pw")))
			}
			ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
			defer cancel()
			for end := time.Now().Add(33 * time.Second); time.Now().Before(end); {
				require.NoError(t, c.Ping(ctx), "the device stays")
				time.Sleep(3 * time.Second)
			}
			left := time.Now().UnixMilli()
			require.NoError(t, c.Disconnect())
			e.waitLive(id, 0)
			eventually(t, 5*time.Second, func() bool {
				r := e.seenRecord(id, "alice")
				return r != nil && r["disconnected_ms"] != nil
			}, "alice's end not recorded in her seen record")
			ms := int64(e.seenRecord(id, "alice")["disconnected_ms"].(float64))
			assert.InDelta(t, left, ms, 2000, "disconnected_ms is the end")
			require.EqualValues(t, accepted, e.connect(as("127.0.70.3", id, "bob", "bob-pw")))
			f := e.waitFindings(1)[0]
			assert.Equal(t, id, f["clientid"])
			assert.JSONEq(t, `["alice","bob"]`, f["principals"])
			assert.NotEqual(t, "0", f["disconnected_ms"], "alice's end")
		})
	}
}

// Two principals on one client ID on two brokers sharing Redis, with
// churn: alice reconnects in a loop on broker a (her client ID read quiet,
// her reconnects folded and their reads spared), then bob comes on broker
// b while alice is held: flagged under flag, refused under deny. Alice's
// last reconnect leaving clears her live field; after it bob is let in
// under deny and flagged with her end.
func TestAttackMemoTwoBrokersChurn(t *testing.T) {
	for _, mode := range []string{"flag", "deny"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			a, b := twoBrokers(t, "auth_opt_clientid_conflict "+mode)
			id := "churn2-" + mode
			for i := 0; i < 30; i++ {
				require.EqualValues(t, accepted, a.connect(as("127.0.71.1", id, "alice", "alice-pw")))
			}
			held, code := a.dial(as("127.0.71.1", id, "alice", "alice-pw"))
			require.EqualValues(t, accepted, code)
			a.waitLive(id, 1)
			bc := b.connect(as("127.0.71.2", id, "bob", "bob-pw"))
			if mode == "deny" {
				assert.EqualValues(t, refused, bc, "alice holds the ID live on broker a")
			} else {
				assert.EqualValues(t, accepted, bc)
			}
			f := a.waitFindings(1)[0]
			assert.JSONEq(t, `["alice","bob"]`, f["principals"])
			// More churn of alice's on a, now with bob on the ID: each read shows him.
			require.NoError(t, held.Disconnect())
			for i := 0; i < 10; i++ {
				require.EqualValues(t, accepted, a.connect(as("127.0.71.1", id, "alice", "alice-pw")))
			}
			a.waitLive(id, 0)
			eventually(t, 5*time.Second, func() bool {
				r := a.seenRecord(id, "alice")
				return r != nil && r["disconnected_ms"] != nil
			}, "alice's last end not recorded")
			n := a.occurrences()
			require.EqualValues(t, accepted, b.connect(as("127.0.71.2", id, "bob", "bob-pw")), "alice gone: bob let in")
			eventually(t, 5*time.Second, func() bool { return a.occurrences() > n }, "bob's use after alice's end not flagged")
		})
	}
}
