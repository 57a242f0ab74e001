package plugin

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logflood"
	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
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
func (r *refusals) refuse(c Client, ip netip.Addr, d Decision, reauth bool) Decision {
	if !r.floods.Allow(r.source(c, ip), floodRule(d), r.now()) {
		r.suppressed.Add(1)
		return d
	}
	var b strings.Builder
	b.WriteString("mosquitto-guard: refused ")
	b.WriteString(describeClient(c, ip))
	b.WriteByte(' ')
	if d.Match != nil {
		b.WriteString(describeMatch(d.Match, r.now()))
	} else {
		b.WriteString("rule=" + d.Rule)
	}
	if d.Detail != "" {
		b.WriteByte(' ')
		b.WriteString(d.Detail)
	}
	if reauth {
		b.WriteString(" (re-authentication after reload; not counted)")
	}
	r.log(LevelNotice, b.String())
	return d
}

// throttled refuses an attempt for a throttled username from a source it
// never authenticated from, unchecked and uncounted: m is the throttle
// entry, nil while only this broker's count knows it.
func (r *refusals) throttled(c Client, ip netip.Addr, m *store.Match) Decision {
	d := Decision{Result: Deny, Rule: RuleUsernameThrottled}
	ttl := r.window // only this broker's count knows yet: about a window
	if m != nil {
		ttl = m.TTL
	}
	if r.throttles.first(c.Username, r.now(), ttl) {
		r.log(LevelNotice, fmt.Sprintf("mosquitto-guard: refused %s rule=%s expires=%s (first refusal of this throttle here; the rest are not logged)",
			describeClient(c, ip), RuleUsernameThrottled, expiry(r.now(), ttl)))
	} else {
		r.suppressed.Add(1)
	}
	return d
}

// conflict logs the refusal of a client whose client ID holder holds under
// another principal (clientid_conflict deny).
func (r *refusals) conflict(c Client, ip netip.Addr, holder *store.Conn) {
	d := Decision{Result: Deny, Rule: RuleClientIDConflict}
	if r.floods.Allow(r.source(c, ip), floodRule(d), r.now()) { // as every refusal line: bounded per source
		r.log(LevelNotice, fmt.Sprintf("mosquitto-guard: refused %s rule=%s holder_principal=%s holder_ip=%s holder_broker=%s",
			describeClient(c, ip), RuleClientIDConflict, logval.Quote(holder.Principal), holder.IP, logval.Quote(holder.Broker)))
	} else {
		r.suppressed.Add(1)
	}
}

// source names a refusal's source for the log-flood limiter: the IP, an
// IPv6 address by its fail_ipv6_prefix network (rotating addresses inside it
// is one source).
func (r *refusals) source(c Client, ip netip.Addr) string {
	if !ip.IsValid() {
		return "ip=" + logval.Quote(c.Address)
	}
	k := sourceKey(ip, r.ipv6Prefix)
	return string(k.scope) + "=" + k.value
}

// floodRule names a refusal's rule for the log-flood limiter, in at most
// about 200 bytes.
func floodRule(d Decision) string {
	if d.Match != nil {
		return "rule=" + logval.Quote(d.Match.Key)
	}
	return "rule=" + d.Rule
}

// run logs, until stop, the summaries of the refusals the limiter held back.
func (r *refusals) run(stop <-chan struct{}) {
	every(stop, time.Second, func() {
		for _, sm := range r.floods.Flush(r.now()) {
			if sm.Overflow {
				r.log(LevelNotice, fmt.Sprintf("mosquitto-guard: %d more refusals from other sources in the last %s", sm.Suppressed, sm.Period.Round(time.Second)))
				continue
			}
			r.log(LevelNotice, fmt.Sprintf("mosquitto-guard: %d more refusals from %s %s in the last %s", sm.Suppressed, sm.Source, sm.Rule, sm.Period.Round(time.Second)))
		}
	})
}

// throttleLog keeps the refusals of a throttled username to one line per
// episode (a throttle key's lifetime) on each broker, whatever the number
// of attempts and sources: at most throttleLogMax usernames remembered.
type throttleLog struct {
	mu     sync.Mutex
	logged map[string]int64 // username -> unix ms when its logged episode ends
}

const throttleLogMax = 10000

// first reports whether this refusal is the first of its episode here.
func (t *throttleLog) first(username string, now time.Time, ttl time.Duration) bool {
	ms := now.UnixMilli()
	t.mu.Lock()
	defer t.mu.Unlock()
	if end, ok := t.logged[username]; ok && ms < end {
		return false
	}
	if t.logged == nil || len(t.logged) >= throttleLogMax {
		t.logged = map[string]int64{}
	}
	end := ms + 1000
	if ttl > 0 {
		end = ms + ttl.Milliseconds()
	}
	t.logged[username] = end
	return true
}

// describeClient renders who a client is, every client-supplied value
// quoted; a client with a certificate is named by it too (its ID and
// subject), so that a line says which device a refusal or kick was.
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
	if c.CertID != "" {
		b.WriteString(" cert_id=")
		b.WriteString(logval.Quote(c.CertID)) // 64 hex digits from the cgo layer; quoted should a caller pass anything else
		b.WriteString(" cert_subject=")
		b.WriteString(logval.Quote(c.CertSubject))
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
