package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// Issue 9: moving a mosquitto-go-auth config over took 15 restarts, the
// broker naming one unknown option each time. Now one start logs every bad
// or unknown option, one line each, the replacement named, before the broker
// stops; and no value of a password option reaches the log.
func TestEveryBadOptionLoggedAtOnce(t *testing.T) {
	testenv.Need(t, "mosquitto", "mosquitto_passwd")
	e := &env{t: t, dir: t.TempDir()}
	e.passwd = filepath.Join(e.dir, "passwd")
	e.addUser("alice", "alice-pw")
	out := startExpectFail(t, e.conf(
		"auth_opt_backends files",
		"auth_opt_files_password_path /etc/mosquitto/go-auth/passwords",
		"auth_opt_files_acl_path /etc/mosquitto/go-auth/acls",
		"auth_opt_redis_host 10.9.8.7",
		"auth_opt_redis_port 6380",
		"auth_opt_log_level debug",
		"auth_opt_hasher_iterations 100000",
		"auth_opt_cache_password cache-pw-s3cret",
		"auth_opt_pg_password pg-pw-s3cret",
		"auth_opt_redis_pasword typo-pw-s3cret",
		"auth_opt_redis_password real-pw-s3cret",
		"auth_opt_redis_addr redis://:url-pw-s3cret@127.0.0.1:26379/0",
		"auth_opt_fail_limit lots",
		"plugin_opt_ban_time forever",
	))
	want := map[string]string{
		"backends":            "use backend instead",
		"files_password_path": "use password_file instead",
		"files_acl_path":      "set Mosquitto's own acl_file to that file",
		"redis_host":          "use redis_addr instead, as host:port",
		"redis_port":          "use redis_addr instead, as host:port",
		"log_level":           "not needed: the plugin logs through the broker",
		"hasher_iterations":   "not needed: the hash format and its parameters are read from each hash",
		"cache_password":      "not needed: auth_cache",
		"pg_password":         "not supported:",
		"redis_pasword":       "did you mean redis_password?",
		"redis_addr":          `bad value "***@127.0.0.1:26379/0": expected host:port`,
		"fail_limit":          `bad value "lots": expected a whole number`,
		"ban_time":            `bad value "forever": expected a duration`,
	}
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "mosquitto-guard: option ") {
			lines = append(lines, l)
		}
	}
	assert.Len(t, lines, len(want), "one line per bad option:\n%s", out)
	for name, hint := range want {
		found := false
		for _, l := range lines {
			if strings.Contains(l, "mosquitto-guard: option "+name+": ") {
				assert.Contains(t, l, hint, name)
				found = true
			}
		}
		assert.True(t, found, "no line for %s in:\n%s", name, out)
	}
	assert.NotContains(t, out, "s3cret", "no password value in the log")
	assert.NotContains(t, out, "10.9.8.7", "no value of an unknown option in the log")
	assert.NotContains(t, out, "mosquitto-guard: ready")
}

// The checks across options are logged together too: a ban_time above
// ban_max and an unreadable password_file in one start (before: the broker
// named ban_time, and the password file only at the next start).
func TestCrossOptionErrorsLoggedAtOnce(t *testing.T) {
	testenv.Need(t, "mosquitto")
	e := &env{t: t, dir: t.TempDir()}
	missing := filepath.Join(e.dir, "no-such-passwd")
	out := startExpectFail(t, e.conf("auth_opt_backend files", "auth_opt_ban_time 48h", "auth_opt_password_file "+missing))
	assert.Contains(t, out, `mosquitto-guard: option ban_time: bad value "48h": expected a duration at most ban_max`)
	assert.Contains(t, out, `mosquitto-guard: option password_file: bad value "`+missing+`": expected a regular file of at most 256 MiB readable by the broker's user`)
	assert.NotContains(t, out, "mosquitto-guard: ready")
}

// The reader guardctl and acl_check auto use sees the test harness's own
// broker config as the broker does: the plugin's line and its options.
func TestHarnessConfigReadsBack(t *testing.T) {
	e := &env{t: t, dir: t.TempDir()}
	e.passwd = filepath.Join(e.dir, "passwd")
	require.NoError(t, os.WriteFile(e.passwd, nil, 0o600))
	path := filepath.Join(e.dir, "mosquitto.conf")
	require.NoError(t, os.WriteFile(path, []byte(e.conf("auth_opt_fail_limit 3", "acl_file "+e.passwd)), 0o600))
	c, err := config.ReadBrokerConfig(path)
	require.NoError(t, err)
	require.Len(t, c.Plugins, 1)
	assert.Equal(t, pluginPath, c.Plugins[0].Path)
	assert.Equal(t, map[string]string{"redis_addr": "127.0.0.1:1", "password_file": e.passwd, "fail_limit": "3"}, c.Plugins[0].Options)
	assert.Equal(t, e.passwd, c.Plugins[0].Listener.ACLFile)
	o, err := config.Parse(c.Plugins[0].Options)
	require.NoError(t, err)
	assert.Equal(t, 3, o.Policy.Limit)
}
