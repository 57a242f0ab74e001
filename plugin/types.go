package plugin

import (
	"net/netip"
	"strconv"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// Level is a log level; the cgo layer maps it to Mosquitto's.
type Level int

// The log levels used.
const (
	LevelInfo Level = iota
	LevelNotice
	LevelWarning
	LevelError
	LevelDebug // Mosquitto's debug: shown with log_type debug or all
)

// Logger receives log lines. It must be safe to call from any goroutine: the
// cgo layer queues the lines and writes them on the broker thread.
type Logger func(level Level, msg string)

// Publisher publishes an MQTT message from the broker; it must be safe to
// call from any goroutine (the cgo layer queues it for the broker thread).
type Publisher func(topic string, payload []byte)

// Result is what the broker is told.
type Result int

// The results.
const (
	Allow Result = iota // MOSQ_ERR_SUCCESS
	Deny                // MOSQ_ERR_AUTH
	Defer               // MOSQ_ERR_PLUGIN_DEFER: a later check decides
)

func (r Result) String() string {
	switch r {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	case Defer:
		return "defer"
	}
	return "result(" + strconv.Itoa(int(r)) + ")"
}

// Client is one CONNECT, as the broker reports it. Every string is
// client-supplied and hostile.
type Client struct {
	Handle      uintptr // identity of the connection (the broker's client pointer)
	ClientID    string
	Address     string // peer IP as text, possibly IPv6 or IPv4-mapped IPv6
	Username    string
	HasUsername bool
	// IDs is ClientID and Username end to end, one string of which the
	// two are slices, when the caller made them so (cgo): a connection
	// let through keeps it, one object, and copies nothing. "" otherwise
	// (admit then makes it).
	IDs         string
	Password    []byte
	CertID      string // the client certificate's ID (keys.CertID of its DER); "" without one
	CertSubject string // its subject, as text; hostile like every string here
	// ClientIDBytes and UsernameBytes, when over len(ClientID) and
	// len(Username), are the sizes of a client ID and username of which
	// only the start is at hand (logline.Kept: what a refusal line quotes):
	// the caller (cgo) cut a CONNECT over clientid_max_bytes or
	// username_max_bytes (Guard.Bounds), which tooLong refuses before
	// anything else reads them, rather than copy all of it. 0: len.
	ClientIDBytes, UsernameBytes int
	// IP is Address parsed as keys.NormalizeIP parses it (the zero Addr
	// when it is not an IP), when IPParsed: the caller (cgo) keeps it
	// with the strings of a client that reconnects. Else the plugin parses
	// Address itself.
	IP       netip.Addr
	IPParsed bool
}

// ip is the client's address parsed (keys.NormalizeIP), invalid when it is
// not an IP.
func (c *Client) ip() netip.Addr {
	if c.IPParsed {
		return c.IP
	}
	ip, _ := keys.NormalizeIP(c.Address)
	return ip
}

// idBytes is the client ID's size (ClientIDBytes).
func (c *Client) idBytes() int { return max(len(c.ClientID), c.ClientIDBytes) }

// userBytes is the username's size (UsernameBytes).
func (c *Client) userBytes() int { return max(len(c.Username), c.UsernameBytes) }

// Rules that are not list entries.
const (
	RuleBadPassword      = "bad-password"
	RuleUnknownUser      = "unknown-user"
	RuleBadStoredHash    = "bad-stored-hash"
	RuleRedisUnavailable = "redis-unavailable"
	// RuleFailLimit: fail_limit+1 passwords of one counted key were checked
	// and failed faster than the allowance refills; until its ban arrives (or
	// when Redis cannot count) no more are checked on this broker.
	RuleFailLimit = "fail-limit"
	// RuleUsernameThrottled: the username failed too often from every
	// source, and this one never authenticated as it.
	RuleUsernameThrottled = "username-throttled"
	// RuleClientIDConflict refuses a client ID live under another principal
	// (clientid_conflict deny).
	RuleClientIDConflict = "clientid-conflict"
	// RuleClientIDTooLong and RuleUsernameTooLong refuse a CONNECT whose
	// client ID or username is longer than clientid_max_bytes or
	// username_max_bytes, before anything else is checked: no password
	// checked, no failure counted.
	RuleClientIDTooLong = "clientid-too-long"
	RuleUsernameTooLong = "username-too-long"
	// RuleUserChanged disconnects a client whose user a password file read
	// after the broker's re-check removed or rehashed (a kick, not a
	// refusal: userreload.go).
	RuleUserChanged = "user-changed"
)

// Decision is the outcome of one authentication, with what decided it.
type Decision struct {
	Result Result
	Rule   string       // the list key or one of the Rule constants; "" when nothing refused
	Match  *store.Match // the list entry that refused, if any
	Detail string       // more for the log line: key=value pairs rendered by logline (Pairs), last on the line

	claimedSource bool   // checkLimits: let through a throttle as a source known by client ID only
	waitedRedis   bool   // checkLimits: a round trip to Redis was made (lapsedThrottle's claim), after the clock was read
	throttleClaim string // checkLimits: the throttle key's value this CONNECT claimed (lapsedThrottle)
}
