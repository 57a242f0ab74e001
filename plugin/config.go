package plugin

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/ratelimit"
)

// Backend names the credential backend.
type Backend string

// The credential backends.
const (
	BackendFiles Backend = "files" // a mosquitto_passwd-format file
	BackendRedis Backend = "redis" // guard:user:<username> holds the hash
	BackendDefer Backend = "defer" // no credential check: PLUGIN_DEFER
)

// Config is the plugin's configuration, parsed from its mosquitto.conf options.
type Config struct {
	RedisAddrs    []string      // redis_addr: one host:port, or several (comma-separated) for a Redis Cluster
	RedisUsername string        // redis_username: Redis ACL user
	RedisPassword string        // redis_password: never logged
	RedisDB       int           // redis_db
	RedisTimeout  time.Duration // redis_timeout: bound on any Redis wait on the broker thread

	KeyPrefix string // key_prefix: prefix of every key read or written

	Backend      Backend // backend
	PasswordFile string  // password_file, for the files backend
	SaltEncoding string  // hasher_salt_encoding: base64 or utf8, as in mosquitto-go-auth

	Policy     ratelimit.Policy // fail_limit, fail_window, ban_time, ban_max
	FailScopes []keys.Scope     // fail_scopes: any of ip, clientid, username

	// DenyWhenRedisDown is redis_unavailable deny: refuse every client while
	// Redis cannot be reached. Otherwise (allow) credentials are still checked
	// and the Redis checks are skipped.
	DenyWhenRedisDown bool
}

// OptionError is a bad option value. Its message names the option, the value
// and the expected form, in one line, as the broker log shows it.
type OptionError struct {
	Option   string
	Value    string
	Expected string
}

func (e *OptionError) Error() string {
	return fmt.Sprintf("option %s: bad value %s: expected %s", e.Option, strconv.Quote(e.Value), e.Expected)
}

// ErrUnknownOption is wrapped by the error for an option this plugin does not know.
var ErrUnknownOption = errors.New("unknown option")

type optionParser func(c *Config, v string) error

// options lists every option with its default (applied when absent) and parser.
var options = map[string]struct {
	def   string
	parse optionParser
}{
	"redis_addr":           {"127.0.0.1:6379", parseRedisAddr},
	"redis_username":       {"", func(c *Config, v string) error { c.RedisUsername = v; return nil }},
	"redis_password":       {"", func(c *Config, v string) error { c.RedisPassword = v; return nil }},
	"redis_db":             {"0", intOption("redis_db", 0, 1<<16, func(c *Config) *int { return &c.RedisDB })},
	"redis_timeout":        {"100ms", durationOption("redis_timeout", time.Millisecond, 10*time.Second, func(c *Config) *time.Duration { return &c.RedisTimeout })},
	"key_prefix":           {"guard:", func(c *Config, v string) error { c.KeyPrefix = v; return nil }},
	"backend":              {"", parseBackend},
	"password_file":        {"", func(c *Config, v string) error { c.PasswordFile = v; return nil }},
	"hasher_salt_encoding": {"base64", parseSaltEncoding},
	"fail_limit":           {"5", intOption("fail_limit", 1, 1_000_000, func(c *Config) *int { return &c.Policy.Limit })},
	"fail_window":          {"1m", durationOption("fail_window", time.Second, 24*time.Hour, func(c *Config) *time.Duration { return &c.Policy.Window })},
	"fail_scopes":          {"ip", parseFailScopes},
	"ban_time":             {"10m", durationOption("ban_time", time.Second, 365*24*time.Hour, func(c *Config) *time.Duration { return &c.Policy.BanTime })},
	"ban_max":              {"24h", durationOption("ban_max", time.Second, 365*24*time.Hour, func(c *Config) *time.Duration { return &c.Policy.BanMax })},
	"redis_unavailable":    {"allow", parseUnavailable},
}

