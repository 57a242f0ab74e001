package config

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/backends/files"
	"github.com/mosquitto-guard/mosquitto-guard/conflicts"
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

// Checks reports whether the plugin checks the password of a client that
// sent a username or not (hasUsername): backend defer checks none, and a
// client without a username is left to a later check. Only a client whose
// password is checked is held to the failure limits and the username
// throttle, has its failures counted, and claims its client ID.
func (b Backend) Checks(hasUsername bool) bool { return hasUsername && b != BackendDefer }

// Options is the plugin's configuration, parsed from its mosquitto.conf options.
type Options struct {
	RedisAddrs    []string      // redis_addr: one host:port, or several (comma-separated) for a Redis Cluster
	RedisUsername string        // redis_username: Redis ACL user
	RedisPassword string        // redis_password: never logged
	RedisDB       int           // redis_db
	RedisTimeout  time.Duration // redis_timeout: bound on any Redis wait on the broker thread
	RedisTLS      RedisTLS      // redis_tls and its files
	// Sentinel is redis_sentinel_master and its credentials: with a master
	// name, RedisAddrs are the sentinels.
	Sentinel Sentinel

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
	// ClientIDsMax is conflict_clientids_max: how many client IDs' uses of
	// one principal client-ID tracking remembers (store.Options.ClientIDsMax).
	ClientIDsMax int
	// ClientIDMaxBytes and UsernameMaxBytes are clientid_max_bytes and
	// username_max_bytes: a CONNECT whose client ID or username is longer
	// is refused before anything else is checked (0, Options' zero value:
	// no bound; parsed options are 1 to 65 535, MQTT's most).
	ClientIDMaxBytes int
	UsernameMaxBytes int

	Conflicts ConflictConfig // clientid_conflict and its companions

	ReplicaResync time.Duration // replica_resync: full reload of the local list replica
	AuthCache     int           // auth_cache: successful verifications remembered (0: off)
	ACLCheck      ACLMode       // acl_check: refusing a banned connection's messages until its kick

	// ListenBacklog is listen_backlog: the backlog the broker's TCP
	// listeners are given once they exist, in place of Mosquitto's fixed
	// 100 (0: left at that).
	ListenBacklog int

	// MetricsAddr is metrics_addr: the host:port the Prometheus endpoint
	// listens on; "" for none.
	MetricsAddr string

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

// ConflictConfig configures client-ID conflict detection: clientid_conflict,
// and the tracker's own options (conflict_window, takeover_limit,
// takeover_window, findings_max, findings_topic, findings_fold, broker_name,
// broker_lease). Its Deny and ClaimTimeout are left unset: the plugin derives
// them from Mode and redis_timeout when it builds the tracker, so that each
// setting is held once.
type ConflictConfig struct {
	Mode ConflictMode // clientid_conflict
	conflicts.Options
}

// ACLMode says whether and how the plugin answers MOSQ_EVT_ACL_CHECK.
// Mosquitto 2.0 denies a message when every ACL callback defers, once any is
// registered; so the plugin must know whether another ACL mechanism exists.
type ACLMode string

// The ACL modes.
const (
	ACLAuto  ACLMode = "auto"  // read the broker's config: off when another plugin is loaded or the config cannot be read whole, else defer when acl_file is set, allow when no ACL exists
	ACLDefer ACLMode = "defer" // refuse banned connections, defer everything else (acl_file, dynamic security)
	ACLAllow ACLMode = "allow" // refuse banned connections, allow everything else (no other ACL mechanism)
	ACLOff   ACLMode = "off"   // no ACL callback: a banned connection can publish until its kick lands
)

// OptionError is a bad option value. Its message names the option, the value
// and the expected form, in one line, as the broker log shows it; the value
// of a secret option (redis_password) is never shown.
type OptionError struct {
	Option   string
	Value    string
	Expected string
}

func (e *OptionError) Error() string {
	return fmt.Sprintf("option %s: bad value %s: expected %s", e.Option, ShownValue(e.Option, e.Value), e.Expected)
}

// secretOptions are never echoed in an error.
var secretOptions = map[string]bool{"redis_password": true, "redis_sentinel_password": true}

// credentialOptions may be given a URL's user:password@host by mistake
// (redis://:pw@host:6379/0): what comes before their last '@' is not shown.
var credentialOptions = map[string]bool{"redis_addr": true, "redis_username": true}

// ShownValue is an option's value quoted as a message may show it: a
// secret option's never, and of one that may carry credentials only what
// follows the last '@', behind "***".
func ShownValue(option, v string) string {
	switch {
	case secretOptions[option]:
		return "(not shown)"
	case credentialOptions[option]:
		if i := strings.LastIndexByte(v, '@'); i >= 0 {
			v = "***" + v[i:]
		}
	}
	return strconv.Quote(v)
}

type optionParser func(c *Options, v string) error

// option is one plugin option: its default, applied when it is absent, and its parser.
type option struct {
	def   string
	parse optionParser
}

// options lists every option. The failure policy's defaults are ratelimit's,
// which its Policy also falls back to: one source for both.
var options = map[string]option{
	"redis_addr":             {"127.0.0.1:6379", parseRedisAddr},
	"redis_username":         {"", func(c *Options, v string) error { c.RedisUsername = v; return nil }},
	"redis_password":         {"", func(c *Options, v string) error { c.RedisPassword = v; return nil }},
	"redis_db":               {"0", intOption("redis_db", 0, 1<<16, func(c *Options) *int { return &c.RedisDB })},
	"redis_timeout":          {"100ms", durationOption("redis_timeout", time.Millisecond, 10*time.Second, func(c *Options) *time.Duration { return &c.RedisTimeout })},
	"key_prefix":             {"guard:", func(c *Options, v string) error { c.KeyPrefix = v; return nil }},
	"backend":                {"", parseBackend},
	"password_file":          {"", func(c *Options, v string) error { c.PasswordFile = v; return nil }},
	"hasher_salt_encoding":   {"base64", parseSaltEncoding},
	"fail_limit":             {strconv.Itoa(ratelimit.DefaultLimit), intOption("fail_limit", 1, 1_000_000, func(c *Options) *int { return &c.Policy.Limit })},
	"fail_window":            {ratelimit.DefaultWindow.String(), durationOption("fail_window", time.Second, 24*time.Hour, func(c *Options) *time.Duration { return &c.Policy.Window })},
	"fail_scopes":            {"ip", parseFailScopes},
	"fail_ipv6_prefix":       {"64", intOption("fail_ipv6_prefix", 16, 128, func(c *Options) *int { return &c.FailIPv6Prefix })},
	"username_fail_limit":    {"20", intOption("username_fail_limit", 0, 1_000_000, func(c *Options) *int { return &c.UsernameFailLimit })},
	"known_sources_max":      {"100000", intOption("known_sources_max", 1, 10_000_000, func(c *Options) *int { return &c.KnownSourcesMax })},
	"clientid_max_bytes":     {"65535", intOption("clientid_max_bytes", 1, 65535, func(c *Options) *int { return &c.ClientIDMaxBytes })},
	"username_max_bytes":     {"65535", intOption("username_max_bytes", 1, 65535, func(c *Options) *int { return &c.UsernameMaxBytes })},
	"ban_time":               {ratelimit.DefaultBanTime.String(), durationOption("ban_time", time.Second, 365*24*time.Hour, func(c *Options) *time.Duration { return &c.Policy.BanTime })},
	"ban_max":                {ratelimit.DefaultBanMax.String(), durationOption("ban_max", time.Second, 365*24*time.Hour, func(c *Options) *time.Duration { return &c.Policy.BanMax })},
	"redis_unavailable":      {"allow", parseUnavailable},
	"clientid_conflict":      {"flag", parseConflictMode},
	"conflict_clientids_max": {"10000", intOption("conflict_clientids_max", 1, 1_000_000, func(c *Options) *int { return &c.ClientIDsMax })},
	"conflict_window":        {"31d", durationOption("conflict_window", time.Minute, 366*24*time.Hour, func(c *Options) *time.Duration { return &c.Conflicts.Window })},
	"takeover_limit":         {"3", intOption("takeover_limit", 1, 1_000_000, func(c *Options) *int { return &c.Conflicts.TakeoverLimit })},
	"takeover_window":        {"1m", durationOption("takeover_window", time.Second, 24*time.Hour, func(c *Options) *time.Duration { return &c.Conflicts.TakeoverWindow })},
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
	"metrics_addr":   {"", parseMetricsAddr},
	"listen_backlog": {"4096", parseListenBacklog},

	// Managed Redis: TLS and Sentinel (managed.go).
	"redis_tls":               {"off", parseOnOff("redis_tls", func(c *Options) *bool { return &c.RedisTLS.On })},
	"redis_tls_ca":            {"", func(c *Options, v string) error { c.RedisTLS.CA = v; return nil }},
	"redis_tls_cert":          {"", func(c *Options, v string) error { c.RedisTLS.Cert = v; return nil }},
	"redis_tls_key":           {"", func(c *Options, v string) error { c.RedisTLS.Key = v; return nil }},
	"redis_tls_server_name":   {"", parseServerName},
	"redis_sentinel_master":   {"", parseSentinelMaster},
	"redis_sentinel_username": {"", func(c *Options, v string) error { c.Sentinel.Username = v; return nil }},
	"redis_sentinel_password": {"", func(c *Options, v string) error { c.Sentinel.Password = v; return nil }},
}

// redisOptions say where the plugin's keys are: what guardctl needs too.
var redisOptions = []string{"key_prefix", "redis_addr", "redis_db", "redis_password",
	"redis_sentinel_master", "redis_sentinel_password", "redis_sentinel_username",
	"redis_tls", "redis_tls_ca", "redis_tls_cert", "redis_tls_key", "redis_tls_server_name", "redis_username"}

// RedisOptionNames returns the names of the options that say where the
// plugin's keys are (the Redis, its credentials, database and key prefix,
// TLS and Sentinel).
func RedisOptionNames() []string { return slices.Clone(redisOptions) }

// IsOption says whether name (without its auth_opt_ or plugin_opt_
// prefix) is one of the plugin's options.
func IsOption(name string) bool {
	_, ok := options[name]
	return ok
}

// Default returns an option's default value as written in mosquitto.conf
// ("" for an unknown option, and for those whose default is computed).
func Default(name string) string { return options[name].def }

// optionNames returns the names of every option, sorted.
func optionNames() []string {
	names := make([]string, 0, len(options))
	for n := range options {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Parse builds an Options from the plugin's options (names without their
// auth_opt_ or plugin_opt_ prefix): defaults first, then each given value,
// then the checks that span several options. It reports every problem at
// once: the error is an Errors, unknown options first (each naming what
// replaces it when mosquitto-go-auth knows it), then bad values in the order
// of their names, then the checks across options.
func Parse(opts map[string]string) (Options, error) { return parse(opts, true) }

// ParseOffline is Parse without opening password_file: for guardctl, which
// reads the plugin's options (its limits among them) as another user than
// the broker's, and never a password. Every other check is Parse's.
func ParseOffline(opts map[string]string) (Options, error) { return parse(opts, false) }

// CheckOption checks one value of the option name as Parse does, alone
// (the checks across options are left out): the error names the option,
// the value and the expected form. An unknown name is an error too.
func CheckOption(name, value string) error {
	o, ok := options[name]
	if !ok {
		return UnknownOption(name)
	}
	var c Options
	return o.parse(&c, strings.TrimSpace(value))
}

func parse(opts map[string]string, openFiles bool) (Options, error) {
	errs := unknownOptions(opts)
	c, bad, failed := parseOptions(opts, optionNames())
	errs = append(errs, bad...)
	errs = append(errs, c.combine(opts, failed, openFiles)...)
	if len(errs) > 0 {
		return Options{}, errs
	}
	return c, nil
}

// ParseRedis parses only the options RedisOptionNames lists, as Parse does,
// with the same defaults, ignoring all others: for guardctl, which must reach
// the plugin's keys without needing to read its password_file.
func ParseRedis(opts map[string]string) (Options, error) {
	c, errs, failed := parseOptions(opts, redisOptions)
	errs = append(errs, c.redisChecks(opts, failed)...)
	if len(errs) > 0 {
		return Options{}, errs
	}
	return c, nil
}

// parseOptions parses the named options, each given value or its default.
// failed holds the names of those that were bad.
func parseOptions(opts map[string]string, names []string) (c Options, errs Errors, failed map[string]bool) {
	failed = map[string]bool{}
	for _, name := range names {
		v, given := opts[name]
		if !given {
			v = options[name].def
		}
		if err := options[name].parse(&c, strings.TrimSpace(v)); err != nil {
			errs = append(errs, err)
			failed[name] = true
		}
	}
	return c, errs, failed
}

// combine applies the checks across options whose values parsed, and sets
// the backend when none is given. Each check runs whatever another found, so
// that one start names every problem.
func (c *Options) combine(opts map[string]string, failed map[string]bool, openFiles bool) Errors {
	var errs Errors
	for _, err := range []error{c.checkBanTimes(opts, failed), c.checkBackend(failed, openFiles)} {
		if err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, c.checkUsernames(failed)...)
	return append(errs, c.redisChecks(opts, failed)...)
}

// checkUsernames refuses a Redis username without a password: go-redis
// authenticates only with a password, so the username would not be sent,
// and the plugin would work as Redis's default user (atk57). A user with
// nopass takes any password. Not among redisChecks: guardctl may take the
// password from GUARD_REDIS_PASSWORD after reading the configuration.
func (c *Options) checkUsernames(failed map[string]bool) Errors {
	var errs Errors
	if c.RedisUsername != "" && c.RedisPassword == "" && !failed["redis_username"] && !failed["redis_password"] {
		errs = append(errs, &OptionError{"redis_username", c.RedisUsername,
			"redis_password set too: a username is sent to Redis only with a password (any one for a user with nopass)"})
	}
	if c.Sentinel.Username != "" && c.Sentinel.Password == "" && !failed["redis_sentinel_username"] && !failed["redis_sentinel_password"] {
		errs = append(errs, &OptionError{"redis_sentinel_username", c.Sentinel.Username,
			"redis_sentinel_password set too: a username is sent to the sentinels only with a password"})
	}
	return errs
}

// redisChecks are the checks across the options that say how to reach
// Redis, which guardctl runs too (ParseRedis).
func (c *Options) redisChecks(opts map[string]string, failed map[string]bool) Errors {
	return append(c.checkRedisTLS(failed), c.checkSentinel(opts, failed)...)
}

// checkBanTimes checks that ban_time is at most ban_max.
func (c *Options) checkBanTimes(opts map[string]string, failed map[string]bool) error {
	if failed["ban_time"] || failed["ban_max"] || c.Policy.BanMax >= c.Policy.BanTime {
		return nil
	}
	if _, given := opts["ban_max"]; !given {
		// Name what the user wrote: a ban_time above ban_max's default.
		return &OptionError{"ban_time", strings.TrimSpace(opts["ban_time"]),
			fmt.Sprintf("a duration at most ban_max (%s, its default; set ban_max too)", c.Policy.BanMax)}
	}
	return &OptionError{"ban_max", c.Policy.BanMax.String(), fmt.Sprintf("a duration at least ban_time (%s)", c.Policy.BanTime)}
}

// checkBackend sets the backend when none is given and checks password_file
// against it: a backend that did not parse leaves nothing to check; with
// backend files and a path, the file is opened (with openFiles).
func (c *Options) checkBackend(failed map[string]bool, openFiles bool) error {
	if failed["backend"] {
		return nil
	}
	if c.Backend == "" {
		c.Backend = BackendDefer
		if c.PasswordFile != "" {
			c.Backend = BackendFiles
		}
	}
	switch {
	case c.Backend == BackendFiles && c.PasswordFile == "":
		return &OptionError{"password_file", "", "the path of a mosquitto_passwd file (backend files needs one)"}
	case c.Backend != BackendFiles && c.PasswordFile != "":
		return &OptionError{"password_file", c.PasswordFile, "no password_file unless backend is files (backend is " + string(c.Backend) + ")"}
	case !openFiles:
		return nil
	}
	return c.checkPasswordFile()
}

// checkPasswordFile opens the files backend's file, as the broker's user:
// a regular file of at most files.MaxFileBytes (files.Open, which never
// blocks on a named pipe).
func (c *Options) checkPasswordFile() error {
	if c.Backend != BackendFiles {
		return nil
	}
	f, err := files.Open(c.PasswordFile)
	if err != nil {
		why := err.Error()
		if u := errors.Unwrap(err); u != nil {
			why = u.Error() // the *PathError's cause, without the path the line names already
		}
		return &OptionError{"password_file", c.PasswordFile, fmt.Sprintf("a regular file of at most %d MiB readable by the broker's user (%s)", files.MaxFileBytes>>20, why)}
	}
	f.Close()
	return nil
}
