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
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// perListenerEnv starts Redis and a broker with per_listener_settings true
// and one listener with the plugin, plus extra config lines after it: on
// Mosquitto 2.0.11-2.0.14 the plugin then gets no TICK, and queued kicks
// wait for the next CONNECT.
func perListenerEnv(t *testing.T, extra ...string) *env {
	t.Helper()
	testenv.Need(t, "mosquitto", "mosquitto_passwd", "redis-server", "redis-cli")
	e := &env{t: t, dir: t.TempDir()}
	e.passwd = e.dir + "/passwd"
	e.addUser("alice", "alice-pw")
	e.addUser("bob", "bob-pw")
	e.redis = startRedis(t)
	conf := "per_listener_settings true\nlistener {{PORT}} 127.0.0.1\n" + e.conf() + strings.Join(extra, "\n") + "\n"
	e.broker = startBroker(t, conf)
	return e
}

// banWithKickPending connects a client as alice (with a persistent session
// when persistent), bans alice and waits until the kick is queued (the
// client's publish makes an ACL check, which writes the queued log lines but
// never runs a kick).
func banWithKickPending(t *testing.T, e *env, ip, id string, persistent bool) *mqttc.Conn {
	t.Helper()
	ctx0, cancel0 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel0()
	victim, code, err := mqttc.Dial(ctx0, mqttc.Options{Addr: e.broker.Addr, SourceIP: ip, ClientID: id,
		Username: str("alice"), Password: str("alice-pw"), Persistent: persistent})
	require.NoError(t, err)
	require.EqualValues(t, accepted, code)
	t.Cleanup(func() { victim.Close() })
	e.redis.CLI("SET", "guard:block:username:alice", "revoked")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	eventually(t, 5*time.Second, func() bool {
		require.NoError(t, victim.Publish(ctx, "t", []byte("x")))
		return hasLine(e.broker.Output(), "event=kicked", `client_id="`+id+`"`)
	}, "the ban did not flag the connection")
	require.False(t, victim.Closed(200*time.Millisecond), "no TICK, no CONNECT: the kick must still be pending")
	return victim
}

// reloadWithKickPending is issue 8's scenario: a ban with a kick pending
// under per_listener_settings true, then SIGHUP. Before the fix the kick ran
// inside the broker's re-authentication walk, on the client the broker then
// disconnected a second time itself (the log shows "Client <unknown>
// disconnected, not authorised." after the kick's "administrative action").
// With a persistent session and persistent_client_expiration set (see
// perListenerEnv's callers), the second disconnection put the session on
// Mosquitto's expiry list twice; once the session was taken over and freed,
// the stale entry was read every second (valgrind: invalid reads in
// session_expiry__check).
func reloadWithKickPending(t *testing.T, e *env, wait time.Duration) {
	t.Helper()
	victim := banWithKickPending(t, e, "127.0.61.1", "dev-1", true)
	e.broker.Reload()
	require.True(t, e.broker.WaitOutput("Reloading config.", wait))
	assert.True(t, victim.Closed(wait), "the banned client is disconnected by the re-authentication")
	e.logLine("refused", `client_id="dev-1"`, `rule="guard:block:username:alice"`)
	afterReload := func() string {
		out := e.broker.Output()
		return out[strings.Index(out, "Reloading config."):]
	}
	assert.NotContains(t, afterReload(), "administrative action", "no kick inside the re-authentication walk")
	assert.NotContains(t, afterReload(), "Client <unknown> disconnected, not authorised.", "the broker disconnects a client once")

	// A later connection with the same client ID under another user stays.
	later, code := e.dial(as("127.0.61.2", "dev-1", "bob", "bob-pw"))
	require.EqualValues(t, accepted, code)
	for i := range 3 { // new CONNECTs: safe points where queued kicks run
		assert.EqualValues(t, accepted, e.connect(as("127.0.61.3", fmt.Sprint("other-", i), "bob", "bob-pw")))
	}
	assert.False(t, later.Closed(500*time.Millisecond), "the kick for the ended connection must not hit a new one")
	time.Sleep(2500 * time.Millisecond) // the broker checks session expiry once a second
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	assert.NoError(t, later.Ping(ctx))
	assert.False(t, e.broker.Exited(), "the broker must live:\n%s", e.broker.Output())
}

func TestReloadWithKickPending(t *testing.T) {
	e := perListenerEnv(t, "persistent_client_expiration 1d")
	reloadWithKickPending(t, e, 3*time.Second)
}

