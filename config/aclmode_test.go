package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// pathIs stands in for the loader's answer in tests: a path is self's when
// both resolve to one file.
func pathIs(self string) func(string) bool {
	return func(p string) bool {
		rp, err1 := filepath.EvalSymlinks(p)
		rs, err2 := filepath.EvalSymlinks(self)
		if err1 != nil || err2 != nil {
			return filepath.Clean(p) == filepath.Clean(self)
		}
		return rp == rs
	}
}

// readConf reads a broker config that must have no error.
func readConf(t *testing.T, path string) *BrokerConfig {
	t.Helper()
	c, err := ReadBrokerConfig(path)
	require.NoError(t, err)
	return c
}

func TestScanBrokerConfig(t *testing.T) {
	dir := t.TempDir()
	self := filepath.Join(dir, "mosquitto_guard.so")
	os.WriteFile(self, nil, 0o644)
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(text), 0o644)
		return p
	}
	cases := []struct {
		name, conf string
		acl        bool
		others     int
	}{
		{"plain", "listener 1883\nauth_plugin " + self + "\n", false, 0},
		{"acl_file", "auth_plugin " + self + "\nacl_file /etc/mosquitto/acl\n", true, 0},
		{"commented", "auth_plugin " + self + "\n#acl_file /etc/mosquitto/acl\n", false, 0},
		{"dynsec", "plugin /usr/lib/mosquitto_dynamic_security.so\nauth_plugin " + self + "\n", false, 1},
		{"listeners", "listener 1883\nauth_plugin " + self + "\nlistener 1884\nacl_file /x\n", true, 0},
	}
	for _, c := range cases {
		acl, others := readConf(t, write(c.name+".conf", c.conf)).whole(pathIs(self))
		assert.Equal(t, c.acl, acl, c.name)
		assert.Len(t, others, c.others, c.name)
	}
	inc := filepath.Join(dir, "conf.d")
	os.Mkdir(inc, 0o755)
	os.WriteFile(filepath.Join(inc, "acl.conf"), []byte("acl_file /x\n"), 0o644)
	acl, _ := readConf(t, write("main.conf", "include_dir "+inc+"\nauth_plugin "+self+"\n")).whole(pathIs(self))
	assert.True(t, acl, "include_dir is followed")
}

// With per_listener_settings true each plugin instance gets its own
// listener's answer: the listener lines in order, then the default listener
// (the lines before the first listener line), as Mosquitto initialises them.
func TestPerListenerInstances(t *testing.T) {
	dir := t.TempDir()
	self := filepath.Join(dir, "mosquitto_guard.so")
	os.WriteFile(self, nil, 0o644)
	inc := filepath.Join(dir, "conf.d")
	os.Mkdir(inc, 0o755)
	os.WriteFile(filepath.Join(inc, "b.conf"), []byte("listener 1886\nauth_plugin "+self+"\nplugin /usr/lib/other.so\n"), 0o644)
	conf := filepath.Join(dir, "mosquitto.conf")
	os.WriteFile(conf, []byte(`per_listener_settings true
port 1883
auth_plugin `+self+`
listener 1884 127.0.0.1
auth_plugin `+self+`
acl_file /etc/mosquitto/acl
listener 1885
auth_plugin `+self+`
listener 1887
password_file /etc/mosquitto/passwd
include_dir `+inc+`
`), 0o644)
	c := readConf(t, conf)
	require.True(t, c.PerListenerSettings)
	type want struct {
		name   string
		pos    int
		acl    bool
		others int
	}
	for i, w := range []want{
		{"listener 1884 127.0.0.1", 1, true, 0},
		{"listener 1885", 2, false, 0},
		{"listener 1886", 4, false, 1}, // from include_dir; 1887 (3) does not load the plugin
		{"default listener", 5, false, 0},
	} {
		l, pos, ok := c.instance(pathIs(self), i)
		require.True(t, ok, "instance %d", i)
		assert.Equal(t, w.name, l.Name, "instance %d", i)
		assert.Equal(t, w.pos, pos, "instance %d", i)
		assert.Equal(t, w.acl, l.ACLFile != "", "instance %d", i)
		assert.Len(t, l.others(pathIs(self)), w.others, "instance %d", i)
	}
	_, _, ok := c.instance(pathIs(self), 4)
	assert.False(t, ok, "no fifth instance")
}

func TestResolveACLModeKeepsExplicitModes(t *testing.T) {
	for _, m := range []ACLMode{ACLDefer, ACLAllow, ACLOff} {
		got, _ := ResolveACLMode(m, nil, 0)
		assert.Equal(t, m, got)
	}
}

// A line over 64 KiB must not hide the acl_file after it (before: a
// bufio.Scanner stopped there, and auto answered allow over the acl_file).
func TestScanBrokerConfigLongLine(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "mosquitto.conf")
	conf := "# " + strings.Repeat("x", 70_000) + "\nacl_file /etc/mosquitto/acl\n"
	require.NoError(t, os.WriteFile(path, []byte(conf), 0o600))
	c := readConf(t, path)
	hasACL, _ := c.whole(nil)
	assert.True(t, hasACL, "acl_file after a 70 000-byte line")
}

