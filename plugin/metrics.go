package plugin

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
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
	reg         *prometheus.Registry
	connects    [nRules]prometheus.Counter // each with its rule's one result
	deferRule   ruleID                     // what a Defer is here: backend defer, or no username
	connectTime prometheus.Histogram
	bans        [len(banScopes)]prometheus.Counter
	throttles   prometheus.Counter
	kicks       prometheus.Counter
	findings    [len(findingKinds)]prometheus.Counter
}

// newGuardMetrics makes the counters, every series of them at 0.
func newGuardMetrics(backend config.Backend) *guardMetrics {
	m := &guardMetrics{reg: prometheus.NewRegistry(), deferRule: ruleNoUsername}
	if backend == config.BackendDefer {
		m.deferRule = ruleBackendDefer
	}
	connects := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mosquitto_guard_connects_total",
		Help: "CONNECTs decided by the plugin, by result and by the rule that decided (a scope of the block entry that refused, or a reason); the re-checks after a reload are not counted.",
	}, []string{"result", "rule"})
	for r := ruleID(0); r < nRules; r++ {
		m.connects[r] = connects.WithLabelValues(resultNames[resultOf(r)], ruleNames[r])
	}
	m.connectTime = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "mosquitto_guard_connect_seconds",
		Help:    "Time each CONNECT spends in the plugin on the broker thread (MOSQ_EVT_BASIC_AUTH, from entry to return).",
		Buckets: connectBuckets,
	})
	bans := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mosquitto_guard_bans_total",
		Help: "Automatic bans this broker wrote, by the scope of the key banned.",
	}, []string{"origin", "scope"})
	for i, s := range banScopes {
		m.bans[i] = bans.WithLabelValues("auto", string(s))
	}
	m.throttles = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "mosquitto_guard_throttles_total",
		Help: "Username throttles this broker started (username_fail_limit).",
	})
	m.kicks = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "mosquitto_guard_kicks_total",
		Help: "Connections this broker disconnected because a ban matched them while connected (or at first sight on an identity listener).",
	})
	findings := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mosquitto_guard_findings_total",
		Help: "Client-ID conflict findings this broker reported (logged), by kind; repeats folded into an earlier report are not counted.",
	}, []string{"kind"})
	for i, k := range findingKinds {
		m.findings[i] = findings.WithLabelValues(k)
	}
	m.reg.MustRegister(connects, m.connectTime, bans, m.throttles, m.kicks, findings,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
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
		m.kicks.Add(float64(n))
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

// watch registers the gauges and counters read from the guard's state
// when scraped: Redis health, the replica, the verification cache, the
// failures not counted in Redis, the refusal lines held back.
func (m *guardMetrics) watch(g *Guard) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "mosquitto_guard_redis_up",
			Help: "1 while Redis answers the plugin's health probe (every 200 ms), else 0.",
		}, func() float64 { return b2f(g.health.up()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "mosquitto_guard_auth_cache_hits_total",
			Help: "Password checks answered by the verification cache (auth_cache), without hashing.",
		}, func() float64 { return float64(g.creds.cache.hits.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "mosquitto_guard_auth_cache_misses_total",
			Help: "Password checks the verification cache could not answer: the password was hashed.",
		}, func() float64 { return float64(g.creds.cache.misses.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "mosquitto_guard_refusal_lines_suppressed_total",
			Help: "Refusals not logged one by one under the bound on refusal lines (summed up in a later line, or, for a throttled username, after the first of its episode).",
		}, func() float64 { return float64(g.refusals.suppressed.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "mosquitto_guard_failures_uncounted_total",
			Help: "Failed authentications not counted in Redis (the counting queue was full, or Redis did not answer); this broker's own count still has them.",
		}, func() float64 { return float64(g.failures.lostTotal.Load()) }),
	)
	if g.replica == nil || g.sync == nil {
		return
	}
	for _, list := range []keys.Kind{keys.Block, keys.Allow} {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "mosquitto_guard_replica_keys",
			Help:        "List keys held in the local replica, by list (expired ones until the sweep each minute).",
			ConstLabels: prometheus.Labels{"list": string(list)},
		}, func() float64 {
			block, allow := g.replica.Lists()
			if list == keys.Allow {
				return float64(allow)
			}
			return float64(block)
		}))
	}
	started := time.Now()
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "mosquitto_guard_replica_lag_seconds",
			Help: "Seconds since the local replica last applied a change from Redis or finished a full load (one each replica_resync); since start before its first load.",
		}, func() float64 {
			last := g.sync.LastApplied()
			if last.IsZero() {
				last = started
			}
			return time.Since(last).Seconds()
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "mosquitto_guard_replica_in_step",
			Help: "1 while changes reach the local replica (subscribed to Redis and loaded since), else 0.",
		}, func() float64 { return b2f(g.sync.InStep()) }),
	)
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
		g.metrics.connectTime.Observe(d.Seconds())
	}
}
