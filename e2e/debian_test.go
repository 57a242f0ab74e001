package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// Issue 9, end to end: Debian's layout, the plugin's lines in
// conf.d/guard.conf under include_dir, with a Redis password, a database and
// a key prefix that are not the defaults. The real mosquitto loads the plugin
// from there, and the real guardctl, given only the main mosquitto.conf,
// reaches the same Redis: its ban kicks the connected client and refuses it
// again; its list shows the ban; its unban lets the client back in. Before,
// guardctl ignored include_dir and used 127.0.0.1:6379 under guard:.
func TestDebianLayoutGuardctlReachesThePlugin(t *testing.T) {
	testenv.Need(t, "mosquitto", "mosquitto_passwd", "redis-server", "redis-cli")
	bin := buildGuardctl(t)
	e := &env{t: t, dir: t.TempDir()}
	e.redis = testenv.StartRedis(t, "--requirepass", "deb-s3cret")
	e.passwd = filepath.Join(e.dir, "passwd")
	e.addUser("alice", "alice-pw")

	confd := filepath.Join(e.dir, "conf.d")
	require.NoError(t, os.Mkdir(confd, 0o755))
	testenv.WriteFile(t, confd, "README", "Any files placed in this directory that have a .conf ending will be loaded\n")
	testenv.WriteFile(t, confd, "guard.conf", "allow_anonymous false\n"+
		"auth_plugin "+pluginPath+"\n"+
		"auth_opt_redis_addr "+e.redis.Addr+"\n"+
		"auth_opt_redis_password deb-s3cret\n"+
		"auth_opt_redis_db 3\n"+
		"auth_opt_key_prefix site7:\n"+
		"auth_opt_password_file "+e.passwd+"\n")
	// Debian 12's /etc/mosquitto/mosquitto.conf, its paths in the test's directory.
	e.broker = testenv.StartMosquitto(t, "# Place your local configuration in "+confd+"\n"+
		"persistence false\n"+
		"include_dir "+confd+"\n")
	require.True(t, e.broker.WaitOutput("mosquitto-guard: ready", 5*time.Second), "plugin did not report ready")

	guardctl := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, append(args, "--config", e.broker.ConfPath)...)
		cmd.Env = append(os.Environ(), "GUARD_REDIS_PASSWORD=")
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "guardctl %v: %s", args, out)
		return string(out)
	}

	alice := as("127.0.33.1", "deb-dev", "alice", "alice-pw")
	conn, code := e.dial(alice)
	require.EqualValues(t, accepted, code)

	guardctl("ban", "ip", "127.0.33.1", "--reason", "debian layout")
	assert.True(t, conn.Closed(2*time.Second), "the ban guardctl wrote did not kick the client")
	assert.EqualValues(t, refused, e.connect(alice), "the ban guardctl wrote does not refuse the client")
	assert.Equal(t, "debian layout", e.redis.CLI("-a", "deb-s3cret", "--no-auth-warning", "-n", "3", "GET", "site7:block:ip:127.0.33.1"))
	assert.Regexp(t, `ip\s+127\.0\.33\.1\s+operator\s+never\s+"debian layout"`, guardctl("list"))

	guardctl("unban", "ip", "127.0.33.1")
	eventually(t, 2*time.Second, func() bool { return e.connect(alice) == accepted }, "unban did not let the client back in")
}
