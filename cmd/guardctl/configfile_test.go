package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// debianLayout writes Debian 12's /etc/mosquitto/mosquitto.conf (package
// mosquitto 2.0.11), its include_dir pointed at dir/conf.d, with guardConf
// as conf.d/guard.conf, and returns the main file's path.
func debianLayout(t *testing.T, dir, guardConf string) string {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "conf.d"), 0o755))
	main := filepath.Join(dir, "mosquitto.conf")
	files := map[string]string{
		main: `# Place your local configuration in /etc/mosquitto/conf.d/
#
# A full description of the configuration file is at
# /usr/share/doc/mosquitto/examples/mosquitto.conf.example

pid_file /run/mosquitto/mosquitto.pid

persistence true
persistence_location /var/lib/mosquitto/

log_dest file /var/log/mosquitto/mosquitto.log

include_dir ` + filepath.Join(dir, "conf.d") + "\n",
		filepath.Join(dir, "conf.d", "README"):     "Any files placed in this directory that have a .conf ending will be loaded\n",
		filepath.Join(dir, "conf.d", "guard.conf"): guardConf,
	}
	for p, text := range files {
		require.NoError(t, os.WriteFile(p, []byte(text), 0o644))
	}
	return main
}

// Issue 9: with the plugin's lines in conf.d/guard.conf, --config on the
// main file found nothing and fell back to 127.0.0.1:6379 and guard:.
func TestConfigDebianLayout(t *testing.T) {
	main := debianLayout(t, t.TempDir(), `listener 1883
allow_anonymous false
auth_plugin /usr/lib/mosquitto-guard/mosquitto_guard.so
auth_opt_redis_addr 10.1.2.3:6380
auth_opt_redis_db 2
auth_opt_key_prefix site7:
auth_opt_password_file /etc/mosquitto/passwd-the-operator-cannot-read
`)
	got, err := resolved(t, nil, "--config", main)
	require.NoError(t, err)
	assert.Equal(t, withManaged(map[string]string{
		"redis_addr": "10.1.2.3:6380", "redis_username": "", "redis_password": "", "redis_db": "2", "key_prefix": "site7:",
	}), got)
	o, kb, err := storeOptions(got)
	require.NoError(t, err, "password_file is not opened")
	assert.Equal(t, []string{"10.1.2.3:6380"}, o.Addrs)
	assert.Equal(t, 2, o.DB)
	assert.Equal(t, "site7:", kb.Prefix)
}

// mosquitto-guard's line is the one whose file name starts with
// mosquitto_guard, or else the only plugin line, if its options are
// mosquitto-guard's (before: a dynamic-security plugin alone was taken for
// it, and guardctl silently used the default Redis).
func TestConfigFindsGuardsPlugin(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(text), 0o644))
		return p
	}
	both := write("both.conf", "plugin /usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so\nplugin_opt_config_file /var/lib/dynsec.json\n"+
		"auth_plugin /opt/guard/mosquitto_guard-1.2.so\nauth_opt_key_prefix g:\n")
	got, err := resolved(t, nil, "--config", both)
	require.NoError(t, err)
	assert.Equal(t, "g:", got["key_prefix"])

	renamed := write("renamed.conf", "auth_plugin /opt/guard.so\nauth_opt_key_prefix r:\n")
	got, err = resolved(t, nil, "--config", renamed)
	require.NoError(t, err)
	assert.Equal(t, "r:", got["key_prefix"], "the only plugin")

	for name, c := range map[string]struct{ conf, why string }{
		"dynsec.conf": {"plugin /usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so\nplugin_opt_config_file /var/lib/dynsec.json\n",
			"has options mosquitto-guard does not know (config_file)"},
		"bare.conf":  {"auth_plugin /opt/other.so\n", "has none of mosquitto-guard's options"},
		"mixed.conf": {"auth_plugin /opt/other.so\nauth_opt_redis_addr 10.0.0.9:6379\nauth_opt_backends redis\n", "has options mosquitto-guard does not know (backends)"},
	} {
		path := write(name, c.conf)
		_, err := resolved(t, nil, "--config", path)
		require.Error(t, err, "%s: another plugin alone must not give the default Redis", name)
		assert.Contains(t, err.Error(), "config "+path+": its only plugin, ", name)
		assert.Contains(t, err.Error(), " ("+path+":1), is not named mosquitto_guard* and "+c.why, name)
		assert.Contains(t, err.Error(), "--redis-addr", name)
	}

	two := write("two.conf", "auth_plugin /opt/a.so\nauth_plugin /opt/b.so\n")
	_, err = resolved(t, nil, "--config", two)
	assert.EqualError(t, err, "config "+two+": none of its plugins is named mosquitto_guard*: /opt/a.so ("+two+":1), /opt/b.so ("+two+":2)")
}

