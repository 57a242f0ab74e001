package keys

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"unsafe"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
)

// Scope says what a list entry matches.
type Scope string

// The five scopes of the allow and block lists.
const (
	ClientID Scope = "clientid"
	IP       Scope = "ip"
	CIDR     Scope = "cidr"
	Username Scope = "username"
	// Cert is a client certificate, by its ID: the lower-case hex SHA-256 of
	// its DER encoding (AWS IoT's certificate ID; what `openssl x509 -noout
	// -fingerprint -sha256` prints, without colons, lower-cased).
	Cert Scope = "cert"
)

// Scopes lists every scope, in the order a refusal reports them.
var Scopes = []Scope{ClientID, Username, Cert, IP, CIDR}

// Proof reports whether a scope names what a client cannot choose: where the
// connection comes from (ip, cidr) or the certificate the TLS handshake
// verified (cert). A client ID or a username is whatever the client says: a
// claim.
func (s Scope) Proof() bool { return s == IP || s == CIDR || s == Cert }

// Exempts reports whether an allow entry of scope allow lifts a block entry
// of scope block. An allow entry on proof (ip, cidr) lifts every block; one on
// a claim (clientid, username) lifts only blocks on claims, never an ip or
// cidr ban: anyone can claim a client ID or a username.
func Exempts(allow, block Scope) bool { return allow.Proof() || !block.Proof() }

// ParseScope returns the scope named s.
func ParseScope(s string) (Scope, error) {
	for _, sc := range Scopes {
		if string(sc) == s {
			return sc, nil
		}
	}
	return "", fmt.Errorf("keys: unknown scope %s (expected clientid, ip, cidr, username or cert)", logval.Quote(s))
}

// CertIDLen is the length of a certificate ID: 64 hex digits.
const CertIDLen = 2 * sha256.Size

