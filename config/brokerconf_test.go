package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// debianMain is Debian 12's /etc/mosquitto/mosquitto.conf (package
// mosquitto 2.0.11), its include_dir pointed at dir/conf.d.
func debianMain(dir string) string {
	return `# Place your local configuration in /etc/mosquitto/conf.d/
#
# A full description of the configuration file is at
# /usr/share/doc/mosquitto/examples/mosquitto.conf.example

pid_file /run/mosquitto/mosquitto.pid

persistence true
persistence_location /var/lib/mosquitto/

log_dest file /var/log/mosquitto/mosquitto.log

include_dir ` + filepath.Join(dir, "conf.d") + "\n"
}

// writeFiles writes name -> text under dir and returns dir.
func writeFiles(t *testing.T, dir string, files map[string]string) string {
	t.Helper()
	for name, text := range files {
		p := filepath.Join(dir, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(text), 0o644))
	}
	return dir
}

// Debian's layout: the plugin's lines live in conf.d/guard.conf, included by
// the main file (issue 9: guardctl --config did not follow include_dir).
func TestReadBrokerConfigDebianLayout(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"mosquitto.conf": debianMain(dir),
		"conf.d/README":  "Any files placed in this directory that have a .conf ending will be loaded\n",
		"conf.d/guard.conf": `listener 1883
allow_anonymous false
auth_plugin /usr/lib/mosquitto-guard/mosquitto_guard.so
auth_opt_redis_addr 10.1.2.3:6380
auth_opt_key_prefix site7:
plugin_opt_redis_db 2
auth_opt_password_file /etc/mosquitto/passwd
`,
		"conf.d/acl.conf": "acl_file /etc/mosquitto/acl\n",
	})
	c, err := ReadBrokerConfig(filepath.Join(dir, "mosquitto.conf"))
	require.NoError(t, err)
	require.Len(t, c.Plugins, 1)
	p := c.Plugins[0]
	assert.Equal(t, "/usr/lib/mosquitto-guard/mosquitto_guard.so", p.Path)
	assert.Equal(t, map[string]string{
		"redis_addr": "10.1.2.3:6380", "key_prefix": "site7:", "redis_db": "2", "password_file": "/etc/mosquitto/passwd",
	}, p.Options)
	assert.Equal(t, filepath.Join(dir, "conf.d", "guard.conf")+":3", p.Where())
	assert.Equal(t, map[string]int{"redis_addr": 4, "key_prefix": 5, "redis_db": 6, "password_file": 7}, p.OptionLines)
	assert.Equal(t, filepath.Join(dir, "conf.d", "guard.conf")+":6", p.OptionWhere("redis_db"))
	assert.Equal(t, p.Where(), p.OptionWhere("fail_limit"), "not given: the plugin's line")
	assert.Equal(t, "every listener", p.Listener.Name)
	assert.Equal(t, "/etc/mosquitto/acl", p.Listener.ACLFile, "acl.conf, read before guard.conf")
	mode, why := c.aclMode(pathIs("/usr/lib/mosquitto-guard/mosquitto_guard.so"), 0)
	assert.Equal(t, ACLDefer, mode, why)
}

// include_dir reads *.conf in the order of Mosquitto's scmp_p (checked
// against its C code built with gcc and glibc): byte by byte, by the
// upper-cased byte first, then upper case first; a name must be longer than
// ".conf" and end in it exactly.
func TestIncludeDirOrder(t *testing.T) {
	dir := t.TempDir()
	names := []string{"B.conf", "a.conf", "A.conf", "_x.conf", "ab.conf", "\xc3\xa9.conf", "Ab.conf"}
	files := map[string]string{"mosquitto.conf": "include_dir " + filepath.Join(dir, "d") + "\n"}
	for _, n := range names {
		files["d/"+n] = "auth_plugin /p/" + n + "\n"
	}
	for _, skipped := range []string{".conf", "x.CONF", "x.conf.bak", "README"} {
		files["d/"+skipped] = "auth_plugin /skipped/" + skipped + "\n"
	}
	writeFiles(t, dir, files)
	c, err := ReadBrokerConfig(filepath.Join(dir, "mosquitto.conf"))
	require.NoError(t, err)
	var got []string
	for _, p := range c.Plugins {
		got = append(got, strings.TrimPrefix(p.Path, "/p/"))
	}
	// '_' (95) is after every upper-cased letter; glibc's toupper gives a
	// byte over 127 (a negative char) its unsigned value: after ASCII.
	assert.Equal(t, []string{"A.conf", "Ab.conf", "a.conf", "ab.conf", "B.conf", "_x.conf", "\xc3\xa9.conf"}, got)
}