// OptionNames returns the names of every option, sorted.
func OptionNames() []string {
	names := make([]string, 0, len(options))
	for n := range options {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Parse builds a Config from the plugin's options (names without their
// auth_opt_ or plugin_opt_ prefix): defaults first, then each given value,
// then the checks that span several options. The first problem is returned.
func Parse(opts map[string]string) (Config, error) {
	for name := range opts {
		if _, ok := options[name]; !ok {
			return Config{}, fmt.Errorf("option %s: %w (known options: %s)", name, ErrUnknownOption, strings.Join(OptionNames(), ", "))
		}
	}
	var c Config
	for _, name := range OptionNames() {
		v, given := opts[name]
		if !given {
			v = options[name].def
		}
		if err := options[name].parse(&c, strings.TrimSpace(v)); err != nil {
			return Config{}, err
		}
	}
	return c, c.validate()
}

func (c *Config) validate() error {
	if c.Policy.BanMax < c.Policy.BanTime {
		return &OptionError{"ban_max", c.Policy.BanMax.String(), fmt.Sprintf("a duration at least ban_time (%s)", c.Policy.BanTime)}
	}
	if c.Backend == "" {
		c.Backend = BackendDefer
		if c.PasswordFile != "" {
			c.Backend = BackendFiles
		}
	}
	switch c.Backend {
	case BackendFiles:
		if c.PasswordFile == "" {
			return &OptionError{"password_file", "", "the path of a mosquitto_passwd file (backend files needs one)"}
		}
		f, err := os.Open(c.PasswordFile)
		if err != nil {
			return &OptionError{"password_file", c.PasswordFile, "a file readable by the broker's user (" + errors.Unwrap(err).Error() + ")"}
		}
		f.Close()
	default:
		if c.PasswordFile != "" {
			return &OptionError{"password_file", c.PasswordFile, "no password_file unless backend is files (backend is " + string(c.Backend) + ")"}
		}
	}
	return nil
}

func parseRedisAddr(c *Config, v string) error {
	const want = "host:port, or several host:port separated by commas for a Redis Cluster"
	c.RedisAddrs = nil
	for _, a := range strings.Split(v, ",") {
		a = strings.TrimSpace(a)
		i := strings.LastIndexByte(a, ':')
		if i <= 0 {
			return &OptionError{"redis_addr", v, want}
		}
		if p, err := strconv.Atoi(a[i+1:]); err != nil || p < 1 || p > 65535 {
			return &OptionError{"redis_addr", v, want}
		}
		c.RedisAddrs = append(c.RedisAddrs, a)
	}
	return nil
}

func parseBackend(c *Config, v string) error {
	switch Backend(v) {
	case BackendFiles, BackendRedis, BackendDefer, "":
		c.Backend = Backend(v)
		return nil
	}
	return &OptionError{"backend", v, "one of files, redis, defer"}
}

func parseSaltEncoding(c *Config, v string) error {
	if v != "base64" && v != "utf8" && v != "utf-8" {
		return &OptionError{"hasher_salt_encoding", v, "base64, or utf8 (also spelt utf-8, as in mosquitto-go-auth)"}
	}
	c.SaltEncoding = v
	return nil
}

func parseUnavailable(c *Config, v string) error {
	switch v {
	case "allow":
		c.DenyWhenRedisDown = false
	case "deny":
		c.DenyWhenRedisDown = true
	default:
		return &OptionError{"redis_unavailable", v, "allow or deny"}
	}
	return nil
}

func parseFailScopes(c *Config, v string) error {
	const want = "a list of ip, clientid, username separated by commas or spaces"
	c.FailScopes = nil
	seen := map[keys.Scope]bool{}
	for _, f := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' }) {
		s, err := keys.ParseScope(f)
		if err != nil || s == keys.CIDR {
			return &OptionError{"fail_scopes", v, want}
		}
		if !seen[s] {
			seen[s] = true
			c.FailScopes = append(c.FailScopes, s)
		}
	}
	if len(c.FailScopes) == 0 {
		return &OptionError{"fail_scopes", v, want}
	}
	return nil
}

func intOption(name string, lo, hi int, field func(*Config) *int) optionParser {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < lo || n > hi {
			return &OptionError{name, v, fmt.Sprintf("a whole number from %d to %d", lo, hi)}
		}
		*field(c) = n
		return nil
	}
}

func durationOption(name string, lo, hi time.Duration, field func(*Config) *time.Duration) optionParser {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d < lo || d > hi {
			return &OptionError{name, v, fmt.Sprintf("a Go duration from %s to %s, such as 90s, 10m or 1h30m", lo, hi)}
		}
		*field(c) = d
		return nil
	}
}
