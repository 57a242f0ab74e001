package e2e

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// With per_listener_settings true, acl_check auto is decided per listener:
// a listener with an acl_file defers to it, one without any ACL allows.
// Before, one answer (from the whole file) served every listener: the
// listener without an ACL got "defer", and every publish and subscribe on
// it was denied.
func TestPerListenerACLCheck(t *testing.T) {
	testenv.Need(t, "mosquitto", "mosquitto_passwd", "redis-server")
	e := &env{t: t, dir: t.TempDir()}
	e.passwd = e.dir + "/passwd"
	e.addUser("alice", "alice-pw")
	e.addUser("bob", "bob-pw")
	e.redis = startRedis(t)
	acl := testenv.WriteFile(t, e.dir, "acl", "user alice\ntopic t\nuser bob\ntopic t\n")
	port2 := testenv.FreePort(t)
	plugin := []string{
		"allow_anonymous false",
		"auth_plugin " + pluginPath,
		"auth_opt_redis_addr " + e.redis.Addr,
		"auth_opt_password_file " + e.passwd,
	}
	lines := append([]string{"per_listener_settings true", "listener {{PORT}} 127.0.0.1"}, plugin...)
	lines = append(lines, "acl_file "+acl, "listener "+strconv.Itoa(port2)+" 127.0.0.1")
	lines = append(lines, plugin...)
	conf := strings.Join(lines, "\n") + "\n"
	e.broker = testenv.StartMosquitto(t, conf)
	require.True(t, e.broker.WaitOutput("mosquitto-guard: ready", 5*time.Second))
	open := *e
	open.broker = &testenv.Mosquitto{Process: e.broker.Process, Addr: "127.0.0.1:" + strconv.Itoa(port2)}
	require.NoError(t, e.broker.WaitPort(open.broker.Addr, 5*time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	// The listener without an ACL: anything goes.
	w := open.subscribe("127.8.3.9", "any/#")
	p, code := open.dial(as("127.8.3.1", "pub-open", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	require.NoError(t, p.Publish(ctx, "any/topic", []byte("on the open listener")))
	topic, payload, err := w.Next(ctx)
	require.NoError(t, err, "a message on the listener without an ACL must flow")
	assert.Equal(t, "any/topic", topic)
	assert.Equal(t, "on the open listener", string(payload))

	// The listener with the acl_file still obeys it: t flows, u does not.
	wa := e.subscribe("127.8.3.19", "#")
	pa, code := e.dial(as("127.8.3.11", "pub-acl", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	require.NoError(t, pa.Publish(ctx, "u", []byte("denied by acl_file")))
	require.NoError(t, pa.Publish(ctx, "t", []byte("allowed by acl_file")))
	topic, payload, err = wa.Next(ctx)
	require.NoError(t, err)
	assert.Equal(t, "t", topic, "acl_file still decides on its listener")
	assert.Equal(t, "allowed by acl_file", string(payload))
	e.logLine("Denied PUBLISH from pub-acl")
	e.logLine("acl_check defer", "listener 1 of 2", "acl_file")
	e.logLine("acl_check allow", "listener 2 of 2")
}
