package main

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// Issue 9, as a new user met it: Debian's layout, the plugin's lines in
// /etc/mosquitto/conf.d/guard.conf, and guardctl given the main file. Before,
// guardctl ignored include_dir: ban reported success on 127.0.0.1:6379 under
// guard: (or failed to connect there), and list said "no bans" while bans
// existed. Now both reach the Redis, database, password and prefix of
// guard.conf.
func TestDebianIncludeDirEndToEnd(t *testing.T) {
	t.Setenv(passwordEnv, "")
	r := testenv.StartRedis(t, "--requirepass", "deb-s3cret")
	main := debianLayout(t, t.TempDir(), `listener 1883
allow_anonymous false
auth_plugin /usr/lib/mosquitto-guard/mosquitto_guard.so
auth_opt_redis_addr `+r.Addr+`
auth_opt_redis_password deb-s3cret
auth_opt_redis_db 3
auth_opt_key_prefix site7:
auth_opt_password_file /etc/mosquitto/passwd
`)
	guardctl := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := run(args, &out, &errb)
		return code, out.String(), errb.String()
	}

	code, out, errOut := guardctl("ban", "--config", main, "--reason", "debian layout", "ip", "203.0.113.7")
	require.Equal(t, exitOK, code, "%s%s", out, errOut)
	assert.Equal(t, "1", r.CLI("-a", "deb-s3cret", "--no-auth-warning", "-n", "3", "EXISTS", "site7:block:ip:203.0.113.7"),
		"written to guard.conf's Redis, database and prefix")
	assert.Equal(t, "debian layout", r.CLI("-a", "deb-s3cret", "--no-auth-warning", "-n", "3", "GET", "site7:block:ip:203.0.113.7"))

	code, out, errOut = guardctl("list", "--config", main)
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "1 ban\n")
	assert.Regexp(t, `ip\s+203\.0\.113\.7\s+operator\s+never\s+"debian layout"`, out)

	code, out, errOut = guardctl("unban", "--config", main, "ip", "203.0.113.7")
	require.Equal(t, exitOK, code, "%s%s", out, errOut)
	assert.Equal(t, "0", r.CLI("-a", "deb-s3cret", "--no-auth-warning", "-n", "3", "EXISTS", "site7:block:ip:203.0.113.7"))
}