func TestScmp(t *testing.T) {
	for _, c := range [][2]string{{"A", "a"}, {"a", "B"}, {"a", "ab"}, {"Z", "_"}, {"a", "\xff"}, {"a\xff", "a"}} {
		assert.Negative(t, scmp(c[0], c[1]), "%q < %q", c[0], c[1])
		assert.Positive(t, scmp(c[1], c[0]), "%q > %q", c[1], c[0])
	}
	assert.Zero(t, scmp("x.conf", "x.conf"))
}

// Options belong to the last plugin line before them in their own file;
// values are what plugin_init gets.
func TestReadBrokerConfigOptions(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"mosquitto.conf": "auth_plugin /a.so\n" +
			"auth_opt_one 1\n" +
			"include_dir " + filepath.Join(dir, "d") + "\n" +
			"auth_opt_two   \t two words # not a comment  \r\n" + // after the include: still /a.so's
			"plugin  /b.so \n" +
			"plugin_opt_three x\n" +
			"auth_opt_three y\n" + // the later line wins
			"#auth_opt_four commented\n" +
			"  # auth_opt_five not a comment to Mosquitto, but no option either\n" +
			"auth_opt_six\n" + // no value: Mosquitto refuses
			"auth_opt_seven\tseven\n" + // a tab separates nothing: the same
			"auth_opt_ab x\n" + // a name under three bytes: Mosquitto refuses
			"auth_plugin\n", // no path: the same
		"d/inc.conf": "auth_opt_orphan x\n" + // no plugin line before it in this file
			"auth_plugin /c.so\nauth_opt_inc yes\ninclude_dir /nonexistent\n", // only the main file's include_dir counts
	})
	main := filepath.Join(dir, "mosquitto.conf")
	c, err := ReadBrokerConfig(main)
	require.Len(t, c.Plugins, 3)
	assert.Equal(t, map[string]string{"one": "1", "two": "two words # not a comment  "}, c.Plugins[0].Options)
	assert.Equal(t, "/c.so", c.Plugins[1].Path)
	assert.Equal(t, map[string]string{"inc": "yes"}, c.Plugins[1].Options)
	assert.Equal(t, "/b.so", c.Plugins[2].Path)
	assert.Equal(t, map[string]string{"three": "y"}, c.Plugins[2].Options)

	var errs Errors
	require.ErrorAs(t, err, &errs)
	inc := filepath.Join(dir, "d", "inc.conf")
	want := []string{
		inc + ":1: auth_opt_orphan: no auth_plugin or plugin line before it in this file",
		main + ":10: empty six value (a tab does not separate an option from its value)",
		main + ":11: empty seven... value (a tab does not separate an option from its value; the rest of the line is not shown)",
		main + ":12: auth_opt_ab: invalid option name",
		main + ":13: empty auth_plugin value",
	}
	var got []string
	for _, e := range errs {
		got = append(got, e.Error())
	}
	assert.Equal(t, want, got)
}

// With per_listener_settings true, each file starts on the default listener,
// and a listener line in an included file does not change the main file's.
func TestReadBrokerConfigListenersAcrossFiles(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"mosquitto.conf": "per_listener_settings true\n" +
			"listener 1884 127.0.0.1\n" +
			"include_dir " + filepath.Join(dir, "d") + "\n" +
			"auth_plugin /main-1884.so\n" +
			"acl_file /acl-1884\n",
		"d/a.conf": "auth_plugin /default.so\nlistener 1885\nauth_plugin /a-1885.so\n",
		"d/b.conf": "acl_file /acl-default\n",
	})
	c, err := ReadBrokerConfig(filepath.Join(dir, "mosquitto.conf"))
	require.NoError(t, err)
	require.True(t, c.PerListenerSettings)
	var got []string
	for _, l := range c.Listeners {
		var ps []string
		for _, p := range l.Plugins {
			ps = append(ps, p.Path)
		}
		got = append(got, fmt.Sprintf("%s acl=%s plugins=%v", l.Name, l.ACLFile, ps))
	}
	assert.Equal(t, []string{
		"listener 1884 127.0.0.1 acl=/acl-1884 plugins=[/main-1884.so]",
		"listener 1885 acl= plugins=[/a-1885.so]",
		"default listener acl=/acl-default plugins=[/default.so]",
	}, got)
	var order []string
	for _, p := range c.Plugins {
		order = append(order, p.Path)
	}
	assert.Equal(t, []string{"/main-1884.so", "/a-1885.so", "/default.so"}, order, "plugin_init order")
}

