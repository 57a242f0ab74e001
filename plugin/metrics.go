package plugin

import (
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/metrics"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// The Prometheus metrics of one guard (metrics_addr), on a registry of its
// own. Every label value comes from a fixed list below, never from a client:
// the number of series is fixed at start whatever clients send.
//
// The CONNECT path counts with one atomic add on a counter resolved at
// start (connects, indexed by ruleID), and observes its time in a histogram
// (a few atomic adds): no lock, no allocation, no lookup by string. State
// that exists anyway (Redis health, the replica, the verification cache) is
// read only when scraped.

// ruleID is the rule label of mosquitto_guard_connects_total: what let a
// client in, deferred it, or refused it. Each goes with one result.
type ruleID uint8

const (
	ruleOther        ruleID = iota // refused by a rule this list lacks (none today; a test checks)
	rulePassword                   // allowed: the backend checked the password
	ruleCertificate                // allowed at first sight: an identity listener, where the certificate is the authentication
	ruleNoUsername                 // deferred: no username to check
	ruleBackendDefer               // deferred: backend defer checks no credentials
	// Refused by a block entry of a scope: guard:block:clientid:..., and so on.
	ruleClientID
	ruleUsername
	ruleCert
	ruleIP
	ruleCIDR
	// Refused by the Rule constant of the same name.
	ruleBadPassword
	ruleUnknownUser
	ruleBadStoredHash
	ruleRedisUnavailable
	ruleFailLimit
	ruleUsernameThrottled
	ruleClientIDConflict
	ruleClientIDTooLong
	ruleUsernameTooLong
	nRules
)

// ruleNames are the rule label's values.
var ruleNames = [nRules]string{
	ruleOther: "other", rulePassword: "password", ruleCertificate: "certificate",
	ruleNoUsername: "no-username", ruleBackendDefer: "backend-defer",
	ruleClientID: string(keys.ClientID), ruleUsername: string(keys.Username), ruleCert: string(keys.Cert),
	ruleIP: string(keys.IP), ruleCIDR: string(keys.CIDR),
	ruleBadPassword: RuleBadPassword, ruleUnknownUser: RuleUnknownUser, ruleBadStoredHash: RuleBadStoredHash,
	ruleRedisUnavailable: RuleRedisUnavailable, ruleFailLimit: RuleFailLimit,
	ruleUsernameThrottled: RuleUsernameThrottled, ruleClientIDConflict: RuleClientIDConflict,
	ruleClientIDTooLong: RuleClientIDTooLong, ruleUsernameTooLong: RuleUsernameTooLong,
}

// resultOf is the result each rule goes with.
func resultOf(r ruleID) Result {
	switch r {
	case rulePassword, ruleCertificate:
		return Allow
	case ruleNoUsername, ruleBackendDefer:
		return Defer
	}
	return Deny
}

// resultNames are the result label's values.
var resultNames = map[Result]string{Allow: "allowed", Deny: "refused", Defer: "deferred"}

// refusedBy names the rule of a refusal: the scope of the block entry that
// refused, or the Rule constant. Not the key: that holds client values.
func refusedBy(d Decision) ruleID {
	if d.Match != nil {
		switch d.Match.Scope {
		case keys.ClientID:
			return ruleClientID
		case keys.Username:
			return ruleUsername
		case keys.Cert:
			return ruleCert
		case keys.IP:
			return ruleIP
		case keys.CIDR:
			return ruleCIDR
		}
		return ruleOther
	}
	switch d.Rule {
	case RuleBadPassword:
		return ruleBadPassword
	case RuleUnknownUser:
		return ruleUnknownUser
	case RuleBadStoredHash:
		return ruleBadStoredHash
	case RuleRedisUnavailable:
		return ruleRedisUnavailable
	case RuleFailLimit:
		return ruleFailLimit
	case RuleUsernameThrottled:
		return ruleUsernameThrottled
	case RuleClientIDConflict:
		return ruleClientIDConflict
	case RuleClientIDTooLong:
		return ruleClientIDTooLong
	case RuleUsernameTooLong:
		return ruleUsernameTooLong
	}
	return ruleOther
}

// banScopes are the scope label's values of mosquitto_guard_bans_total:
// the fail scopes, and cidr for an IPv6 network (fail_ipv6_prefix).
var banScopes = [...]keys.Scope{keys.IP, keys.CIDR, keys.ClientID, keys.Username}

// findingKinds are the kind label's values of mosquitto_guard_findings_total.
var findingKinds = [...]string{store.KindCrossPrincipal, store.KindDuplicate}

// connectBuckets are the CONNECT histogram's bounds, in seconds: 1 µs to 1 s
// in steps of 1, 2.5, 5. A cache hit takes some µs; a bcrypt or PBKDF2
// verification ms; a Redis round trip before the replica is loaded up to
// redis_timeout.
var connectBuckets = []float64{
	1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4,
	1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1,
}

// guardMetrics holds what the guard counts as it goes; nil when
// metrics_addr is not set (each method then does nothing).
type guardMetrics struct {
	reg         *metrics.Registry
	connects    [nRules]metrics.Counter // each with its rule's one result
	deferRule   ruleID                  // what a Defer is here: backend defer, or no username
	connectTime *metrics.Histogram
	bans        [len(banScopes)]metrics.Counter
	throttles   *metrics.Counter
	kicks       *metrics.Counter
	findings    [len(findingKinds)]metrics.Counter
}

// newGuardMetrics makes the counters, every series of them at 0.
func newGuardMetrics(backend config.Backend) *guardMetrics {
	m := &guardMetrics{reg: metrics.NewRegistry(), deferRule: ruleNoUsername}
	if backend == config.BackendDefer {
		m.deferRule = ruleBackendDefer
	}
	m.reg.Add("mosquitto_guard_connects_total", "counter",
		"CONNECTs decided by the plugin, by result and by the rule that decided (a scope of the block entry that refused, or a reason); the re-checks after a reload are not counted.",
		func(e *metrics.Emitter) {
			for r := ruleID(0); r < nRules; r++ {
				e.Sample("", float64(m.connects[r].Load()), "result", resultNames[resultOf(r)], "rule", ruleNames[r])
			}
		})
	m.connectTime = m.reg.Histogram("mosquitto_guard_connect_seconds",
		"Time each CONNECT spends in the plugin on the broker thread (MOSQ_EVT_BASIC_AUTH, from entry to return).",
		connectBuckets)
	m.reg.Add("mosquitto_guard_bans_total", "counter", "Automatic bans this broker wrote, by the scope of the key banned.",
		func(e *metrics.Emitter) {
			for i, s := range banScopes {
				e.Sample("", float64(m.bans[i].Load()), "origin", "auto", "scope", string(s))
			}
		})
	m.throttles = m.reg.Counter("mosquitto_guard_throttles_total", "Username throttles this broker started (username_fail_limit).")
	m.kicks = m.reg.Counter("mosquitto_guard_kicks_total",
		"Connections this broker disconnected because a ban matched them while connected (or at first sight on an identity listener).")
	m.reg.Add("mosquitto_guard_findings_total", "counter",
		"Client-ID conflict findings this broker reported (logged), by kind; repeats folded into an earlier report are not counted.",
		func(e *metrics.Emitter) {
			for i, k := range findingKinds {
				e.Sample("", float64(m.findings[i].Load()), "kind", k)
			}
		})
	return m
}

// connect counts one CONNECT decided by rule r.
func (m *guardMetrics) connect(r ruleID) {
	if m == nil {
		return
	}
	m.connects[r].Inc()
}

// decided counts a CONNECT's decision d (Authenticate).
func (m *guardMetrics) decided(d Decision) {
	if m == nil {
		return
	}
	switch d.Result {
	case Allow:
		m.connects[rulePassword].Inc()
	case Defer:
		m.connects[m.deferRule].Inc()
	default:
		m.connects[refusedBy(d)].Inc()
	}
}

func (m *guardMetrics) banned(scope keys.Scope) {
	if m == nil {
		return
	}
	for i, s := range banScopes {
		if s == scope {
			m.bans[i].Inc()
			return
		}
	}
}

func (m *guardMetrics) throttled() {
	if m != nil {
		m.throttles.Inc()
	}
}

func (m *guardMetrics) kicked(n int) {
	if m != nil && n > 0 {
		m.kicks.Add(uint64(n))
	}
}

func (m *guardMetrics) found(kind string) {
	if m == nil {
		return
	}
	for i, k := range findingKinds {
		if k == kind {
			m.findings[i].Inc()
			return
		}
	}
}

// watch adds the gauges and counters read from the guard's state when
// scraped (Redis health, the replica, the verification cache, the failures
// not counted in Redis, the refusal lines held back), then the runtime's
// and the process's.
func (m *guardMetrics) watch(g *Guard) {
	m.reg.GaugeFunc("mosquitto_guard_redis_up", "1 while Redis answers the plugin's health probe (every 200 ms), else 0.",
		func() float64 { return b2f(g.health.up()) })
	m.reg.CounterFunc("mosquitto_guard_auth_cache_hits_total",
		"Password checks answered by the verification cache (auth_cache), without hashing.",
		func() float64 { return float64(g.creds.cache.hits.Load()) })
	m.reg.CounterFunc("mosquitto_guard_auth_cache_misses_total",
		"Password checks the verification cache could not answer: the password was hashed.",
		func() float64 { return float64(g.creds.cache.misses.Load()) })
	m.reg.CounterFunc("mosquitto_guard_refusal_lines_suppressed_total",
		"Refusals not logged one by one under the bound on refusal lines (summed up in a later line, or, for a throttled username, after the first of its episode).",
		func() float64 { return float64(g.refusals.suppressed.Load()) })
	m.reg.CounterFunc("mosquitto_guard_failures_uncounted_total",
		"Failed authentications not counted in Redis (the counting queue was full, or Redis did not answer); this broker's own count still has them.",
		func() float64 { return float64(g.failures.lostTotal.Load()) })
	if g.replica != nil && g.sync != nil {
		m.reg.Add("mosquitto_guard_replica_keys", "gauge",
			"List keys held in the local replica, by list (expired ones until the sweep each minute).",
			func(e *metrics.Emitter) {
				block, allow := g.replica.Lists()
				e.Sample("", float64(block), "list", string(keys.Block))
				e.Sample("", float64(allow), "list", string(keys.Allow))
			})
		started := time.Now()
		m.reg.GaugeFunc("mosquitto_guard_replica_lag_seconds",
			"Seconds since the local replica last applied a change from Redis or finished a full load (one each replica_resync); since start before its first load.",
			func() float64 {
				last := g.sync.LastApplied()
				if last.IsZero() {
					last = started
				}
				return time.Since(last).Seconds()
			})
		// A Redis that does not answer (hung, or frozen with SIGSTOP) keeps
		// the subscription's socket open and silent: in step is then not
		// known, and not claimed.
		m.reg.GaugeFunc("mosquitto_guard_replica_in_step",
			"1 while changes reach the local replica (subscribed to Redis and loaded since, and Redis answering), else 0.",
			func() float64 { return b2f(g.sync.InStep() && g.health.up()) })
	}
	m.reg.Runtime()
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Timed reports whether the guard has a CONNECT histogram to observe
// (metrics_addr set): the cgo layer reads the clock only then.
func (g *Guard) Timed() bool { return g.metrics != nil }

// ObserveConnect records the time one CONNECT spent in the plugin on the
// broker thread, measured by the cgo layer around its whole BASIC_AUTH
// callback. Not for the re-checks after a reload.
func (g *Guard) ObserveConnect(d time.Duration) {
	if g.metrics != nil {
		g.metrics.connectTime.Observe(d)
	}
}
