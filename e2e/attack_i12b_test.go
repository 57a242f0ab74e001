package e2e

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
)

// With per_listener_settings true, Mosquitto 2.0.11-2.0.14 sends no TICK.
// A DISCONNECT held in C (plugin.c) then waits for the next callback into
// Go: on a quiet broker, the next CONNECT, which may never come. The
// device's live entry in Redis must still go at its DISCONNECT.
func TestAttackI12bPerListenerDisconnectClearsLive(t *testing.T) {
	e := perListenerEnv(t)
	conn, code := e.dial(as("127.0.81.1", "pl-live-1", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	e.waitLive("pl-live-1", 1)
	require.NoError(t, conn.Disconnect())
	e.logLine("Client pl-live-1 disconnected")
	e.waitLive("pl-live-1", 0)
}

// clientid_conflict deny across two brokers: a client ID that left broker-a
// (per_listener_settings true, so no TICK on 2.0.11) and comes back on
// broker-b under another principal (the device re-provisioned) must be
// admitted there: its old connection must not look live.
func TestAttackI12bPerListenerDenyAfterMove(t *testing.T) {
	deny := []string{"auth_opt_clientid_conflict deny", "auth_opt_broker_lease 2s"}
	a := perListenerEnv(t, append([]string{"auth_opt_broker_name broker-a"}, deny...)...)
	b := &env{t: t, dir: a.dir, redis: a.redis, passwd: a.passwd}
	b.broker = startBroker(t, b.conf(append([]string{"auth_opt_broker_name broker-b"}, deny...)...))

	conn, code := a.dial(as("127.0.82.1", "mover-1", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	a.waitLive("mover-1", 1)
	require.NoError(t, conn.Disconnect())
	a.logLine("Client mover-1 disconnected")
	// The lease (2 s) is renewed while broker-a lives: wait past it.
	time.Sleep(3 * time.Second)
	assert.EqualValues(t, accepted, b.connect(as("127.0.82.2", "mover-1", "bob", "bob-pw")),
		"the device left broker-a 3 s ago; broker-b refused it: %s",
		findLine(b.broker.Output(), "rule=clientid-conflict"))
}

// A connection banned while connected has its messages refused until its
// kick. Its will is one of its messages: a client that sees its publishes
// refused and drops the connection (the broker sends the will) must not get
// the will out. per_listener_settings true on 2.0.11 holds the kick (no
// TICK) so the window is wide.
func TestAttackI12bFlaggedConnectionWillRefused(t *testing.T) {
	e := perListenerEnv(t)
	watcher := e.subscribe("127.0.83.9", "wills/#")
	victim := e.dialWill(as("127.0.83.1", "flag-will-1", "alice", "alice-pw"))
	e.redis.CLI("SET", "guard:block:username:alice", "revoked")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	eventually(t, 5*time.Second, func() bool {
		require.NoError(t, victim.Publish(ctx, "t", []byte("x")))
		return hasLine(e.broker.Output(), "event=kicked", `client_id="flag-will-1"`)
	}, "the ban did not flag the connection")
	require.NoError(t, victim.Close()) // a network drop: the broker sends the will
	e.logLine("Client flag-will-1 closed its connection")
	assert.True(t, quiet(watcher, 500*time.Millisecond), "the will of a connection banned while connected was delivered")
}

// More DISCONNECTs in one broker loop iteration than plugin.c holds
// (GUARD_PENDING_MAX, 1024): every one still reaches the guard, and every
// live entry goes from Redis.
func TestAttackI12bMassDisconnectPastTheBound(t *testing.T) {
	e := newEnv(t)
	const n = 1300
	conns := make([]*mqttc.Conn, 0, n)
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: e.broker.Addr, SourceIP: fmt.Sprintf("127.0.%d.%d", 84+i/250, 1+i%250),
			ClientID: fmt.Sprintf("mass-%d", i), Username: str("alice"), Password: str("alice-pw")})
		cancel()
		require.NoError(t, err)
		require.EqualValues(t, accepted, code)
		conns = append(conns, c)
	}
	liveKeys := func() int {
		out := e.redis.CLI("--no-raw", "EVAL", `return #redis.call('KEYS', 'guard:conn:mass-*')`, "0")
		k, _ := strconv.Atoi(strings.TrimPrefix(out, "(integer) "))
		return k
	}
	eventually(t, 10*time.Second, func() bool { return liveKeys() == n }, "not all %d connections tracked", n)
	for _, c := range conns {
		c.Close()
	}
	eventually(t, 10*time.Second, func() bool { return liveKeys() == 0 }, "live entries left after every client left: %d", liveKeys())
}