// per_listener_settings loads the plugin once per listener: the same
// settings are one Redis; different ones are an error naming each, unless
// the flags given make them the same. No password is shown.
func TestConfigSeveralInstances(t *testing.T) {
	dir := t.TempDir()
	same := filepath.Join(dir, "same.conf")
	require.NoError(t, os.WriteFile(same, []byte(`per_listener_settings true
listener 1883
auth_plugin /usr/lib/mosquitto_guard.so
auth_opt_redis_addr 10.0.0.1:6379
listener 8883
auth_plugin /usr/lib/mosquitto_guard.so
auth_opt_redis_addr  10.0.0.1:6379 
`), 0o644))
	got, err := resolved(t, nil, "--config", same)
	require.NoError(t, err)
	assert.Equal(t, "10.0.0.1:6379", got["redis_addr"])

	differ := filepath.Join(dir, "differ.conf")
	require.NoError(t, os.WriteFile(differ, []byte(`per_listener_settings true
listener 1883
auth_plugin /usr/lib/mosquitto_guard.so
auth_opt_redis_password pw-one
listener 8883 127.0.0.1
auth_plugin /usr/lib/mosquitto_guard.so
auth_opt_key_prefix second:
auth_opt_redis_password pw-two
`), 0o644))
	_, err = resolved(t, nil, "--config", differ)
	require.Error(t, err)
	assert.Equal(t, "config "+differ+": mosquitto-guard is loaded 2 times with different key_prefix, redis_password: "+
		differ+`:3 (listener 1883): key_prefix "guard:"; `+
		differ+`:6 (listener 8883 127.0.0.1): key_prefix "second:"; `+
		"say which with --key-prefix, --redis-password or "+passwordEnv+", which beat --config", err.Error())
	assert.NotContains(t, err.Error(), "pw-")

	got, err = resolved(t, map[string]string{passwordEnv: "pw"}, "--config", differ, "--key-prefix", "second:")
	require.NoError(t, err, "the flags make them one")
	assert.Equal(t, "second:", got["key_prefix"])
	assert.Equal(t, "pw", got["redis_password"])
}

// Two instances that differ only in redis_password: the error says so and
// names the way to settle it (before: two identical-looking descriptions,
// and flags none of which settles a password).
func TestConfigInstancesDifferInPassword(t *testing.T) {
	differ := filepath.Join(t.TempDir(), "differ.conf")
	require.NoError(t, os.WriteFile(differ, []byte(`per_listener_settings true
listener 1883
auth_plugin /usr/lib/mosquitto_guard.so
auth_opt_redis_addr redis.internal:6379
auth_opt_redis_password pw-one
listener 8883
auth_plugin /usr/lib/mosquitto_guard.so
auth_opt_redis_addr redis.internal:6379
auth_opt_redis_password pw-two
`), 0o644))
	_, err := resolved(t, nil, "--config", differ)
	require.Error(t, err)
	assert.Equal(t, "config "+differ+": mosquitto-guard is loaded 2 times with different redis_password: "+
		differ+":3 (listener 1883); "+differ+":7 (listener 8883); "+
		"say which with --redis-password or "+passwordEnv+", which beat --config", err.Error())
	assert.NotContains(t, err.Error(), "pw-")

	got, err := resolved(t, map[string]string{passwordEnv: "pw-two"}, "--config", differ)
	require.NoError(t, err, "the environment settles it")
	assert.Equal(t, "redis.internal:6379", got["redis_addr"])
}