// acl_check auto answers off, never allow or defer, when the config was not
// read whole: the part not read may hold the acl_file, and the plugin's
// allow would end every check before acl_file's (finding 1: a FIFO config,
// the file bound, an include the broker's user cannot read).
func TestAutoACLModeOffWhenReadIncomplete(t *testing.T) {
	dir := t.TempDir()
	self := filepath.Join(dir, "mosquitto_guard.so")
	require.NoError(t, os.WriteFile(self, nil, 0o644))
	fifo := filepath.Join(dir, "stdin.conf")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	many := filepath.Join(dir, "conf.d")
	files := map[string]string{"main.conf": "auth_plugin " + self + "\ninclude_dir " + many + "\n", "conf.d/zz.conf": "acl_file /etc/mosquitto/acl\n"}
	for i := range maxConfigFiles - 1 { // with main.conf, zz.conf is one too many
		files[fmt.Sprintf("conf.d/f%04d.conf", i)] = "# nothing\n"
	}
	writeFiles(t, dir, files)
	for _, c := range []struct{ path, why string }{
		{fifo, "stdin.conf: not a regular file"},
		{filepath.Join(dir, "main.conf"), "zz.conf and any file after it: not read: more than 1000 config files"},
		{filepath.Join(dir, "missing.conf"), "no such file or directory"},
	} {
		mode, why := autoACLMode([]string{c.path}, pathIs(self), 0)
		assert.Equal(t, ACLOff, mode, c.path)
		assert.Contains(t, why, "could not be read whole here (", c.path)
		assert.Contains(t, why, c.why, c.path)
		assert.Contains(t, why, "set acl_check defer if acl_file or another plugin answers ACL checks, allow if nothing does", c.path)
	}
	mode, _ := autoACLMode([]string{filepath.Join(dir, "conf.d", "zz.conf")}, pathIs(self), 0)
	assert.Equal(t, ACLDefer, mode, "a whole read still decides")
}

// The reason quotes the first read errors only, and how many more there are.
func TestIncompleteReadQuotesFew(t *testing.T) {
	var errs Errors
	for i := range 5 {
		errs = append(errs, fmt.Errorf("e%d", i))
	}
	why := incompleteRead(errs)
	assert.Contains(t, why, "(e0; e1; e2; and 2 more)")
}

// mosquitto -c a.conf -c b.conf reads both, in order, into one config
// (before: only the first -c was read, and an acl_file in b.conf was missed:
// auto answered allow over it).
func TestSeveralConfigFiles(t *testing.T) {
	dir := t.TempDir()
	self := filepath.Join(dir, "mosquitto_guard.so")
	writeFiles(t, dir, map[string]string{
		"mosquitto_guard.so": "",
		"a.conf":             "per_listener_settings true\nlistener 1883\nauth_plugin " + self + "\n",
		"b.conf":             "listener 1884\nauth_plugin " + self + "\nacl_file /etc/mosquitto/acl\ninclude_dir " + filepath.Join(dir, "b.d") + "\n",
		"b.d/x.conf":         "listener 1885\nauth_plugin /usr/lib/other.so\n",
		"open.conf":          "auth_plugin " + self + "\n",
		"acl.conf":           "acl_file /etc/mosquitto/acl\n",
	})
	a, b := filepath.Join(dir, "a.conf"), filepath.Join(dir, "b.conf")
	c, err := ReadBrokerConfig(a, b)
	require.NoError(t, err)
	assert.Equal(t, []string{a, b}, c.Paths)
	assert.True(t, c.PerListenerSettings, "carried over to the second file")
	var names []string
	for _, l := range c.Listeners {
		names = append(names, l.Name)
	}
	assert.Equal(t, []string{"listener 1883", "listener 1884", "listener 1885"}, names, "the second file's include_dir is followed")
	mode, why := autoACLMode([]string{a, b}, pathIs(self), 1)
	assert.Equal(t, ACLDefer, mode, why)
	assert.Contains(t, why, "listener 2 of 3 (listener 1884)")

	open, acl := filepath.Join(dir, "open.conf"), filepath.Join(dir, "acl.conf")
	mode, why = autoACLMode([]string{open, acl}, pathIs(self), 0)
	assert.Equal(t, ACLDefer, mode, "the acl_file in the second -c: %s", why)
	_, err = ReadBrokerConfig(acl, acl)
	assert.ErrorContains(t, err, "acl.conf:1: duplicate acl_file value", "one config, as for mosquitto")
}

func TestConfigArgs(t *testing.T) {
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"mosquitto"}, nil},
		{[]string{"mosquitto", "-c", "a.conf"}, []string{"a.conf"}},
		{[]string{"mosquitto", "-c", "a.conf", "-v", "--config-file", "b.conf", "-d"}, []string{"a.conf", "b.conf"}},
		{[]string{"mosquitto", "-p", "-c", "-c", "a.conf"}, []string{"a.conf"}},
		{[]string{"mosquitto", "-c", "-c"}, []string{"-c"}},
		{[]string{"mosquitto", "-v", "-c"}, nil},
		{[]string{"-c", "x"}, nil},
	} {
		assert.Equal(t, c.want, configArgs(c.args), "%q", c.args)
	}
}
