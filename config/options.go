package config

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

// Options is the plugin's configuration, parsed from its mosquitto.conf options.
type Options struct {
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
	// FailIPv6Prefix is fail_ipv6_prefix: IPv6 failures are counted, and
	// banned, per network of this length (128: per address).
	FailIPv6Prefix int
	// UsernameFailLimit is username_fail_limit: failures of one username from
	// every source allowed per fail_window before it is throttled (0: off).
	UsernameFailLimit int
	// KnownSourcesMax is known_sources_max: how many sources (IPs, client
	// IDs) are remembered per username as known to it.
	KnownSourcesMax int

	Conflicts ConflictConfig // clientid_conflict and its companions

	ReplicaResync time.Duration // replica_resync: full reload of the local list replica
	AuthCache     int           // auth_cache: successful verifications remembered (0: off)
	ACLCheck      ACLMode       // acl_check: refusing a banned connection's messages until its kick

	// DenyWhenRedisDown is redis_unavailable deny: refuse every client while
	// Redis cannot be reached. Otherwise (allow) credentials are still checked
	// and the Redis checks are skipped.
	DenyWhenRedisDown bool
}

// ConflictMode is the clientid_conflict option.
type ConflictMode string

// The conflict modes.
const (
	ConflictOff  ConflictMode = "off"  // no tracking
	ConflictFlag ConflictMode = "flag" // record findings only
	ConflictDeny ConflictMode = "deny" // also refuse a client ID live under another principal
)

// ConflictConfig configures client-ID conflict detection.
type ConflictConfig struct {
	Mode           ConflictMode  // clientid_conflict
	Window         time.Duration // conflict_window: how long a principal's use of a client ID is remembered
	TakeoverLimit  int           // takeover_limit: duplicate connections of one principal before a finding
	TakeoverWindow time.Duration // takeover_window
	FindingsMax    int64         // findings_max: approximate length of the findings stream
	FindingsTopic  string        // findings_topic: MQTT topic findings are published on ("" none)
	Fold           time.Duration // findings_fold: repeats of a finding within this are folded into it
	BrokerName     string        // broker_name: this broker, in findings
	Lease          time.Duration // broker_lease: live connections of a broker that stops renewing expire after this
}

// ACLMode says whether and how the plugin answers MOSQ_EVT_ACL_CHECK.
// Mosquitto 2.0 denies a message when every ACL callback defers, once any is
// registered; so the plugin must know whether another ACL mechanism exists.
type ACLMode string

// The ACL modes.
const (
	ACLAuto  ACLMode = "auto"  // read the broker's config: defer when acl_file is set, allow when no ACL exists, off when another plugin is loaded
	ACLDefer ACLMode = "defer" // refuse banned connections, defer everything else (acl_file, dynamic security)
	ACLAllow ACLMode = "allow" // refuse banned connections, allow everything else (no other ACL mechanism)
	ACLOff   ACLMode = "off"   // no ACL callback: a banned connection can publish until its kick lands
)

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

type optionParser func(c *Options, v string) error

