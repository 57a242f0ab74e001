package plugin

import (
	"bufio"
	"bytes"
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
func ResolveACLMode(mode ACLMode, selfPath string) (ACLMode, string) {
	if mode != ACLAuto {
		return mode, "as configured"
	}
	conf := brokerConfigPath()
	if conf == "" {
		return ACLAllow, "the broker runs without a config file, so without ACLs: banned connections are refused until their kick, all else allowed"
	}
	hasACL, others := scanBrokerConfig(conf, selfPath, map[string]bool{})
	switch {
	case len(others) > 0:
		return ACLOff, "another plugin is loaded (" + strings.Join(others, ", ") + "); set acl_check defer if it answers ACL checks, allow if nothing does, to refuse banned connections' messages before their kick"
	case hasACL:
		return ACLDefer, "acl_file is set: banned connections are refused until their kick, all else is left to acl_file"
	}
	return ACLAllow, "no ACL mechanism is configured: banned connections are refused until their kick, all else allowed"
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

// scanBrokerConfig reports whether a config (and its include_dir files) sets
// acl_file, and which plugins other than selfPath it loads.
func scanBrokerConfig(path, selfPath string, seen map[string]bool) (hasACL bool, others []string) {
	if seen[path] || len(seen) > 100 {
		return false, nil
	}
	seen[path] = true
	f, err := os.Open(path)
	if err != nil {
		return false, nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		value := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(sc.Text()), fields[0]))
		switch fields[0] {
		case "acl_file":
			hasACL = true
		case "plugin", "auth_plugin":
			if !samePath(value, selfPath) {
				others = append(others, value)
			}
		case "include_dir":
			files, _ := filepath.Glob(filepath.Join(value, "*.conf"))
			sort.Strings(files)
			for _, inc := range files {
				a, o := scanBrokerConfig(inc, selfPath, seen)
				hasACL = hasACL || a
				others = append(others, o...)
			}
		}
	}
	return hasACL, others
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