// CertID returns the certificate ID of a DER-encoded certificate.
func CertID(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// ParseCertID returns the certificate ID s names: 64 hex digits, upper or
// lower case, optionally in pairs separated by colons (as openssl prints a
// fingerprint), with or without openssl's "sha256 Fingerprint=" in front.
// The ID is returned in lower case, the form keys hold.
func ParseCertID(s string) (string, error) {
	v := strings.TrimSpace(s)
	if i := strings.IndexByte(v, '='); i >= 0 && strings.HasSuffix(strings.ToLower(v[:i]), "fingerprint") {
		v = v[i+1:]
	}
	v = strings.ToLower(strings.ReplaceAll(v, ":", ""))
	if len(v) != CertIDLen {
		return "", fmt.Errorf("keys: certificate ID %s: expected 64 hex digits (the SHA-256 of the certificate's DER)", logval.Quote(s))
	}
	if _, err := hex.DecodeString(v); err != nil {
		return "", fmt.Errorf("keys: certificate ID %s: expected 64 hex digits (the SHA-256 of the certificate's DER)", logval.Quote(s))
	}
	return v, nil
}

// IsCertID reports whether v is a certificate ID in the form keys hold: 64
// lower-case hex digits.
func IsCertID(v string) bool {
	if len(v) != CertIDLen {
		return false
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// IsTrackingHash reports whether v is a hashed Tracking form: "sha256:"
// and 64 lower-case hex digits. Only a value that is one can be the
// Tracking form of another value than itself.
func IsTrackingHash(v string) bool {
	return len(v) == len(trackingHashed)+CertIDLen && strings.HasPrefix(v, trackingHashed) && IsCertID(v[len(trackingHashed):])
}

// Hashed reports whether s's Tracking form is a hash (IsTrackingHash),
// not s itself: s is over TrackingMax bytes or starts with "sha256:".
func Hashed(s string) bool {
	return len(s) > TrackingMax || strings.HasPrefix(s, trackingHashed)
}

// Kind says which list a key belongs to.
type Kind string

// The key kinds.
const (
	Block    Kind = "block"
	Allow    Kind = "allow"
	User     Kind = "user"
	Offences Kind = "offences"
	Fail     Kind = "fail"
)

// Builder builds keys under one prefix.
type Builder struct {
	Prefix string
}

// List returns the key of value in the given list (allow or block) and scope.
func (b Builder) List(kind Kind, scope Scope, value string) string {
	return b.Prefix + string(kind) + ":" + string(scope) + ":" + value
}

// AppendList appends List(kind, scope, value) to dst: a lookup can build its
// key in a buffer of its own and index a map with string(b), which Go does
// without allocating.
func (b Builder) AppendList(dst []byte, kind Kind, scope Scope, value string) []byte {
	dst = append(dst, b.Prefix...)
	dst = append(dst, kind...)
	dst = append(dst, ':')
	dst = append(dst, scope...)
	dst = append(dst, ':')
	return append(dst, value...)
}

// User returns the key holding the password hash of username.
func (b Builder) User(username string) string {
	return b.Prefix + string(User) + ":" + username
}

// Offences returns the key counting the automatic bans of a scope value.
func (b Builder) Offences(scope Scope, value string) string {
	return b.List(Offences, scope, value)
}

// Fail returns the rate-limit key of a scope value. redis_rate stores it
// under its own "rate:" prefix in front of this name.
func (b Builder) Fail(scope Scope, value string) string {
	return b.List(Fail, scope, value)
}

// Throttle returns the key that throttles username: while it exists, the
// username's attempts from sources it never authenticated from are refused
// unchecked. It is not a ban; it expires by itself.
// The username is in its Tracking form: unknown usernames are throttled too.
func (b Builder) Throttle(username string) string { return b.ThrottleTracked(Tracking(username)) }

// ThrottleTracked is Throttle for a username already in its Tracking form.
func (b Builder) ThrottleTracked(tracked string) string {
	return b.Prefix + "throttle:username:" + tracked
}

// ThrottleCount returns the rate-limit key counting a username's failures
// from every source (redis_rate stores it under its own "rate:" prefix).
func (b Builder) ThrottleCount(username string) string {
	return b.ThrottleCountTracked(Tracking(username))
}

// ThrottleCountTracked is ThrottleCount for a username already in its
// Tracking form.
func (b Builder) ThrottleCountTracked(tracked string) string {
	return b.Prefix + "fail:anysource:username:" + tracked
}

// Known returns the sorted set of the sources (ip:<ip>, clientid:<id>) that
// authenticated as username, scored by the time of the last success (unix ms).
func (b Builder) Known(username string) string { return b.KnownTracked(Tracking(username)) }

// KnownTracked is Known for a username already in its Tracking form.
func (b Builder) KnownTracked(tracked string) string { return b.Prefix + "known:" + tracked }

// AutoBanMarker starts the value of every key the plugin writes itself: an
// automatic ban ("auto: over 5 failed authentications ...") or a username
// throttle. An operator's reason never starts with it (guardctl refuses
// one that does), so the origin of a ban is told by its value alone.
const AutoBanMarker = "auto:"

// IsAutoBan reports whether a list entry's value marks the plugin's own
// automatic ban (or throttle), rather than an operator's entry.
func IsAutoBan(value string) bool { return strings.HasPrefix(value, AutoBanMarker) }

// TrackingMax is the longest client ID or principal that conflict tracking
// stores as it is; see Tracking.
const TrackingMax = 256

// trackingHashed starts the hashed form of Tracking.
const trackingHashed = "sha256:"

// Tracking returns the form in which conflict tracking stores a client ID or
// a principal (username): in the names of its keys (conn, seen, takeoverconns),
// the members of the brokerconns sets, the fields and JSON values of its
// hashes and the findings stream. That is s itself when it is at most
// TrackingMax bytes long and does not start with "sha256:"; otherwise
// "sha256:" and the lower-case hex SHA-256 of s (71 bytes). Tracking data is
// written by any client that connects and kept for conflict_window, so what
// a client chooses (up to 65 535 bytes each) must not size it.
//
// The same value always has the same form, on every broker, so matching is
// unaffected; and no two values share one: hashing whatever starts with
// "sha256:" keeps a short client ID from posing as the hash of a long one.
// So Tracking is not idempotent: the form of a hashed form is another hash.
// Allow keys and operators' block keys name values exactly; an automatic
// ban of a clientid or username (FailKey) names its value by this form, so
// that a stranger's 65 535-byte claims do not size the keys its failures
// write: a block key is looked up, and kicks, by the value and by its
// form (IsTrackingHash), an allow key by the value alone.
func Tracking(s string) string {
	if !Hashed(s) {
		return s
	}
	// Hashed in place: []byte(s) copied it first, up to 64 KB of garbage
	// a call, and a stranger's refused CONNECT with a long client ID and
	// username makes several (the limits, the failure's keys). Sum256
	// only reads its argument.
	sum := sha256.Sum256(unsafe.Slice(unsafe.StringData(s), len(s)))
	var b [len(trackingHashed) + 2*sha256.Size]byte
	copy(b[:], trackingHashed)
	hex.Encode(b[len(trackingHashed):], sum[:])
	return string(b[:])
}

// Conn returns the hash of the live connections using clientID, one field
// per broker instance. The key names the client ID in its Tracking form.
func (b Builder) Conn(clientID string) string { return b.ConnTracked(Tracking(clientID)) }

// ConnTracked is Conn for a client ID already in its Tracking form, as the
// BrokerConns sets hold them.
func (b Builder) ConnTracked(tracked string) string { return b.Prefix + "conn:" + tracked }

// Seen returns the hash of the principals that used clientID within the
// conflict window, one field per principal (in its Tracking form). The key
// names the client ID in its Tracking form.
func (b Builder) Seen(clientID string) string { return b.SeenTracked(Tracking(clientID)) }

// SeenTracked is Seen for a client ID already in its Tracking form.
func (b Builder) SeenTracked(tracked string) string { return b.Prefix + "seen:" + tracked }

// ClientIDs returns the index of the client IDs (Tracking forms) whose seen
// hash holds a use of principal (conflicts.Principal's form, as the seen
// hash's field names it), scored by that use's time: at most
// conflict_clientids_max of them, the oldest use forgotten first.
func (b Builder) ClientIDs(principal string) string { return b.Prefix + "clientids:" + principal }

// TakeoverConns returns the hash of the connections that took clientID
// over from their own principal (duplicate connections), one field per
// connection ID, at most takeover_limit, kept takeover_window from the
// first; named by clientID's Tracking form. It replaced guard:takeovers:,
// a counter, whose increments a retried pipeline could repeat.
func (b Builder) TakeoverConns(clientID string) string {
	return b.TakeoverConnsTracked(Tracking(clientID))
}

// TakeoverConnsTracked is TakeoverConns for a client ID already in its
// Tracking form.
func (b Builder) TakeoverConnsTracked(tracked string) string {
	return b.Prefix + "takeoverconns:" + tracked
}

// Fold returns the hash that folds repeats of one finding; id identifies the
// finding (a hash of its client ID, principals and kind).
func (b Builder) Fold(id string) string { return b.Prefix + "fold:" + id }

// Findings returns the stream of conflict findings.
func (b Builder) Findings() string { return b.Prefix + "findings" }

// Brokers returns the sorted set of broker instances, scored by lease expiry (unix ms).
func (b Builder) Brokers() string { return b.Prefix + "brokers" }

// BrokerConns returns the set of client IDs a broker instance holds live,
// each in its Tracking form.
func (b Builder) BrokerConns(instance string) string { return b.Prefix + "brokerconns:" + instance }

// Changes returns the channel the plugin and guardctl publish the name of
// every key they change on, so replicas update even where Redis keyspace
// notifications are off.
func (b Builder) Changes() string { return b.Prefix + "changes" }

// AuditLast returns the key holding the time (unix ms) of the last guardctl audit.
func (b Builder) AuditLast() string { return b.Prefix + "audit:last" }

// Split parses a list key back into kind, scope and value. ok is false when
// key is not an allow or block key under this prefix.
func (b Builder) Split(key string) (kind Kind, scope Scope, value string, ok bool) {
	rest, found := strings.CutPrefix(key, b.Prefix)
	if !found {
		return "", "", "", false
	}
	k, rest, found := strings.Cut(rest, ":")
	if !found || (Kind(k) != Block && Kind(k) != Allow) {
		return "", "", "", false
	}
	s, value, found := strings.Cut(rest, ":")
	if !found {
		return "", "", "", false
	}
	sc, err := ParseScope(s)
	if err != nil {
		return "", "", "", false
	}
	return Kind(k), sc, value, true
}

// GlobEscape quotes the glob characters of s (a key prefix) for SCAN MATCH,
// KEYS and PSUBSCRIBE patterns, byte by byte: a prefix need not be valid UTF-8.
func GlobEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(`*?[]\`, s[i]) >= 0 {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// NormalizeIP parses a client address as the broker reports it and returns
// its canonical form: IPv4 dotted quad, IPv6 in RFC 5952 lower-case form, an
// IPv4-mapped IPv6 address as plain IPv4, any zone dropped.
func NormalizeIP(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("keys: bad IP address %s: %w", logval.Quote(s), errors.New(parseAddrWhy(s, err)))
	}
	return a.Unmap().WithZone(""), nil
}

// parseAddrWhy is netip's reason for refusing s, without s, which it
// quotes whole (and a part again, at any length): the caller quotes s cut
// (logval.Quote). netip's form: ParseAddr("<s>"): <reason> (at "<rest>").
func parseAddrWhy(s string, err error) string {
	msg, ok := strings.CutPrefix(err.Error(), "ParseAddr("+strconv.Quote(s)+"): ")
	if !ok {
		return "not an IP address" // another form: it may hold s whole
	}
	// The quoted rest escapes its quotes: the first ` (at "` is netip's.
	if i := strings.Index(msg, ` (at "`); i >= 0 {
		msg = msg[:i]
	}
	return msg
}

// ParseIPKey parses the value of an ip key. It must be an address in the
// canonical form NormalizeIP gives the clients' addresses (192.0.2.1,
// 2001:db8::1; IPv4-mapped written as IPv4, no zone): the plugin looks IPs
// up in that form only, so a key written any other way can never match. The
// error names the canonical form when s is an address written otherwise
// (NormalizeIP(s) returns it).
func ParseIPKey(s string) (netip.Addr, error) {
	a, err := NormalizeIP(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("keys: bad IP address %s: expected an address such as 192.0.2.1 or 2001:db8::1", logval.Quote(s))
	}
	if c := a.String(); c != s {
		return netip.Addr{}, fmt.Errorf("keys: bad IP address %s: expected the canonical address %s", logval.Quote(s), c)
	}
	return a, nil
}

// Prefixes returns every network containing ip, most specific first:
// 33 networks for IPv4 (/32 down to /0), 129 for IPv6.
func Prefixes(ip netip.Addr) []netip.Prefix {
	bits := ip.BitLen()
	out := make([]netip.Prefix, 0, bits+1)
	for n := bits; n >= 0; n-- {
		p, _ := ip.Prefix(n) // cannot fail: 0 <= n <= BitLen
		out = append(out, p)
	}
	return out
}

// ParseCIDR parses the value of a cidr key. It must be a network with its
// host bits zero, in canonical form (203.0.113.0/24, 2001:db8::/32); the error
// says what the canonical form would be.
func ParseCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("keys: bad range %s: expected a network such as 203.0.113.0/24 or 2001:db8::/32", logval.Quote(s))
	}
	if p.Addr().Is4In6() {
		m := p.Bits() - 96
		if m < 0 {
			return netip.Prefix{}, fmt.Errorf("keys: bad range %s: an IPv4-mapped range must be at least /96", logval.Quote(s))
		}
		p = netip.PrefixFrom(p.Addr().Unmap(), m)
	}
	if c := p.Masked(); c != p || c.String() != s {
		return netip.Prefix{}, fmt.Errorf("keys: bad range %s: expected the canonical network %s", logval.Quote(s), c)
	}
	return p, nil
}

// FailKey returns the scope and value a failed authentication is counted
// under for the fail scope s (one of fail_scopes), and its automatic ban
// written as: for ip, the client's IP, or for an IPv6 address its network of
// ipv6Prefix bits as a cidr value (128: the address itself: an attacker
// holding a /64 gets one allowance, not 2^64); for clientid and username,
// the value in its Tracking form (an over-long claim must not make a key of
// 65 535 bytes). ok is false when the client has no value in s (no IP).
// The plugin counts by it, and guardctl explain reads the same keys.
func FailKey(s Scope, ip netip.Addr, ipv6Prefix int, clientID, username string) (scope Scope, value string, ok bool) {
	switch s {
	case IP:
		if !ip.IsValid() {
			return "", "", false
		}
		ip = ip.Unmap() // as NormalizeIP gives it: an IPv4-mapped address counts as IPv4
		if ip.Is6() && ipv6Prefix < 128 {
			p, err := ip.Prefix(ipv6Prefix)
			if err == nil {
				return CIDR, p.String(), true
			}
		}
		return IP, ip.String(), true
	case ClientID:
		return ClientID, Tracking(clientID), true
	case Username:
		return Username, Tracking(username), true
	}
	return "", "", false
}