// options lists every option with its default (applied when absent) and parser.
var options = map[string]struct {
	def   string
	parse optionParser
}{
	"redis_addr":           {"127.0.0.1:6379", parseRedisAddr},
	"redis_username":       {"", func(c *Options, v string) error { c.RedisUsername = v; return nil }},
	"redis_password":       {"", func(c *Options, v string) error { c.RedisPassword = v; return nil }},
	"redis_db":             {"0", intOption("redis_db", 0, 1<<16, func(c *Options) *int { return &c.RedisDB })},
	"redis_timeout":        {"100ms", durationOption("redis_timeout", time.Millisecond, 10*time.Second, func(c *Options) *time.Duration { return &c.RedisTimeout })},
	"key_prefix":           {"guard:", func(c *Options, v string) error { c.KeyPrefix = v; return nil }},
	"backend":              {"", parseBackend},
	"password_file":        {"", func(c *Options, v string) error { c.PasswordFile = v; return nil }},
	"hasher_salt_encoding": {"base64", parseSaltEncoding},
	"fail_limit":           {"5", intOption("fail_limit", 1, 1_000_000, func(c *Options) *int { return &c.Policy.Limit })},
	"fail_window":          {"1m", durationOption("fail_window", time.Second, 24*time.Hour, func(c *Options) *time.Duration { return &c.Policy.Window })},
	"fail_scopes":          {"ip", parseFailScopes},
	"fail_ipv6_prefix":     {"64", intOption("fail_ipv6_prefix", 16, 128, func(c *Options) *int { return &c.FailIPv6Prefix })},
	"username_fail_limit":  {"20", intOption("username_fail_limit", 0, 1_000_000, func(c *Options) *int { return &c.UsernameFailLimit })},
	"known_sources_max":    {"100000", intOption("known_sources_max", 1, 10_000_000, func(c *Options) *int { return &c.KnownSourcesMax })},
	"ban_time":             {"10m", durationOption("ban_time", time.Second, 365*24*time.Hour, func(c *Options) *time.Duration { return &c.Policy.BanTime })},
	"ban_max":              {"24h", durationOption("ban_max", time.Second, 365*24*time.Hour, func(c *Options) *time.Duration { return &c.Policy.BanMax })},
	"redis_unavailable":    {"allow", parseUnavailable},
	"clientid_conflict":    {"flag", parseConflictMode},
	"conflict_window":      {"31d", durationOption("conflict_window", time.Minute, 366*24*time.Hour, func(c *Options) *time.Duration { return &c.Conflicts.Window })},
	"takeover_limit":       {"3", intOption("takeover_limit", 1, 1_000_000, func(c *Options) *int { return &c.Conflicts.TakeoverLimit })},
	"takeover_window":      {"1m", durationOption("takeover_window", time.Second, 24*time.Hour, func(c *Options) *time.Duration { return &c.Conflicts.TakeoverWindow })},
	"findings_max": {"10000", func(c *Options, v string) error {
		var n int
		err := intOption("findings_max", 10, 100_000_000, func(*Options) *int { return &n })(c, v)
		c.Conflicts.FindingsMax = int64(n)
		return err
	}},
	"findings_topic": {"", parseFindingsTopic},
	"findings_fold":  {"1h", durationOption("findings_fold", time.Second, 366*24*time.Hour, func(c *Options) *time.Duration { return &c.Conflicts.Fold })},
	"broker_name":    {"", parseBrokerName},
	"replica_resync": {"5m", durationOption("replica_resync", 10*time.Second, 24*time.Hour, func(c *Options) *time.Duration { return &c.ReplicaResync })},
	"auth_cache":     {"100000", intOption("auth_cache", 0, 10_000_000, func(c *Options) *int { return &c.AuthCache })},
	"acl_check":      {"auto", parseACLMode},
	"broker_lease":   {"30s", durationOption("broker_lease", time.Second, time.Hour, func(c *Options) *time.Duration { return &c.Conflicts.Lease })},
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

// Parse builds an Options from the plugin's options (names without their
// auth_opt_ or plugin_opt_ prefix): defaults first, then each given value,
// then the checks that span several options. The first problem is returned.
func Parse(opts map[string]string) (Options, error) {
	for name := range opts {
		if _, ok := options[name]; !ok {
			return Options{}, fmt.Errorf("option %s: %w (known options: %s)", name, ErrUnknownOption, strings.Join(OptionNames(), ", "))
		}
	}
	var c Options
	for _, name := range OptionNames() {
		v, given := opts[name]
		if !given {
			v = options[name].def
		}
		if err := options[name].parse(&c, strings.TrimSpace(v)); err != nil {
			return Options{}, err
		}
	}
	err := c.validate()
	var oe *OptionError
	if errors.As(err, &oe) && oe.Option == "ban_max" {
		if _, given := opts["ban_max"]; !given {
			// Name what the user wrote: a ban_time above ban_max's default.
			return c, &OptionError{"ban_time", strings.TrimSpace(opts["ban_time"]),
				fmt.Sprintf("a duration at most ban_max (%s, its default; set ban_max too)", c.Policy.BanMax)}
		}
	}
	return c, err
}

func (c *Options) validate() error {
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

func parseRedisAddr(c *Options, v string) error {
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

func parseBackend(c *Options, v string) error {
	switch Backend(v) {
	case BackendFiles, BackendRedis, BackendDefer, "":
		c.Backend = Backend(v)
		return nil
	}
	return &OptionError{"backend", v, "one of files, redis, defer"}
}

func parseSaltEncoding(c *Options, v string) error {
	if v != "base64" && v != "utf8" && v != "utf-8" {
		return &OptionError{"hasher_salt_encoding", v, "base64, or utf8 (also spelt utf-8, as in mosquitto-go-auth)"}
	}
	c.SaltEncoding = v
	return nil
}

func parseUnavailable(c *Options, v string) error {
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

func parseFailScopes(c *Options, v string) error {
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

func parseConflictMode(c *Options, v string) error {
	switch m := ConflictMode(v); m {
	case ConflictOff, ConflictFlag, ConflictDeny:
		c.Conflicts.Mode = m
		return nil
	}
	return &OptionError{"clientid_conflict", v, "one of off, flag, deny"}
}

func parseACLMode(c *Options, v string) error {
	switch m := ACLMode(v); m {
	case ACLAuto, ACLDefer, ACLAllow, ACLOff:
		c.ACLCheck = m
		return nil
	}
	return &OptionError{"acl_check", v, "one of auto, defer, allow, off"}
}

func parseFindingsTopic(c *Options, v string) error {
	if strings.ContainsAny(v, "+#\x00") || len(v) > 65535 {
		return &OptionError{"findings_topic", v, "an MQTT topic name without wildcards (+ #), or nothing"}
	}
	c.Conflicts.FindingsTopic = v
	return nil
}

func parseBrokerName(c *Options, v string) error {
	if v == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "mosquitto"
		}
		v = h
	}
	if len(v) > 255 || strings.ContainsAny(v, "\n\r") {
		return &OptionError{"broker_name", v, "a name of at most 255 bytes on one line"}
	}
	c.Conflicts.BrokerName = v
	return nil
}

// ParseDuration is time.ParseDuration plus a day suffix: 31d, 1d12h.
func ParseDuration(v string) (time.Duration, error) {
	days := time.Duration(0)
	if i := strings.IndexByte(v, 'd'); i > 0 {
		n, err := strconv.Atoi(v[:i])
		if err != nil || n < 0 || n > 100_000 {
			return 0, fmt.Errorf("bad days in %q", v)
		}
		days, v = time.Duration(n)*24*time.Hour, v[i+1:]
		if v == "" {
			return days, nil
		}
	}
	d, err := time.ParseDuration(v)
	return days + d, err
}

func intOption(name string, lo, hi int, field func(*Options) *int) optionParser {
	return func(c *Options, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < lo || n > hi {
			return &OptionError{name, v, fmt.Sprintf("a whole number from %d to %d", lo, hi)}
		}
		*field(c) = n
		return nil
	}
}

func durationOption(name string, lo, hi time.Duration, field func(*Options) *time.Duration) optionParser {
	return func(c *Options, v string) error {
		d, err := ParseDuration(v)
		if err != nil || d < lo || d > hi {
			return &OptionError{name, v, fmt.Sprintf("a duration from %s to %s, such as 90s, 10m, 1h30m or 31d", lo, hi)}
		}
		*field(c) = d
		return nil
	}
}
