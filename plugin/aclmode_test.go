package plugin

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
)

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
	}
	for _, c := range cases {
		acl, others := scanBrokerConfig(write(c.name+".conf", c.conf), self, map[string]bool{})
		assert.Equal(t, c.acl, acl, c.name)
		assert.Len(t, others, c.others, c.name)
	}
	inc := filepath.Join(dir, "conf.d")
	os.Mkdir(inc, 0o755)
	os.WriteFile(filepath.Join(inc, "acl.conf"), []byte("acl_file /x\n"), 0o644)
	acl, _ := scanBrokerConfig(write("main.conf", "include_dir "+inc+"\nauth_plugin "+self+"\n"), self, map[string]bool{})
	assert.True(t, acl, "include_dir is followed")
}

func TestResolveACLModeKeepsExplicitModes(t *testing.T) {
	for _, m := range []ACLMode{ACLDefer, ACLAllow, ACLOff} {
		got, _ := ResolveACLMode(m, "")
		assert.Equal(t, m, got)
	}
}