func TestReadBrokerConfigErrors(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"late.conf":    "acl_file /x\nper_listener_settings true\n",
		"dirs.conf":    "include_dir " + filepath.Join(dir, "d") + "\ninclude_dir " + filepath.Join(dir, "missing") + "\ninclude_dir\n",
		"d/x.conf/y":   "",
		"twice.conf":   "acl_file /a\nacl_file /b\n",
		"bad-pls.conf": "per_listener_settings yes\n",
	})
	cases := map[string][]string{
		"late.conf":    {":2: per_listener_settings must be set before any other security settings"},
		"dirs.conf":    {"x.conf: a directory", `:2: include_dir "` + filepath.Join(dir, "missing") + `": open`, ":3: empty include_dir value"},
		"twice.conf":   {":2: duplicate acl_file value"},
		"bad-pls.conf": {`:1: invalid per_listener_settings value "yes"`},
		"none.conf":    {"no such file or directory"},
	}
	for name, want := range cases {
		_, err := ReadBrokerConfig(filepath.Join(dir, name))
		var errs Errors
		require.ErrorAs(t, err, &errs, name)
		require.Len(t, errs, len(want), "%s: %v", name, err)
		for i, w := range want {
			assert.Contains(t, errs[i].Error(), w, name)
		}
	}
}

// Bounded: a main file in its own include_dir is read twice, as Mosquitto
// does, without recursion; past maxConfigFiles files reading stops.
func TestReadBrokerConfigBounds(t *testing.T) {
	dir := t.TempDir()
	main := filepath.Join(dir, "self.conf")
	writeFiles(t, dir, map[string]string{"self.conf": "include_dir " + dir + "\nauth_plugin /p.so\n"})
	c, err := ReadBrokerConfig(main)
	require.NoError(t, err)
	assert.Len(t, c.Plugins, 2, "once as the main file, once from its include_dir")

	many := filepath.Join(dir, "many")
	files := map[string]string{}
	for i := range maxConfigFiles + 5 {
		files[fmt.Sprintf("many/%04d.conf", i)] = "# nothing\n"
	}
	writeFiles(t, dir, files)
	writeFiles(t, dir, map[string]string{"many.conf": "include_dir " + many + "\n"})
	_, err = ReadBrokerConfig(filepath.Join(dir, "many.conf"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), fmt.Sprintf("more than %d config files", maxConfigFiles))
}

// The repository's example config: the plugin's line with every option at
// its default, so the example shows every knob with its default.
func TestReadMosquittoConfExample(t *testing.T) {
	c, err := ReadBrokerConfig("../mosquitto.conf.example")
	require.NoError(t, err)
	require.Len(t, c.Plugins, 1)
	p := c.Plugins[0]
	assert.Equal(t, "/usr/lib/mosquitto-guard/mosquitto_guard.so", p.Path)
	got, err := Parse(p.Options)
	require.NoError(t, err)
	want, err := Parse(nil)
	require.NoError(t, err)
	assert.Equal(t, want, got, "every value shown is the default")
	text, err := os.ReadFile("../mosquitto.conf.example")
	require.NoError(t, err)
	for _, name := range optionNames() {
		assert.Contains(t, string(text), "auth_opt_"+name+" ", "the example shows %s", name)
	}
}

// The config scripts/run.sh writes for make run.
func TestReadRunShConfig(t *testing.T) {
	script, err := os.ReadFile("../scripts/run.sh")
	require.NoError(t, err)
	_, body, ok := strings.Cut(string(script), `cat >"$dir/mosquitto.conf" <<CONF`+"\n")
	require.True(t, ok, "run.sh writes mosquitto.conf with a heredoc")
	body, _, ok = strings.Cut(body, "\nCONF\n")
	require.True(t, ok)
	dir := t.TempDir()
	body = strings.NewReplacer("$(id -un)", "nobody", "$mqtt_port", "1883", "$redis_port", "6390",
		"$plugin", "/build/mosquitto_guard.so", "$dir", dir).Replace(body)
	passwd := filepath.Join(dir, "passwd")
	writeFiles(t, dir, map[string]string{"mosquitto.conf": body + "\n", "passwd": ""})
	c, err := ReadBrokerConfig(filepath.Join(dir, "mosquitto.conf"))
	require.NoError(t, err)
	require.Len(t, c.Plugins, 1)
	o, err := Parse(c.Plugins[0].Options)
	require.NoError(t, err)
	assert.Equal(t, []string{"127.0.0.1:6390"}, o.RedisAddrs)
	assert.Equal(t, passwd, o.PasswordFile)
	assert.Equal(t, 3, o.Policy.Limit)
}
