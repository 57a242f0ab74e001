package main

import (
	"flag"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// sampleConf is read as Mosquitto reads it: a comment starts with '#' in
// the first byte; an option's value is the rest of the line after one
// space; the later of two lines wins; only the Redis options are taken (a
// name this plugin does not know is an error: TestConfigUnknownOptionNamesItsLine).
const sampleConf = `# mosquitto.conf
listener 1883
auth_plugin /usr/lib/mosquitto-guard/mosquitto_guard.so
#auth_opt_redis_addr 10.0.0.1:6379
  # auth_opt_key_prefix commented:
auth_opt_redis_addr 10.0.0.2:6379
auth_opt_redis_password   s3cret # not a comment   
auth_opt_fail_limit 5
plugin_opt_redis_username guard
plugin_opt_redis_db 3

auth_opt_key_prefix first:
auth_opt_key_prefix  second:
`

func TestParseConfig(t *testing.T) {
	conf := testenv.WriteFile(t, t.TempDir(), "mosquitto.conf", sampleConf)
	got, err := resolved(t, nil, "--config", conf)
	require.NoError(t, err)
	assert.Equal(t, withManaged(map[string]string{
		"redis_addr":     "10.0.0.2:6379",
		"redis_password": "s3cret # not a comment",
		"redis_username": "guard",
		"redis_db":       "3",
		"key_prefix":     "second:",
	}), got)
}

// withManaged adds the TLS and Sentinel options at their defaults to vals.
func withManaged(vals map[string]string) map[string]string {
	for _, f := range managedFlags {
		if _, ok := vals[f.option]; !ok {
			vals[f.option] = config.Default(f.option)
		}
	}
	return vals
}

// A file without a plugin line is an error now, not a silent fall back to
// the defaults (issue 9).
func TestParseConfigNothing(t *testing.T) {
	conf := testenv.WriteFile(t, t.TempDir(), "mosquitto.conf", "listener 1883\n# auth_opt_redis_db 2\n")
	_, err := resolved(t, nil, "--config", conf)
	assert.ErrorContains(t, err, "no auth_plugin or plugin line, here or in its include_dir files")
}

// Lines Mosquitto refuses are refused, with their file and line: a tab does
// not separate an option from its value, and an option needs a value.
func TestParseConfigRefusesWhatMosquittoRefuses(t *testing.T) {
	conf := testenv.WriteFile(t, t.TempDir(), "mosquitto.conf",
		"auth_plugin /x/mosquitto_guard.so\nplugin_opt_redis_username\tguard\nauth_opt_redis_db\n")
	_, err := resolved(t, nil, "--config", conf)
	assert.ErrorContains(t, err, conf+":2: empty redis_username... value (a tab does not separate an option from its value; the rest of the line is not shown); "+conf+":3: empty redis_db value")
}

// resolved parses args as connection flags and returns the resolved options.
func resolved(t *testing.T, env map[string]string, args ...string) (map[string]string, error) {
	t.Helper()
	var c connFlags
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.register(fs)
	require.NoError(t, fs.Parse(args))
	return c.resolve(func(k string) string { return env[k] })
}

func TestResolvePrecedence(t *testing.T) {
	conf := testenv.WriteFile(t, t.TempDir(), "mosquitto.conf",
		"auth_plugin /usr/lib/mosquitto-guard/mosquitto_guard.so\nauth_opt_redis_addr 10.0.0.2:6379\nauth_opt_redis_password fromfile\nplugin_opt_redis_db 3\nauth_opt_key_prefix p:\n")

	got, err := resolved(t, nil)
	require.NoError(t, err)
	assert.Equal(t, withManaged(map[string]string{"redis_addr": "127.0.0.1:6379", "redis_username": "", "redis_password": "", "redis_db": "0", "key_prefix": "guard:"}), got, "defaults")

	got, err = resolved(t, nil, "--config", conf)
	require.NoError(t, err)
	assert.Equal(t, withManaged(map[string]string{"redis_addr": "10.0.0.2:6379", "redis_username": "", "redis_password": "fromfile", "redis_db": "3", "key_prefix": "p:"}), got, "the file beats the defaults")

	env := map[string]string{passwordEnv: "fromenv"}
	got, err = resolved(t, env, "--config", conf)
	require.NoError(t, err)
	assert.Equal(t, "fromenv", got["redis_password"], "the environment beats the file")

	got, err = resolved(t, env, "--config", conf, "--redis-addr", "a:1,b:2", "--redis-db", "0", "--key-prefix", "", "--redis-password", "fromflag", "--redis-username", "u")
	require.NoError(t, err)
	assert.Equal(t, withManaged(map[string]string{"redis_addr": "a:1,b:2", "redis_username": "u", "redis_password": "fromflag", "redis_db": "0", "key_prefix": ""}), got,
		"flags given beat everything, even when they repeat a default or are empty")

	_, err = resolved(t, nil, "--config", filepath.Join(t.TempDir(), "missing.conf"))
	assert.ErrorContains(t, err, "missing.conf")
}

func TestStoreOptions(t *testing.T) {
	vals := map[string]string{"redis_addr": "a:1, b:2", "redis_username": "u", "redis_password": "p", "key_prefix": "x:"}
	o, kb, err := storeOptions(vals)
	require.NoError(t, err)
	assert.Equal(t, []string{"a:1", "b:2"}, o.Addrs)
	_, _, err = storeOptions(map[string]string{"redis_addr": "a:1, b:2", "redis_db": "4"})
	assert.ErrorContains(t, err, "a cluster has database 0 only")
	vals = map[string]string{"redis_addr": "a:1", "redis_username": "u", "redis_password": "p", "redis_db": "4", "key_prefix": "x:"}
	o, kb, err = storeOptions(vals)
	require.NoError(t, err)
	assert.Equal(t, "u", o.Username)
	assert.Equal(t, "p", o.Password)
	assert.Equal(t, 4, o.DB)
	assert.Equal(t, 5*time.Second, o.Timeout)
	assert.Equal(t, "x:", kb.Prefix)

	for opt, bad := range map[string]string{"redis_addr": "nohost", "redis_db": "x"} {
		v := map[string]string{"redis_addr": "a:1", "redis_db": "0"}
		v[opt] = bad
		_, _, err := storeOptions(v)
		assert.ErrorContains(t, err, opt+`: bad value "`+bad+`"`)
	}
	_, _, err = storeOptions(map[string]string{"redis_addr": "a:1", "redis_db": "-1"})
	assert.Error(t, err)
	_, _, err = storeOptions(map[string]string{"redis_addr": "a:", "redis_db": "0"})
	assert.Error(t, err, "no port")
}

// The TLS and Sentinel options: flags named as the options, read from
// --config too, checked as the plugin checks them; the sentinels' password
// from the environment; flags before the command are moved after it.
func TestManagedRedisFlags(t *testing.T) {
	ca := testenv.WriteFile(t, t.TempDir(), "ca.pem", "not a certificate\n")
	got, err := resolved(t, map[string]string{sentinelPasswordEnv: "fromenv"},
		"--redis-addr", "10.0.0.1:26379,10.0.0.2:26379", "--redis-sentinel-master", "mymaster",
		"--redis-sentinel-username", "sent", "--redis-tls", "on", "--redis-tls-server-name", "redis.example")
	require.NoError(t, err)
	assert.Equal(t, "mymaster", got["redis_sentinel_master"])
	assert.Equal(t, "fromenv", got["redis_sentinel_password"])
	assert.Equal(t, "on", got["redis_tls"])
	o, _, err := storeOptions(got)
	require.NoError(t, err)
	assert.Equal(t, []string{"10.0.0.1:26379", "10.0.0.2:26379"}, o.Addrs)
	assert.Equal(t, "mymaster", o.SentinelMaster)
	assert.Equal(t, "sent", o.SentinelUsername)
	assert.Equal(t, "fromenv", o.SentinelPassword)
	require.NotNil(t, o.TLS)
	assert.Equal(t, "redis.example", o.TLS.ServerName)
	assert.Equal(t, 5*time.Second, o.Timeout, "guardctl's own timeout")

	got, err = resolved(t, map[string]string{sentinelPasswordEnv: "fromenv"}, "--redis-sentinel-password", "fromflag", "--redis-sentinel-master", "m")
	require.NoError(t, err)
	assert.Equal(t, "fromflag", got["redis_sentinel_password"], "a flag beats the environment")

	conf := testenv.WriteFile(t, t.TempDir(), "mosquitto.conf", "auth_plugin /x/mosquitto_guard.so\n"+
		"auth_opt_redis_tls on\nauth_opt_redis_tls_ca "+ca+"\nauth_opt_redis_sentinel_master mymaster\n")
	_, err = resolved(t, nil, "--config", conf)
	assert.EqualError(t, err, conf+`:3: option redis_tls_ca: bad value "`+ca+`": expected a PEM file of CA certificates readable by the broker's user (no CERTIFICATE block in it)`,
		"checked as the plugin checks it, naming the line")
	got, err = resolved(t, nil, "--config", conf, "--redis-tls-ca", "")
	require.NoError(t, err, "a flag beats the file")
	assert.Equal(t, "mymaster", got["redis_sentinel_master"])
	assert.Equal(t, "on", got["redis_tls"])

	for _, args := range [][]string{{"--redis-tls", "yes"}, {"--redis-tls-ca", ca}} {
		got, err := resolved(t, nil, args...)
		require.NoError(t, err)
		_, _, err = storeOptions(got)
		assert.Error(t, err, "%v", args)
	}
	assert.Equal(t, []string{"ban", "ip", "1.2.3.4", "--redis-tls", "on", "--redis-sentinel-master", "m"},
		commandFirst([]string{"--redis-tls", "on", "--redis-sentinel-master", "m", "ban", "ip", "1.2.3.4"}))
}