// A kick names the connection it was queued for: when that connection has
// ended, the kick is dropped, even where a newer connection with the same
// client ID is in the broker's table. Here the newer one comes through a
// second listener without the plugin, so no BASIC_AUTH of the plugin runs
// (and drops the kick by chance) before the next safe point.
func TestLateKickSparesNewConnection(t *testing.T) {
	port2 := testenv.FreePort(t)
	e := perListenerEnv(t, "listener "+strconv.Itoa(port2)+" 127.0.0.1", "allow_anonymous true")
	open := *e
	open.broker = &testenv.Mosquitto{Process: e.broker.Process, Addr: "127.0.0.1:" + strconv.Itoa(port2)}
	require.NoError(t, e.broker.WaitPort(open.broker.Addr, 5*time.Second))

	victim := banWithKickPending(t, e, "127.0.63.1", "dev-2", false)
	require.NoError(t, victim.Disconnect()) // the banned connection ends by itself
	eventually(t, 2*time.Second, func() bool { return strings.Contains(e.broker.Output(), "Client dev-2 disconnected") }, "no disconnection")
	newer, code := open.dial(as("127.0.63.2", "dev-2", "bob", "whatever"))
	require.EqualValues(t, accepted, code)
	assert.EqualValues(t, accepted, e.connect(as("127.0.63.3", "trigger", "bob", "bob-pw")), "a safe point: queued kicks run")
	assert.False(t, newer.Closed(500*time.Millisecond), "a late kick must not hit a newer connection with the same client ID")
}

// Mosquitto re-authenticates offline persistent sessions on SIGHUP too.
// Before the fix the plugin took them for new CONNECTs: a password rotation
// counted a failure per session against their last IP (ten sessions behind
// one address banned it), and a session that passed became a phantom live
// connection in guard:conn.
func TestReloadOfflineSessions(t *testing.T) {
	for _, mode := range []string{"tick", "per_listener_settings"} {
		t.Run(mode, func(t *testing.T) {
			opts := []string{"auth_opt_fail_limit 3"}
			var e *env
			if mode == "tick" {
				e = newEnv(t, opts...)
			} else {
				e = perListenerEnv(t, opts...)
			}
			e.addUser("fleet", "pw-1")
			e.broker.Reload()
			e.logLine("loaded 3 users")
			const nat = "127.0.62.1"
			offline := func(ip, id, user, pass string) {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				c := as(ip, id, user, pass)
				conn, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: e.broker.Addr, SourceIP: ip, ClientID: id,
					Username: c.user, Password: c.pass, Persistent: true})
				require.NoError(t, err)
				require.EqualValues(t, accepted, code)
				require.NoError(t, conn.Disconnect())
			}
			var ids []string
			for i := range 10 {
				ids = append(ids, fmt.Sprint("fleet-", i))
				offline(nat, ids[i], "fleet", "pw-1")
			}
			for i := range 3 { // sessions whose password still passes (another address: no fail limit in the way)
				ids = append(ids, fmt.Sprint("keep-", i))
				offline("127.0.62.2", ids[len(ids)-1], "alice", "alice-pw")
			}
			eventually(t, 3*time.Second, func() bool {
				return strings.Count(e.broker.Output(), "disconnected.") >= len(ids)
			}, "the sessions did not go offline")
			time.Sleep(600 * time.Millisecond) // conflict tracking has written their disconnection

			e.addUser("fleet", "pw-2") // the rotation
			e.broker.Reload()
			eventually(t, 5*time.Second, func() bool { return strings.Count(e.broker.Output(), "loaded 3 users") >= 2 }, "no second reload")
			time.Sleep(1500 * time.Millisecond)
			out := e.broker.Output()
			reloadAt := strings.LastIndex(out, "Reloading config.")
			after := out[reloadAt:]
			assert.NotContains(t, after, "event=banned", "a re-authentication must never count")
			assert.Equal(t, "0", e.redis.CLI("EXISTS", "guard:block:ip:"+nat), "no ban of the NAT address")
			assert.Equal(t, "0", e.redis.CLI("EXISTS", "rate:guard:fail:ip:"+nat), "no failure counted")
			for _, id := range ids {
				assert.Equal(t, "0", e.redis.CLI("HLEN", "guard:conn:"+id), "no phantom live connection for %s", id)
			}
			if mode == "tick" {
				// Where the broker hands offline sessions to the plugin, it says so.
				assert.Contains(t, after, "reauth=true")
			}
			// The devices themselves, back with the new password, are welcome.
			assert.EqualValues(t, accepted, e.connect(as(nat, "fleet-0", "fleet", "pw-2")))
			assert.EqualValues(t, accepted, e.connect(as("127.0.62.3", "keep-0", "alice", "alice-pw")))
		})
	}
}
