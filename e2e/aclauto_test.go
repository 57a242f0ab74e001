package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// aclFileText lets alice publish and bob read on topic t only.
const aclFileText = "user alice\ntopic t\nuser bob\ntopic t\n"

// expectACLFileDecides publishes u (which acl_file forbids) then t (which
// it allows) as alice, and requires bob's watcher on # to see t first: had
// the plugin answered allow, u would arrive first.
func expectACLFileDecides(t *testing.T, e *env, w *mqttc.Conn, ip string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p, code := e.dial(as(ip, "pub-"+ip, "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	require.NoError(t, p.Publish(ctx, "u", []byte("denied by acl_file")))
	require.NoError(t, p.Publish(ctx, "t", []byte("allowed by acl_file")))
	topic, payload, err := w.Next(ctx)
	require.NoError(t, err)
	assert.Equal(t, "t", topic, "acl_file decides: the message on u must not reach the subscriber")
	assert.Equal(t, "allowed by acl_file", string(payload))
}

// Finding 1 (1c): the broker reads every include_dir file, the plugin's
// reader stops at its bound of 1000 config files. The acl_file sits in the
// file past the bound. Before: acl_check auto answered allow from what it
// had read, its allow ended every ACL check before acl_file's, and alice's
// message on u reached bob. Now an incomplete read answers off, logged with
// what was not read, and acl_file decides.
func TestACLAutoOffWhenConfigReadIncomplete(t *testing.T) {
	e := envWithoutBroker(t)
	inc := filepath.Join(e.dir, "conf.d")
	require.NoError(t, os.Mkdir(inc, 0o755))
	// The main file and 999 includes make 1000 files: zz.conf is the 1001st.
	for i := range 999 {
		testenv.WriteFile(t, inc, fmt.Sprintf("f%04d.conf", i), "# nothing\n")
	}
	acl := testenv.WriteFile(t, e.dir, "acl", aclFileText)
	testenv.WriteFile(t, inc, "zz.conf", "acl_file "+acl+"\n")
	e.broker = startBroker(t, e.conf("include_dir "+inc))

	line := e.logLine("mosquitto-guard: acl_check ")
	assert.Contains(t, line, "acl_check off: the broker's config could not be read whole here (")
	assert.Contains(t, line, "zz.conf and any file after it: not read: more than 1000 config files")
	assert.Contains(t, line, "set acl_check defer if acl_file or another plugin answers ACL checks")
	w := e.subscribe("127.8.4.9", "#")
	expectACLFileDecides(t, e, w, "127.8.4.1")
}

// Finding 2: mosquitto -c a.conf -c b.conf reads both files; the plugin read
// only the first. With the acl_file in b.conf, auto answered allow, and
// alice's message on u reached bob. Now every -c is read, in order, as one
// config: auto answers defer and acl_file decides.
func TestACLAutoReadsEveryConfigFile(t *testing.T) {
	e := envWithoutBroker(t)
	port := testenv.FreePort(t)
	a := testenv.WriteFile(t, e.dir, "a.conf", fmt.Sprintf("listener %d 127.0.0.1\nlog_dest stderr\nlog_type all\nuser root\n", port)+e.conf())
	acl := testenv.WriteFile(t, e.dir, "acl", aclFileText)
	b := testenv.WriteFile(t, e.dir, "b.conf", "acl_file "+acl+"\n")
	e.broker = &testenv.Mosquitto{Addr: fmt.Sprintf("127.0.0.1:%d", port)}
	out := testenv.StartProcess(t, e.dir, "mosquitto", "-c", a, "-c", b) // the config logs to stderr, which mosquitto does not buffer
	require.NoError(t, out.WaitPort(e.broker.Addr, 10*time.Second), out.Output())

	require.True(t, out.WaitOutput("mosquitto-guard: ready", 5*time.Second), out.Output())
	assert.Contains(t, out.Output(), "mosquitto-guard: acl_check defer: acl_file is set")
	w := e.subscribe("127.8.5.9", "#")
	expectACLFileDecides(t, e, w, "127.8.5.1")
}

// Finding 4: a plugin line giving the plugin by bare name is found by the
// dynamic loader's search (here LD_LIBRARY_PATH), as dlopen finds it.
// Before, the name was compared as a path with the loaded file's, so the
// plugin took itself for another plugin: auto answered off, and with
// per_listener_settings no listener matched its instances. Now it knows
// itself, and each listener gets its own answer.
func TestACLAutoKnowsItselfByBareName(t *testing.T) {
	e := envWithoutBroker(t)
	t.Setenv("LD_LIBRARY_PATH", filepath.Dir(pluginPath))
	acl := testenv.WriteFile(t, e.dir, "acl", aclFileText)
	plugin := strings.Join([]string{
		"auth_plugin " + filepath.Base(pluginPath),
		"auth_opt_redis_addr " + e.redis.Addr,
		"auth_opt_password_file " + e.passwd,
	}, "\n")
	port2 := testenv.FreePort(t)
	e.broker = startBroker(t, "per_listener_settings true\nlistener {{PORT}} 127.0.0.1\n"+plugin+"\nacl_file "+acl+
		fmt.Sprintf("\nlistener %d 127.0.0.1\n", port2)+plugin+"\n")

	e.logLine("acl_check defer: listener 1 of 2", "acl_file is set")
	e.logLine("acl_check allow: listener 2 of 2", "no ACL mechanism is configured")
	assert.NotContains(t, e.broker.Output(), "another plugin is loaded")
	w := e.subscribe("127.8.6.9", "#")
	expectACLFileDecides(t, e, w, "127.8.6.1")
}

// Another plugin, loaded before this one or after it, is still another
// plugin to the loader's answer: auto answers off and names it.
func TestACLAutoOffWithAnotherPlugin(t *testing.T) {
	testenv.Need(t, "mosquitto", "mosquitto_passwd", "redis-server")
	const dynsec = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
	if _, err := os.Stat(dynsec); err != nil {
		t.Skipf("no %s", dynsec)
	}
	e := envWithoutBroker(t)
	state := testenv.WriteFile(t, e.dir, "dynsec.json", `{"clients":[],"groups":[],"roles":[]}`)
	other := "plugin " + dynsec + "\nplugin_opt_config_file " + state
	for _, conf := range []string{other + "\n" + e.conf(), e.conf(other)} {
		e.broker = startBroker(t, conf)
		e.logLine("mosquitto-guard: acl_check off: another plugin is loaded (" + dynsec + ")")
	}
}
