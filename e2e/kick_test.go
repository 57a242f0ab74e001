package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// dialWill connects c with a will on topic "wills/<id>".
func (e *env) dialWill(c client) *mqttc.Conn {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, code, err := mqttc.Dial(ctx, mqttc.Options{
		Addr: e.broker.Addr, SourceIP: c.ip, ClientID: c.id, Username: c.user, Password: c.pass,
		Will: &mqttc.Will{Topic: "wills/" + c.id, Payload: []byte("gone")},
	})
	require.NoError(e.t, err)
	require.EqualValues(e.t, accepted, code)
	e.t.Cleanup(func() { conn.Close() })
	return conn
}

// subscribe connects a watcher subscribed to topic.
func (e *env) subscribe(ip, topic string) *mqttc.Conn {
	e.t.Helper()
	w, code := e.dial(as(ip, "watcher-"+ip, "bob", "bob-pw"))
	require.EqualValues(e.t, accepted, code)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(e.t, w.Subscribe(ctx, topic, 0))
	return w
}

// quiet reports whether no message arrives on c within d.
func quiet(c *mqttc.Conn, d time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	_, _, err := c.Next(ctx)
	return err != nil
}

func TestOperatorBanKicksConnectedClients(t *testing.T) {
	e := newEnv(t)
	watcher := e.subscribe("127.0.40.99", "wills/#")
	cases := []struct {
		name, key string
		victim    client
	}{
		{"clientid", "guard:block:clientid:kick-1", as("127.0.40.1", "kick-1", "alice", "alice-pw")},
		{"username", "guard:block:username:alice", as("127.0.40.2", "kick-2", "alice", "alice-pw")},
		{"ip", "guard:block:ip:127.0.40.3", as("127.0.40.3", "kick-3", "alice", "alice-pw")},
		{"cidr", "guard:block:cidr:127.0.41.0/24", as("127.0.41.4", "kick-4", "alice", "alice-pw")},
	}
	for _, c := range cases {
		conn := e.dialWill(c.victim)
		bystander := e.dialWill(as("127.0.40.50", "bystander-"+c.name, "bob", "bob-pw"))
		start := time.Now()
		e.redis.CLI("SET", c.key, "operator ban", "EX", "60")
		assert.True(t, conn.Closed(time.Second), "%s: not kicked within a second", c.name)
		t.Logf("%s: kicked %s after the SET", c.name, time.Since(start).Round(time.Millisecond))
		e.logLine("event=kicked", `client_id="`+c.victim.id+`"`, `rule="`+c.key+`"`, "origin=operator")
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		assert.NoError(t, bystander.Ping(ctx), "%s: others stay connected", c.name)
		cancel()
		e.redis.CLI("DEL", c.key)
		e.expect(c.victim, accepted, "%s: the DEL reached the replica", c.name)
	}
	assert.True(t, quiet(watcher, 300*time.Millisecond), "a kick sends no will message")
}

func TestBanDoesNotKickAllowedOrAutoBanned(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 1")
	vip := e.dialWill(as("127.0.42.1", "vip", "alice", "alice-pw"))
	claimed := e.dialWill(as("127.0.42.3", "gateway", "alice", "alice-pw"))
	e.redis.CLI("SET", "guard:allow:ip:127.0.42.1", "")
	e.redis.CLI("SET", "guard:allow:clientid:gateway", "")
	e.redis.CLI("SET", "guard:block:cidr:127.0.42.0/24", "the whole lab")
	e.expect(as("127.0.42.2", "other", "alice", "alice-pw"), refused)
	assert.False(t, vip.Closed(300*time.Millisecond), "a client allowed by its address is not kicked")
	assert.True(t, claimed.Closed(time.Second), "an allow entry on a client ID does not lift a range ban")

	// An automatic ban (a brute force from a NAT address) does not kick the
	// address's connected clients: they proved their password.
	shared := e.dialWill(as("127.0.43.1", "nat-ok", "alice", "alice-pw"))
	e.connect(as("127.0.43.1", "nat-bad", "alice", "x"))
	e.connect(as("127.0.43.1", "nat-bad", "alice", "y"))
	eventually(t, 3*time.Second, func() bool { return e.redis.CLI("EXISTS", "guard:block:ip:127.0.43.1") == "1" }, "no auto ban")
	assert.False(t, shared.Closed(300*time.Millisecond))
}

