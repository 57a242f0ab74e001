package plugin

import (
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logflood"
	"github.com/mosquitto-guard/mosquitto-guard/internal/logline"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// refusals writes the log lines of refused clients, bounded: per source and
// rule (see logflood), a client that hammers the broker after its refusal
// gets its first lines logged, then one summary line per 10 s; a throttled
// username gets one line per episode.
type refusals struct {
	log        Logger
	now        func() time.Time
	ipv6Prefix int           // fail_ipv6_prefix: a source as failures are counted
	window     time.Duration // fail_window: a throttle's episode while only this broker's count knows it
	floods     *logflood.Limiter
	throttles  throttleLog
	suppressed atomic.Uint64 // refusals not logged one by one, for the metrics
}

func newRefusals(log Logger, now func() time.Time, ipv6Prefix int, window time.Duration) *refusals {
	return &refusals{log: log, now: now, ipv6Prefix: ipv6Prefix, window: window,
		floods: logflood.New(logflood.DefaultMax, logflood.DefaultBurst, logflood.DefaultPeriod)}
}

// refuse logs a refusal and returns d.
func (r *refusals) refuse(c *Client, ip netip.Addr, d Decision, reauth bool) Decision {
	if !r.floods.Allow(r.source(c, ip), floodRule(d), r.now()) {
		r.suppressed.Add(1)
		return d
	}
	l := clientLine("refused", c, ip)
	if d.Match != nil {
		matchFields(l, d.Match, r.now())
	} else {
		l.Tok("rule", d.Rule)
	}
	if reauth {
		l.Tok("reauth", "true") // the re-check after a reload: not counted
	}
	clientFields(l, c)
	if d.Match != nil {
		l.Str("reason", d.Match.Reason)
	}
	r.log(LevelNotice, l.Raw(d.Detail).String())
	return d
}

// throttled refuses an attempt for a throttled username from a source it
// never authenticated from, unchecked and uncounted: m is the throttle
// entry, nil while only this broker's count knows it.
func (r *refusals) throttled(c *Client, ip netip.Addr, m *store.Match) Decision {
	d := Decision{Result: Deny, Rule: RuleUsernameThrottled}
	ttl := r.window // only this broker's count knows yet: about a window
	if m != nil {
		ttl = m.TTL
	}
	if r.throttles.first(c.Username, r.now(), ttl) {
		// The first refusal of this throttle here; the rest are not logged.
		l := clientLine("refused", c, ip).Tok("rule", RuleUsernameThrottled).Expires(r.now(), ttl).Tok("logged", "first-of-throttle")
		r.log(LevelNotice, clientFields(l, c).String())
	} else {
		r.suppressed.Add(1)
	}
	return d
}

// conflict logs the refusal of a client whose client ID holder holds under
// another principal (clientid_conflict deny).
func (r *refusals) conflict(c *Client, ip netip.Addr, holder *store.Conn) {
	d := Decision{Result: Deny, Rule: RuleClientIDConflict}
	if r.floods.Allow(r.source(c, ip), floodRule(d), r.now()) { // as every refusal line: bounded per source
		l := clientLine("refused", c, ip).Tok("rule", RuleClientIDConflict).Tok("holder_ip", holder.IP)
		clientFields(l, c).Str("holder_principal", holder.Principal).Str("holder_broker", holder.Broker)
		r.log(LevelNotice, l.String())
	} else {
		r.suppressed.Add(1)
	}
}

// source names a refusal's source for the log-flood limiter: the IP, an
// IPv6 address by its fail_ipv6_prefix network (rotating addresses inside it
// is one source).
func (r *refusals) source(c *Client, ip netip.Addr) string {
	if !ip.IsValid() {
		return logline.Pairs().Str("ip", c.Address).Body()
	}
	k := sourceKey(ip, r.ipv6Prefix)
	return logline.Pairs().Tok(string(k.scope), k.value).Body()
}

// floodRule names a refusal's rule for the log-flood limiter, in at most
// about 200 bytes.
func floodRule(d Decision) string {
	if d.Match != nil {
		return logline.Pairs().Str("rule", d.Match.Key).Body()
	}
	return logline.Pairs().Tok("rule", d.Rule).Body()
}

// run logs, until stop, the summaries of the refusals the limiter held back.
func (r *refusals) run(stop <-chan struct{}) {
	every(stop, time.Second, func() {
		for _, sm := range r.floods.Flush(r.now()) {
			l := logline.Event("refusals_suppressed")
			if sm.Overflow {
				l.Tok("source", "other")
			} else {
				l.Raw(sm.Source).Raw(sm.Rule) // ip=... (or cidr=...) and rule=..., rendered by source and floodRule
			}
			r.log(LevelNotice, l.Int("suppressed", int64(sm.Suppressed)).Dur("period", sm.Period).String())
		}
	})
}

// throttleLog keeps the refusals of a throttled username to one line per
// episode (a throttle key's lifetime) on each broker, whatever the number
// of attempts and sources: at most throttleLogMax usernames remembered, by
// a copy of their tracking form (at most 256 bytes: 2.6 MB in all). A
// username is whatever a stranger claims, one allocation with its client
// ID (cgo's connectStrings): kept as it was, an entry kept both, up to 128
// KB (1.3 GB at throttleLogMax).
type throttleLog struct {
	mu     sync.Mutex
	logged map[string]int64 // username's tracking form -> unix ms when its logged episode ends
}

const throttleLogMax = 10000

// first reports whether this refusal is the first of its episode here.
func (t *throttleLog) first(username string, now time.Time, ttl time.Duration) bool {
	ms := now.UnixMilli()
	user := keys.Tracking(username)
	t.mu.Lock()
	defer t.mu.Unlock()
	end, ok := t.logged[user]
	if ok && ms < end {
		return false
	}
	if t.logged == nil || len(t.logged) >= throttleLogMax {
		t.logged, ok = map[string]int64{}, false
	}
	if !ok {
		user = strings.Clone(user) // a new key (an update keeps the map's own)
	}
	end = ms + 1000
	if ttl > 0 {
		end = ms + ttl.Milliseconds()
	}
	t.logged[user] = end
	return true
}

// clientLine starts an event line about a client: the event, then its IP
// (the address the broker gave when it is not an IP), before any value the
// client chose. Fields the plugin decides follow; clientFields ends them.
func clientLine(event string, c *Client, ip netip.Addr) *logline.Line {
	l := logline.Event(event)
	if ip.IsValid() {
		return l.Tok("ip", ip.String())
	}
	return l.Str("ip", c.Address)
}

// clientFields adds who a client says it is, every value quoted and cut; a
// client with a certificate is named by it too (its ID and subject), so
// that a line says which device a refusal or kick was.
func clientFields(l *logline.Line, c *Client) *logline.Line {
	if c.CertID != "" {
		l.Str("cert_id", c.CertID) // 64 hex digits from the cgo layer; quoted should a caller pass anything else
	}
	l.StrKept("client_id", c.ClientID, c.idBytes()) // Str when the client ID is whole
	if c.HasUsername {
		l.StrKept("username", c.Username, c.userBytes())
	} else {
		l.Tok("username", "<none>")
	}
	if c.CertID != "" {
		l.Str("cert_subject", c.CertSubject)
	}
	return l
}

// matchFields adds the rule, origin and expiry of a list entry (its reason,
// which an operator wrote, goes after the client's values).
func matchFields(l *logline.Line, m *store.Match, now time.Time) *logline.Line {
	return l.Str("rule", m.Key).Tok("origin", m.Origin()).Expires(now, m.TTL)
}
