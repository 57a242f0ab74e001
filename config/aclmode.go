package config

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// ResolveACLMode turns acl_check auto into defer, allow or off, with the
// reason, by reading the broker's own configuration (the -c argument of
// this process). Mosquitto 2.0 denies a message when every registered ACL
// callback defers, so the plugin may only defer when another ACL mechanism
// exists, and may only allow when none does:
//   - acl_file set, no other plugin: defer (acl_file decides);
//   - no acl_file, no other plugin: allow (Mosquitto would allow anyway);
//   - another plugin loaded: off (it may or may not answer ACL checks;
//     the operator says which with acl_check defer or allow).
//
// instance is how many times plugin_init ran in this process before this
// one. With per_listener_settings true each listener has its own ACL
// mechanisms, and the broker initialises the plugin once per listener that
// loads it, in the order of the listener lines, the listener made of the
// lines before the first listener line (with port) last. So the instance-th
// plugin line of this plugin, counted in that order, is this instance's,
// and only its listener's acl_file and plugin lines count. Should the count
// not match the file (changed since the start), the whole file decides, as
// without per_listener_settings.
func ResolveACLMode(mode ACLMode, selfPath string, instance int) (ACLMode, string) {
	if mode != ACLAuto {
		return mode, "as configured"
	}
	path := brokerConfigPath()
	if path == "" {
		return ACLAllow, "the broker runs without a config file, so without ACLs: banned connections are refused until their kick, all else allowed"
	}
	conf := scanBrokerConfig(path, selfPath)
	where := ""
	hasACL, others := conf.whole()
	if conf.perListener {
		if l, n, ok := conf.instance(instance); ok {
			hasACL, others = l.hasACL, l.others
			where = fmt.Sprintf("listener %d of %d (%s): ", n, len(conf.listeners()), l.name)
		} else {
			where = fmt.Sprintf("per_listener_settings true, but %s has no listener for plugin instance %d, so the whole file decides: ", path, instance+1)
		}
	}
	switch {
	case len(others) > 0:
		return ACLOff, where + "another plugin is loaded (" + strings.Join(others, ", ") + "); set acl_check defer if it answers ACL checks, allow if nothing does, to refuse banned connections' messages before their kick"
	case hasACL:
		return ACLDefer, where + "acl_file is set: banned connections are refused until their kick, all else is left to acl_file"
	}
	return ACLAllow, where + "no ACL mechanism is configured: banned connections are refused until their kick, all else allowed"
}

// brokerConfigPath returns the -c argument of this process.
func brokerConfigPath() string {
	b, err := os.ReadFile("/proc/self/cmdline")
	if err != nil {
		return ""
	}
	args := bytes.Split(bytes.TrimRight(b, "\x00"), []byte{0})
	for i := 0; i+1 < len(args); i++ {
		if a := string(args[i]); a == "-c" || a == "--config-file" {
			return string(args[i+1])
		}
	}
	return ""
}

// brokerConf is what a broker configuration says about ACL mechanisms.
type brokerConf struct {
	perListener bool
	// sections[0] holds the lines before the first listener line; each
	// listener line starts the next.
	sections []*confSection
}

// confSection is one listener's lines (with per_listener_settings true,
// its security settings).
type confSection struct {
	name   string   // its listener line, "default listener" for sections[0]
	hasACL bool     // acl_file is set
	selves int      // plugin lines that load this plugin
	others []string // plugin lines that load another
}

// whole answers for the whole file, as without per_listener_settings.
func (c *brokerConf) whole() (hasACL bool, others []string) {
	for _, s := range c.sections {
		hasACL = hasACL || s.hasACL
		others = append(others, s.others...)
	}
	return hasACL, others
}

// listeners returns the sections in the order Mosquitto initialises their
// plugins: the listener lines in order, then the default listener, which
// exists only if something set it up (here: it loads this plugin).
func (c *brokerConf) listeners() []*confSection {
	out := append([]*confSection(nil), c.sections[1:]...)
	if c.sections[0].selves > 0 {
		out = append(out, c.sections[0])
	}
	return out
}

// instance returns the listener of the i-th plugin_init of this plugin
// (0-based) and its 1-based position among the listeners.
func (c *brokerConf) instance(i int) (*confSection, int, bool) {
	for n, l := range c.listeners() {
		if i < l.selves {
			return l, n + 1, true
		}
		i -= l.selves
	}
	return nil, 0, false
}

// scanBrokerConfig reads a config and, in place, its include_dir files.
func scanBrokerConfig(path, selfPath string) *brokerConf {
	c := &brokerConf{sections: []*confSection{{name: "default listener"}}}
	c.scan(path, selfPath, map[string]bool{})
	return c
}

func (c *brokerConf) scan(path, selfPath string, seen map[string]bool) {
	if seen[path] || len(seen) > 100 {
		return
	}
	seen[path] = true
	// The whole file, whatever its line lengths: Mosquitto reads lines of
	// any length, and a bufio.Scanner stops at the first over 64 KiB, which
	// would hide an acl_file line after it (and make auto answer allow).
	data, err := os.ReadFile(path)
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 2 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		value := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), fields[0]))
		cur := c.sections[len(c.sections)-1]
		switch fields[0] {
		case "per_listener_settings":
			c.perListener = value == "true"
		case "listener":
			c.sections = append(c.sections, &confSection{name: "listener " + value})
		case "acl_file":
			cur.hasACL = true
		case "plugin", "auth_plugin":
			if samePath(value, selfPath) {
				cur.selves++
			} else {
				cur.others = append(cur.others, value)
			}
		case "include_dir":
			files, _ := filepath.Glob(filepath.Join(value, "*.conf"))
			sort.Strings(files)
			for _, inc := range files {
				c.scan(inc, selfPath, seen)
			}
		}
	}
}

func samePath(a, b string) bool {
	if b == "" {
		return false
	}
	ra, err1 := filepath.EvalSymlinks(a)
	rb, err2 := filepath.EvalSymlinks(b)
	if err1 != nil || err2 != nil {
		return filepath.Clean(a) == filepath.Clean(b)
	}
	return ra == rb
}
