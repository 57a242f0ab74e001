package config

import (
	"fmt"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// The parsers of single option values: each sets its field of Options or
// returns an *OptionError naming the option, the value and the form expected.

// parseRedisAddr accepts what go-redis can dial: host:port (an IPv6 host in
// brackets) with a port from 1 to 65535, or several, comma-separated.
// A user or password ("user:pw@host:port", a redis:// URL) is refused, so
// that it never reaches a dial error in the log; its error hides it too.
// A URL is refused by its scheme, naming the options that replace it:
// rediss:// would otherwise be a plain connection to a TLS port.
func parseRedisAddr(c *Options, v string) error {
	const want = "host:port, or several host:port separated by commas (a Redis Cluster's nodes, or the sentinels with redis_sentinel_master)"
	c.RedisAddrs = nil
	if strings.Contains(v, "@") {
		return &OptionError{"redis_addr", v, want + ", without a user or password (set redis_username and redis_password)"}
	}
	if scheme, _, ok := strings.Cut(v, "://"); ok {
		hint := "no URL: set redis_db for a database"
		if strings.EqualFold(scheme, "rediss") {
			hint = "no URL: for TLS set redis_tls on (and redis_tls_ca, redis_tls_server_name as needed)"
		}
		return &OptionError{"redis_addr", v, want + "; " + hint}
	}
	for _, a := range strings.Split(v, ",") {
		a = strings.TrimSpace(a)
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" {
			return &OptionError{"redis_addr", v, want}
		}
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
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
		if err != nil || s == keys.CIDR || s == keys.Cert {
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

// parseFindingsTopic accepts an MQTT topic name the broker will publish to:
// mosquitto_broker_publish checks none of this, so a bad name would only
// show at run time, in every subscriber's client. A topic name is UTF-8
// without U+0000, and should hold no control character (MQTT 5.0 1.5.4):
// C0 and C1 are refused with DEL, and the wildcards + and #.
func parseFindingsTopic(c *Options, v string) error {
	const want = "an MQTT topic name (UTF-8, at most 65535 bytes, without wildcards + # or control characters), or nothing"
	if len(v) > 65535 || !utf8.ValidString(v) || strings.ContainsAny(v, "+#") || strings.ContainsFunc(v, isControl) {
		return &OptionError{"findings_topic", v, want}
	}
	c.Conflicts.FindingsTopic = v
	return nil
}

// isControl says whether r is in U+0000-U+001F or U+007F-U+009F.
func isControl(r rune) bool { return r <= 0x1f || (r >= 0x7f && r <= 0x9f) }

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

// ParseDuration is time.ParseDuration plus a number of days in front: 31d,
// 1d12h. Days are digits only (no sign), at most 100000, and what follows
// them is not negative, so that 1d-5h is refused rather than read as 19h.
func ParseDuration(v string) (time.Duration, error) {
	const day = 24 * time.Hour
	days, rest := time.Duration(0), v
	if i := strings.IndexByte(v, 'd'); i >= 0 {
		n, err := strconv.ParseUint(v[:i], 10, 32)
		if err != nil || n > 100_000 {
			return 0, fmt.Errorf("bad days in %q", v)
		}
		days, rest = time.Duration(n)*day, v[i+1:]
		if rest == "" {
			return days, nil
		}
	}
	d, err := time.ParseDuration(rest)
	switch {
	case err != nil:
		return 0, err
	case d < 0 && days > 0:
		return 0, fmt.Errorf("negative time after the days in %q", v)
	case d > math.MaxInt64-days:
		return 0, fmt.Errorf("duration %q too long", v)
	}
	return days + d, nil
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

// parseListenBacklog accepts 0 (Mosquitto's own backlog of 100 left as it
// is) or 100 to 65535: lower would only make a reconnecting fleet wait.
func parseListenBacklog(c *Options, v string) error {
	n, err := strconv.Atoi(v)
	if err != nil || (n != 0 && (n < 100 || n > 65535)) {
		return &OptionError{"listen_backlog", v, "0 (Mosquitto's own backlog of 100 kept) or a whole number from 100 to 65535"}
	}
	c.ListenBacklog = n
	return nil
}
