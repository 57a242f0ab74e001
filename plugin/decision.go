// Package plugin is mosquitto-guard's decision core: it takes a client's
// client ID, address, username and password as plain Go values and decides
// allow, deny or defer, with the rule that decided. It knows nothing of cgo
// or of the broker; the cgo package is a thin skin around it.
package plugin

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
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
)

// Logger receives log lines. It must be safe to call from any goroutine: the
// cgo layer queues the lines and writes them on the broker thread.
type Logger func(level Level, msg string)

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
	Password    []byte
}

// Rules that are not list entries.
const (
	RuleBadPassword      = "bad-password"
	RuleUnknownUser      = "unknown-user"
	RuleBadStoredHash    = "bad-stored-hash"
	RuleRedisUnavailable = "redis-unavailable"
)

// Decision is the outcome of one authentication, with what decided it.
type Decision struct {
	Result Result
	Rule   string       // the list key or one of the Rule constants; "" when nothing refused
	Match  *store.Match // the list entry that refused, if any
	Detail string       // more for the log line, as key=value pairs

	claimedSource bool // checkLimits: let through a throttle as a source known by client ID only
}

func describeClient(c Client, ip netip.Addr) string {
	var b strings.Builder
	b.WriteString("client_id=")
	b.WriteString(logval.Quote(c.ClientID))
	b.WriteString(" ip=")
	if ip.IsValid() {
		b.WriteString(ip.String())
	} else {
		b.WriteString(logval.Quote(c.Address))
	}
	b.WriteString(" username=")
	if c.HasUsername {
		b.WriteString(logval.Quote(c.Username))
	} else {
		b.WriteString("<none>")
	}
	return b.String()
}

// expiry renders when an entry ends, from its remaining lifetime.
func expiry(now time.Time, ttl time.Duration) string {
	if ttl < 0 {
		return "never"
	}
	return now.Add(ttl).UTC().Format(time.RFC3339) + " (in " + ttl.Round(time.Second).String() + ")"
}

// describeMatch renders the rule, origin, expiry and reason of a list entry.
func describeMatch(m *store.Match, now time.Time) string {
	return fmt.Sprintf("rule=%s origin=%s expires=%s reason=%s", logval.Quote(m.Key), m.Origin(), expiry(now, m.TTL), logval.Quote(m.Reason))
}
