package config

import (
	"bytes"
	"fmt"
	"os"
	"strings"
)

// ResolveACLMode turns acl_check auto into defer, allow or off, with the
// reason, by reading the broker's own configuration (every -c argument of
// this process, in order, as the broker read them). Mosquitto 2.0 denies a
// message when every registered ACL callback defers, so the plugin may only
// defer when another ACL mechanism exists, and may only allow when none
// does:
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
// not match the file (changed since the start), the whole config decides, as
// without per_listener_settings.
//
// Only a whole read may answer allow or defer: the plugin's ACL callback is
// registered before acl_file's, so its allow ends every check, and a file
// the plugin could not read (made unreadable to the broker's user after the
// broker read it as root, a FIFO such as /dev/stdin, past the reader's
// bounds) may hold the acl_file. Any error reading the config answers off:
// no ACL callback, so whatever the broker has decides, and the reason names
// what could not be read and asks for acl_check to be set.
//
// isSelf says whether a plugin line's path names this plugin as the
// broker's dynamic loader resolves it: a name without '/' is searched for
// (LD_LIBRARY_PATH, the cache, the default directories), and a symlink or
// another path to the same file is the same object. The caller, which is
// the loaded plugin, asks the loader (see cgo's isSelf).
func ResolveACLMode(mode ACLMode, isSelf func(path string) bool, instance int) (ACLMode, string) {
	if mode != ACLAuto {
		return mode, "as configured"
	}
	return autoACLMode(brokerConfigPaths(), isSelf, instance)
}

// autoACLMode answers acl_check auto for a broker started with the config
// files at paths (none: no -c).
func autoACLMode(paths []string, isSelf func(string) bool, instance int) (ACLMode, string) {
	if len(paths) == 0 {
		return ACLAllow, "the broker runs without a config file, so without ACLs: banned connections are refused until their kick, all else allowed"
	}
	conf, err := ReadBrokerConfig(paths...)
	if err != nil {
		return ACLOff, incompleteRead(err)
	}
	return conf.aclMode(isSelf, instance)
}

// maxReasonErrors bounds the read errors a reason quotes, to keep the log
// line short: the first ones say what to look at.
const maxReasonErrors = 3

// incompleteRead is the reason for off when the config was not read whole.
func incompleteRead(err error) string {
	errs, ok := err.(Errors)
	if !ok {
		errs = Errors{err}
	}
	quoted := errs[:min(len(errs), maxReasonErrors)].Error()
	if more := len(errs) - maxReasonErrors; more > 0 {
		quoted += fmt.Sprintf("; and %d more", more)
	}
	return "the broker's config could not be read whole here (" + quoted + "), so whether acl_file or another plugin decides is unknown: " +
		"no ACL check is registered, banned connections' messages flow until their kick; " +
		"set acl_check defer if acl_file or another plugin answers ACL checks, allow if nothing does"
}

// aclMode answers acl_check auto for the instance-th plugin_init of the
// plugin whose lines isSelf knows.
func (c *BrokerConfig) aclMode(isSelf func(string) bool, instance int) (ACLMode, string) {
	where := ""
	hasACL, others := c.whole(isSelf)
	if c.PerListenerSettings {
		if l, n, ok := c.instance(isSelf, instance); ok {
			hasACL, others = l.ACLFile != "", l.others(isSelf)
			where = fmt.Sprintf("listener %d of %d (%s): ", n, len(c.Listeners), l.Name)
		} else {
			where = fmt.Sprintf("per_listener_settings true, but %s has no listener for plugin instance %d, so the whole config decides: ", strings.Join(c.Paths, ", "), instance+1)
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

// brokerConfigPaths returns the -c arguments of this process, in order.
func brokerConfigPaths() []string {
	b, err := os.ReadFile("/proc/self/cmdline")
	if err != nil {
		return nil
	}
	var args []string
	for _, a := range bytes.Split(bytes.TrimRight(b, "\x00"), []byte{0}) {
		args = append(args, string(a))
	}
	return configArgs(args)
}

// configArgs returns the config files in mosquitto's command line args, as
// config__parse_args finds them: each -c or --config-file takes the next
// argument, and so does -p or --port (a port, skipped); the program's name
// is args[0].
func configArgs(args []string) []string {
	var paths []string
	for i := 1; i+1 < len(args); i++ {
		switch args[i] {
		case "-c", "--config-file":
			paths = append(paths, args[i+1])
			i++
		case "-p", "--port":
			i++
		}
	}
	return paths
}

// whole answers for the whole file, as without per_listener_settings: any
// acl_file, and every plugin line that is not this plugin's.
func (c *BrokerConfig) whole(isSelf func(string) bool) (hasACL bool, others []string) {
	for _, l := range c.all {
		hasACL = hasACL || l.ACLFile != ""
		others = append(others, l.others(isSelf)...)
	}
	return hasACL, others
}

// instance returns the listener of the i-th plugin_init of this plugin
// (0-based) and its 1-based position among the listeners: Mosquitto
// initialises each listener's plugins in turn, in the order of Listeners.
func (c *BrokerConfig) instance(isSelf func(string) bool, i int) (*Listener, int, bool) {
	for n, l := range c.Listeners {
		selves := len(l.Plugins) - len(l.others(isSelf))
		if i < selves {
			return l, n + 1, true
		}
		i -= selves
	}
	return nil, 0, false
}

// others returns the paths of l's plugins that are not this plugin; with
// no isSelf, every one.
func (l *Listener) others(isSelf func(string) bool) []string {
	var out []string
	for _, p := range l.Plugins {
		if isSelf == nil || !isSelf(p.Path) {
			out = append(out, p.Path)
		}
	}
	return out
}

// BrokerChecksPasswords reports whether the broker's own config, read from
// the files it was started with, sets a password_file for a listener in
// use: with backend defer, Mosquitto's own check then decides passwords,
// and Mosquitto 2.0 answers a username it does not have without hashing
// anything (a known user's wrong password, $7$ 20 000 rounds, 17.9 ms at
// the median; a made-up username 0.9 ms: e2e
// TestZZDeferBackendUnknownUserTiming). False when it cannot tell.
func BrokerChecksPasswords() bool {
	paths := brokerConfigPaths()
	if len(paths) == 0 {
		return false
	}
	conf, _ := ReadBrokerConfig(paths...) // never nil: what could be read
	for _, l := range conf.Listeners {
		if l.PasswordFile != "" {
			return true
		}
	}
	return false
}
