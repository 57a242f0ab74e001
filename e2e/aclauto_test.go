package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
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
	testenv.Need(t, "mosquitto", "mosquitto_passwd", "redis-server")
	e := &env{t: t, dir: t.TempDir()}
	e.passwd = filepath.Join(e.dir, "passwd")
	e.addUser("alice", "alice-pw")
	e.addUser("bob", "bob-pw")
	e.redis = startRedis(t)
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
