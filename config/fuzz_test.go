package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse feeds the plugin's option parser two option values as an
// operator could write them in mosquitto.conf (auth_opt_<name> <value>):
// it must never panic; a refusal is an *OptionError (or an unknown option)
// whose message is one line, whatever the value holds; an accepted Options
// keeps the invariants the rest of the plugin relies on.
// Run it with: go test -run '^$' -fuzz '^FuzzParse$' ./config
func FuzzParse(f *testing.F) {
	for _, s := range [][4]string{
		{"fail_limit", "5", "fail_window", "1m"},
		{"ban_time", "10m", "ban_max", "1m"},
		{"redis_addr", "127.0.0.1:6379,127.0.0.1:6380", "redis_timeout", "100ms"},
		{"redis_addr", "[::1]:6379", "redis_db", "65536"},
		{"fail_scopes", "ip,username", "fail_ipv6_prefix", "64"},
		{"conflict_window", "31d", "clientid_conflict", "deny"},
		{"findings_topic", "$SYS/guard/#", "broker_name", "a\nb"},
		{"acl_check", "auto", "backend", "files"},
		{"fail_window", "9223372036854775807ns", "ban_max", "1e9h"},
		{"redis_unavailable", "deny", "hasher_salt_encoding", "utf-8"},
		{"no_such_option", "x", "key_prefix", "\x00\xff"},
		{"takeover_limit", "-1", "findings_max", "99999999999999999999"},
	} {
		f.Add(s[0], s[1], s[2], s[3])
	}
	names := map[string]bool{}
	for _, n := range optionNames() {
		names[n] = true
	}
	f.Fuzz(func(t *testing.T, n1, v1, n2, v2 string) {
		opts := map[string]string{}
		for _, kv := range [][2]string{{n1, v1}, {n2, v2}} {
			// password_file is opened and the TLS files read (regular files
			// only, but the fuzzer need not touch the file system).
			if kv[0] == "password_file" || kv[0] == "backend" || strings.HasPrefix(kv[0], "redis_tls_") {
				continue
			}
			opts[kv[0]] = kv[1]
		}
		c, err := Parse(opts)
		if err != nil {
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error %v is no list of problems", err)
			}
			for _, err := range errs {
				var oe *OptionError
				switch {
				case errors.As(err, &oe):
					if !names[oe.Option] {
						t.Fatalf("error names option %q, which does not exist", oe.Option)
					}
				case errors.Is(err, errUnknownOption):
				default:
					t.Fatalf("error %v is neither an OptionError nor an unknown option", err)
				}
				if strings.ContainsAny(err.Error(), "\n\r") {
					t.Fatalf("error message is not one line: %q", err.Error())
				}
			}
			return
		}
		switch {
		case c.Policy.Limit < 1, c.Policy.Window < 1e9, c.Policy.BanTime < 1e9, c.Policy.BanMax < c.Policy.BanTime:
			t.Fatalf("accepted a policy outside its bounds: %+v", c.Policy)
		case c.RedisTimeout <= 0, c.RedisDB < 0, c.AuthCache < 0, c.KnownSourcesMax < 1:
			t.Fatalf("accepted out-of-bounds values: %+v", c)
		case c.FailIPv6Prefix < 16 || c.FailIPv6Prefix > 128:
			t.Fatalf("fail_ipv6_prefix %d accepted", c.FailIPv6Prefix)
		case c.Backend != BackendDefer:
			t.Fatalf("backend %q without backend or password_file options", c.Backend)
		}
	})
}

// FuzzScanBrokerConfig feeds the reader of the broker's own configuration
// (acl_check auto, guardctl --config) arbitrary file contents: it must not
// panic, and, for a file without include_dir, it must see exactly the
// acl_file and plugin lines a line-by-line reading by Mosquitto's rules
// finds (a comment starts with '#' in the first byte; words are separated
// by spaces only), whatever the length of the lines before them (Mosquitto
// itself reads lines of any length).
// Run it with: go test -run '^$' -fuzz '^FuzzScanBrokerConfig$' ./config
func FuzzScanBrokerConfig(f *testing.F) {
	f.Add([]byte("listener 1883\nauth_plugin /x/mosquitto_guard.so\n"))
	f.Add([]byte("acl_file /etc/mosquitto/acl\r\nplugin /usr/lib/dynsec.so\r\n"))
	f.Add([]byte("#acl_file x\n  acl_file\t y \n\x00\xff\nplugin\n"))
	f.Add([]byte("include_dir /nonexistent-dir\nacl_file a"))
	f.Add([]byte("auth_plugin  /x/mosquitto_guard.so  \nauth_plugin ./rel.so\n\n\n"))
	f.Add([]byte("per_listener_settings true\nlistener 1 a\nauth_plugin x\nauth_opt_k\tv\nlistener 2\nacl_file y\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		self := filepath.Join(dir, "mosquitto_guard.so")
		conf := filepath.Join(dir, "mosquitto.conf")
		if err := os.WriteFile(conf, data, 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := ReadBrokerConfig(conf)
		if c == nil {
			t.Fatalf("no BrokerConfig (error %v)", err)
		}
		hasACL, others := c.whole(pathIs(self))
		if strings.Contains(string(data), "include_dir") {
			return
		}
		wantACL, wantOthers := false, 0
		for _, line := range strings.Split(string(data), "\n") {
			line, _, _ = strings.Cut(line, "\x00")
			if line == "" || line[0] == '#' || line[0] == '\r' {
				continue
			}
			words := strings.Split(strings.TrimLeft(strings.TrimRight(line, "\r"), " "), " ")
			value := strings.Trim(strings.Join(words[1:], " "), " \t\n\v\f\r")
			if value == "" {
				continue
			}
			switch words[0] {
			case "acl_file":
				wantACL = true
			case "plugin", "auth_plugin":
				if !pathIs(self)(value) {
					wantOthers++
				}
			}
		}
		if hasACL != wantACL || len(others) != wantOthers {
			t.Fatalf("acl_file %v, %d other plugins; the file has acl_file %v, %d other plugins", hasACL, len(others), wantACL, wantOthers)
		}
	})
}
