package config

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// DEFECT. brokerconf's option line before any auth_plugin or plugin line
// of its file (an include_dir file holding only the plugin's options, or
// options written above the plugin line) is reported with the whole first
// word: "auth_opt_redis_password<TAB>S3cret: no auth_plugin or plugin line
// before it in this file". Mosquitto splits words at spaces only, so what
// follows the tab, a password, is shown by guardctl --config and by the
// plugin's acl_check auto reading (config/brokerconf.go confReader.option,
// its f.plugin == nil and len(name) < 3 branches print word, not
// NameHead's head, unlike the empty-value branch next to them).
func TestAtk61OptionBeforePluginLineShowsTabbedPassword(t *testing.T) {
	dir := t.TempDir()
	inc := filepath.Join(dir, "conf.d")
	require.NoError(t, os.Mkdir(inc, 0o755))
	main := filepath.Join(dir, "mosquitto.conf")
	require.NoError(t, os.WriteFile(main, []byte("listener 1883\nauth_plugin /usr/lib/mosquitto_guard.so\nauth_opt_key_prefix guard:\ninclude_dir "+inc+"\n"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(inc, "redis.conf"), []byte("auth_opt_redis_password\tAtk61Secret-pw\n"), 0o600))
	_, err := ReadBrokerConfig(main)
	require.Error(t, err, "an option without a plugin line in its file is refused (as Mosquitto does)")
	assert.NotContains(t, err.Error(), "Atk61Secret", "what follows the tab (the password) is shown")

	same := filepath.Join(dir, "above.conf")
	require.NoError(t, os.WriteFile(same, []byte("plugin_opt_redis_password\tAtk61Other-pw\nplugin /usr/lib/mosquitto_guard.so\n"), 0o600))
	_, err = ReadBrokerConfig(same)
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "Atk61Other", "what follows the tab (the password) is shown")
}

// HOLDS. The tab's siblings: a vertical tab, a form feed, a no-break space
// (U+00A0, pasted from a web page) or an ideographic space between an
// option and its value, with and without a value after a space, are cut
// from the name wherever the plugin (UnknownOption) and brokerconf
// (ReadBrokerConfig) name it.
func TestAtk61OtherBlanksInOptionNameCut(t *testing.T) {
	for _, sep := range []string{"\v", "\f", "\u00a0", "\u3000", "\u2028", "\x1b"} {
		name := "redis_password" + sep + "Atk61Blank"
		assert.NotContains(t, UnknownOption(name).Error(), "Atk61Blank", "sep %q", sep)
		_, err := Parse(map[string]string{name: "x"})
		require.Error(t, err)
		assert.NotContains(t, err.Error(), "Atk61Blank", "sep %q", sep)

		dir := t.TempDir()
		p := filepath.Join(dir, "m.conf")
		require.NoError(t, os.WriteFile(p, []byte("auth_plugin /x/mosquitto_guard.so\nauth_opt_"+name+"\n"), 0o600))
		_, err = ReadBrokerConfig(p)
		require.Error(t, err)
		assert.NotContains(t, err.Error(), "Atk61Blank", "sep %q", sep)
	}
}
