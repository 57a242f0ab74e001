package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// DEFECT. A renamed plugin (its file not mosquitto_guard*, the only plugin
// line) with "auth_opt_redis_password<TAB>S3cret x": Mosquitto splits at
// spaces only, so the plugin gets an option named
// "redis_password\tS3cret". guardctl --config refuses to read that plugin
// as mosquitto-guard's, and lonePlugin names its unknown options whole
// ("has options mosquitto-guard does not know (redis_password\tS3cret)"),
// the password on stderr, where config.UnknownOption's NameHead would
// show "redis_password..." (cmd/guardctl/config.go lonePlugin). The same
// option before any plugin line of its file is named whole by
// config.ReadBrokerConfig (config TestAtk61OptionBeforePluginLineShowsTabbedPassword).
func TestAtk61LonePluginNamesTabbedPassword(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "mosquitto.conf")
	require.NoError(t, os.WriteFile(conf, []byte("listener 1883\nauth_plugin /usr/lib/mosquitto/guard.so\nauth_opt_redis_addr 127.0.0.1:1\nauth_opt_redis_password\tAtk61Lone-pw x\n"), 0o600))
	for _, cmd := range []string{"list", "audit"} {
		var out, errb bytes.Buffer
		code := run([]string{cmd, "--config", conf}, &out, &errb)
		assert.NotEqual(t, 0, code, "%s: the config is refused", cmd)
		// "Atk61Lone-pw", not "Atk61Lone": the test's temporary directory holds its name.
		assert.NotContains(t, out.String()+errb.String(), "Atk61Lone-pw", "%s: what follows the tab (the password) is shown", cmd)
	}
}