func TestBanPropagatesToEveryBroker(t *testing.T) {
	a, b := twoBrokers(t)
	ca := a.dialWill(as("127.0.44.1", "fleet-1", "alice", "alice-pw"))
	cb := b.dialWill(as("127.0.44.2", "fleet-2", "alice", "alice-pw"))
	a.redis.CLI("SET", "guard:block:username:alice", "revoked")
	assert.True(t, ca.Closed(time.Second))
	assert.True(t, cb.Closed(time.Second))
	b.expect(as("127.0.44.3", "fleet-3", "alice", "alice-pw"), refused)
	a.redis.CLI("DEL", "guard:block:username:alice")
	a.expect(as("127.0.44.3", "fleet-3", "alice", "alice-pw"), accepted)
	b.expect(as("127.0.44.3", "fleet-3", "alice", "alice-pw"), accepted)
}

// Registering an ACL callback must not change what Mosquitto allows: with
// no ACL mechanism everything is allowed, with acl_file the file decides.
func TestACLCheckKeepsBrokerACLs(t *testing.T) {
	t.Run("no acl_file", func(t *testing.T) {
		e := newEnv(t)
		e.logLine("acl_check allow")
		w := e.subscribe("127.0.45.9", "any/#")
		p, _ := e.dial(as("127.0.45.1", "pub", "alice", "alice-pw"))
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		require.NoError(t, p.Publish(ctx, "any/topic", []byte("hello")))
		topic, payload, err := w.Next(ctx)
		require.NoError(t, err, "a message must still flow")
		assert.Equal(t, "any/topic", topic)
		assert.Equal(t, "hello", string(payload))
	})
	t.Run("acl_file", func(t *testing.T) {
		dir := t.TempDir()
		acl := testenv.WriteFile(t, dir, "acl", "user bob\ntopic read open/#\ntopic read closed/#\nuser alice\ntopic write open/#\n")
		e := newEnv(t, "acl_file "+acl)
		e.logLine("acl_check defer")
		w := e.subscribe("127.0.46.9", "#")
		p, _ := e.dial(as("127.0.46.1", "pub", "alice", "alice-pw"))
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		require.NoError(t, p.Publish(ctx, "closed/x", []byte("denied by acl_file")))
		require.NoError(t, p.Publish(ctx, "open/x", []byte("allowed")))
		topic, payload, err := w.Next(ctx)
		require.NoError(t, err)
		assert.Equal(t, "open/x", topic, "acl_file still decides")
		assert.Equal(t, "allowed", string(payload))
	})
}

// Until the kick lands, a banned connection's messages are refused. With
// per_listener_settings true Mosquitto 2.0.11 sends no TICK, so the kick
// waits for the next CONNECT: the window is visible.
func TestBannedConnectionRefusedUntilKicked(t *testing.T) {
	e := perListenerEnv(t)
	w := e.subscribe("127.0.47.9", "news/#")
	p, _ := e.dial(as("127.0.47.1", "rogue", "alice", "alice-pw"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, p.Publish(ctx, "news/1", []byte("before")))
	_, payload, err := w.Next(ctx)
	require.NoError(t, err)
	require.Equal(t, "before", string(payload))

	e.redis.CLI("SET", "guard:block:clientid:rogue", "stolen")
	time.Sleep(300 * time.Millisecond) // the replica has it within milliseconds
	require.NoError(t, p.Publish(ctx, "news/2", []byte("after the ban")))
	assert.True(t, quiet(w, 300*time.Millisecond), "a banned connection's publish is refused before its kick")
	e.logLine("event=kicked", `client_id="rogue"`)
	e.logLine("Denied PUBLISH from rogue")
	require.NoError(t, ctx.Err())

	e.connect(as("127.0.47.2", "someone", "bob", "bob-pw")) // a callback that runs the queued kick
	assert.True(t, p.Closed(2*time.Second))
	assert.False(t, strings.Contains(e.broker.Output(), "after the ban"))
}