// A bad value read from the config is named with the file and line of its
// option line (before: "option redis_db: bad value" with no place); one
// given by a flag is not.
func TestConfigBadValueNamesItsLine(t *testing.T) {
	main := debianLayout(t, t.TempDir(), "auth_plugin /usr/lib/mosquitto_guard.so\nplugin_opt_redis_db x\nauth_opt_redis_addr redis://:S3cret@10.0.0.1:6379/0\n")
	guard := filepath.Join(filepath.Dir(main), "conf.d", "guard.conf")
	_, err := resolved(t, nil, "--config", main)
	require.Error(t, err)
	assert.Equal(t, guard+`:3: option redis_addr: bad value "***@10.0.0.1:6379/0": expected host:port, or several host:port separated by commas (a Redis Cluster's nodes, or the sentinels with redis_sentinel_master), without a user or password (set redis_username and redis_password); `+
		guard+`:2: option redis_db: bad value "x": expected a whole number from 0 to 65536`, err.Error())

	_, err = resolved(t, nil, "--config", main, "--redis-db", "1", "--redis-addr", "nohost")
	assert.EqualError(t, err, `option redis_addr: bad value "nohost": expected host:port, or several host:port separated by commas (a Redis Cluster's nodes, or the sentinels with redis_sentinel_master)`)
}

// An option line Mosquitto would refuse, in an include_dir file, is named
// with its file and line.
func TestConfigIncludedFileErrors(t *testing.T) {
	dir := t.TempDir()
	main := debianLayout(t, dir, "auth_opt_redis_addr 10.0.0.1:6379\n")
	_, err := resolved(t, nil, "--config", main)
	assert.EqualError(t, err, "config: "+filepath.Join(dir, "conf.d", "guard.conf")+
		":1: auth_opt_redis_addr: no auth_plugin or plugin line before it in this file")

	dir = t.TempDir()
	_, err = resolved(t, nil, "--config", debianLayout(t, dir, "auth_plugin /usr/lib/mosquitto_guard.so\nauth_opt_redis_db 99999999\n"))
	assert.EqualError(t, err, filepath.Join(dir, "conf.d", "guard.conf")+`:2: option redis_db: bad value "99999999": expected a whole number from 0 to 65536`,
		"the values are checked as the plugin checks them, the line named")
}

// A misspelt option in the plugin's lines is an error naming its line and
// the option meant, not a silent fall-back to the default Redis (the
// broker refuses to start with it): found by a README-only attacker, whose
// bans went to 127.0.0.1:6379.
func TestConfigUnknownOptionNamesItsLine(t *testing.T) {
	main := debianLayout(t, t.TempDir(), "auth_plugin /usr/lib/mosquitto_guard.so\nauth_opt_redis_adr 10.0.0.1:6379\n")
	guard := filepath.Join(filepath.Dir(main), "conf.d", "guard.conf")
	_, err := resolved(t, nil, "--config", main)
	assert.EqualError(t, err, guard+":2: option redis_adr: unknown option (did you mean redis_addr?)")
}

// A name that starts like a Redis option is no Redis option: refused, never
// read as redis_addr.
func TestConfigLookalikeOptionRefused(t *testing.T) {
	main := debianLayout(t, t.TempDir(), "auth_plugin /usr/lib/mosquitto_guard.so\nauth_opt_redis_addr 10.0.0.2:6379\nauth_opt_redis_addr_extra 1.2.3.4:1\n")
	_, err := resolved(t, nil, "--config", main)
	assert.ErrorContains(t, err, "guard.conf:3: option redis_addr_extra: unknown option")
}
