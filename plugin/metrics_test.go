package plugin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/metrics"
	"github.com/mosquitto-guard/mosquitto-guard/ratelimit"
	"github.com/mosquitto-guard/mosquitto-guard/store"
	"github.com/mosquitto-guard/mosquitto-guard/store/replica"
)

// metricsGuard is newGuard with the metrics endpoint on a free loopback
// port (the option's parser refuses port 0; a test may pass it).
func metricsGuard(t *testing.T, opts map[string]string) (*Guard, *fakeStore, *logSink) {
	t.Helper()
	if opts == nil {
		opts = map[string]string{}
	}
	if _, ok := opts["backend"]; !ok {
		opts["password_file"] = passwdFile(t)
	}
	cfg, err := config.Parse(opts)
	require.NoError(t, err)
	cfg.MetricsAddr = "127.0.0.1:0"
	st, ls := newFakeStore(), &logSink{}
	g, err := NewWith(cfg, Output{Log: ls.log}, Deps{Store: st, Counter: &fakeCounter{}})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	require.NotNil(t, g.metrics)
	return g, st, ls
}

// sample is one series' value: a counter's or gauge's value, a
// histogram's count.
func sample(t *testing.T, reg *metrics.Registry, name string, labels ...string) float64 {
	t.Helper()
	fams := gather(t, reg)
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if hasLabels(m, labels) {
				switch {
				case m.Counter != nil:
					return m.Counter.GetValue()
				case m.Gauge != nil:
					return m.Gauge.GetValue()
				case m.Histogram != nil:
					return float64(m.Histogram.GetSampleCount())
				}
			}
		}
		t.Fatalf("no series %s%v", name, labels)
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// gather reads reg's exposition with Prometheus's text parser, in the
// order written.
func gather(t *testing.T, reg *metrics.Registry) []*dto.MetricFamily {
	t.Helper()
	var b bytes.Buffer
	reg.WriteTo(&b)
	p := expfmt.NewTextParser(model.UTF8Validation)
	byName, err := p.TextToMetricFamilies(bytes.NewReader(b.Bytes()))
	require.NoError(t, err, b.String())
	var fams []*dto.MetricFamily
	for _, line := range strings.Split(b.String(), "\n") {
		if name, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, _, _ = strings.Cut(name, " ")
			fams = append(fams, byName[name])
		}
	}
	return fams
}

// hasLabels says whether m has every name=value pair of labels.
func hasLabels(m *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func TestMetricsCountEachDecision(t *testing.T) {
	g, st, _ := metricsGuard(t, map[string]string{"fail_scopes": "ip"})
	st.set("guard:block:ip:192.0.2.66", "operator ban")
	st.set("guard:block:cidr:198.51.100.0/24", "auto: brute force")
	st.set("guard:block:clientid:stolen", "")
	st.set("guard:block:username:mallory", "")
	reg := g.metrics.reg

	for _, c := range []Client{
		cl(1, "192.0.2.1", "a", "alice", "alice-pw"),
		cl(2, "192.0.2.2", "b", "alice", "nope"),
		cl(3, "192.0.2.3", "c", "zed", "x"),
		cl(4, "192.0.2.66", "d", "alice", "alice-pw"),
		cl(5, "198.51.100.9", "e", "alice", "alice-pw"),
		cl(6, "192.0.2.6", "stolen", "alice", "alice-pw"),
		cl(7, "192.0.2.7", "m", "mallory", "x"),
		{Handle: 8, Address: "192.0.2.8", ClientID: "anon"},
		cl(9, "192.0.2.9", "a2", "alice", "alice-pw"),
	} {
		g.Authenticate(c)
	}
	// The broker re-checks connection 1 after a reload: not a CONNECT.
	g.Authenticate(cl(1, "192.0.2.1", "a", "alice", "alice-pw"))

	want := map[[2]string]float64{
		{"allowed", "password"}:       2,
		{"refused", "bad-password"}:   1,
		{"refused", "unknown-user"}:   1,
		{"refused", "ip"}:             1,
		{"refused", "cidr"}:           1,
		{"refused", "clientid"}:       1,
		{"refused", "username"}:       1,
		{"deferred", "no-username"}:   1,
		{"refused", "cert"}:           0,
		{"deferred", "backend-defer"}: 0,
	}
	for k, v := range want {
		assert.Equal(t, v, sample(t, reg, "mosquitto_guard_connects_total", "result", k[0], "rule", k[1]), "%v", k)
	}
	// The password was hashed for alice's first CONNECT, the bad one and
	// the unknown user zed (misses: zed's against the dummy, looked up in
	// the cache as a known user's is, to cost alike), then the cache
	// answered (the second good one, and the re-check). mallory was refused
	// before her password was checked.
	assert.Equal(t, 2.0, sample(t, reg, "mosquitto_guard_auth_cache_hits_total"))
	assert.Equal(t, 3.0, sample(t, reg, "mosquitto_guard_auth_cache_misses_total"))
	assert.Equal(t, 1.0, sample(t, reg, "mosquitto_guard_redis_up"))

	g.ObserveConnect(3 * time.Microsecond)
	g.ObserveConnect(2 * time.Millisecond)
	assert.Equal(t, 2.0, sample(t, reg, "mosquitto_guard_connect_seconds"))
}

// Redis stops answering the health probe: redis_up goes 0 within the
// probe's bound, and back to 1.
func TestMetricsRedisUp(t *testing.T) {
	g, st, _ := metricsGuard(t, nil)
	st.mu.Lock()
	st.down = true
	st.mu.Unlock()
	require.Eventually(t, func() bool { return sample(t, g.metrics.reg, "mosquitto_guard_redis_up") == 0 },
		2*time.Second, 10*time.Millisecond)
	st.mu.Lock()
	st.down = false
	st.mu.Unlock()
	require.Eventually(t, func() bool { return sample(t, g.metrics.reg, "mosquitto_guard_redis_up") == 1 },
		2*time.Second, 10*time.Millisecond)
}

// Bans, throttles, kicks and findings: each counted once, by its label.
func TestMetricsBansKicksFindings(t *testing.T) {
	g, _, _ := metricsGuard(t, nil)
	reg := g.metrics.reg
	g.failures.banned(&ratelimit.Ban{Key: "guard:block:ip:192.0.2.1", Reason: "auto", Duration: time.Minute}, failure{}, failKey{keys.IP, "192.0.2.1"})
	g.failures.banned(&ratelimit.Ban{Key: "guard:block:cidr:2001:db8::/64"}, failure{}, failKey{keys.CIDR, "2001:db8::/64"})
	g.failures.banned(&ratelimit.Ban{Key: "guard:block:ip:192.0.2.2"}, failure{}, failKey{keys.IP, "192.0.2.2"})
	g.failures.throttled(&ratelimit.Throttle{Username: "alice", Duration: time.Minute}, failure{username: "alice", usernameBytes: 5, hasUsername: true})
	assert.Equal(t, 2.0, sample(t, reg, "mosquitto_guard_bans_total", "origin", "auto", "scope", "ip"))
	assert.Equal(t, 1.0, sample(t, reg, "mosquitto_guard_bans_total", "origin", "auto", "scope", "cidr"))
	assert.Equal(t, 0.0, sample(t, reg, "mosquitto_guard_bans_total", "origin", "auto", "scope", "username"))
	assert.Equal(t, 1.0, sample(t, reg, "mosquitto_guard_throttles_total"))

	g.metrics.found(store.KindCrossPrincipal)
	g.metrics.found(store.KindDuplicate)
	g.metrics.found(store.KindDuplicate)
	g.metrics.found("a kind of tomorrow") // not counted: no series of its own
	assert.Equal(t, 1.0, sample(t, reg, "mosquitto_guard_findings_total", "kind", "cross-principal"))
	assert.Equal(t, 2.0, sample(t, reg, "mosquitto_guard_findings_total", "kind", "duplicate-connection"))

	// A ban of a connected client kicks it.
	g.Authenticate(cl(1, "192.0.2.9", "dev", "alice", "alice-pw"))
	g.replica = newTestReplica()
	require.NoError(t, g.replica.Put("guard:block:clientid:dev", "", time.Time{}))
	g.kickMatching("guard:block:clientid:dev", keys.ClientID, "dev")
	assert.Equal(t, 1.0, sample(t, reg, "mosquitto_guard_kicks_total"))
}

// Refusals held back by the bound on refusal lines are counted.
func TestMetricsSuppressedRefusals(t *testing.T) {
	g, _, ls := metricsGuard(t, nil)
	for i := range 50 {
		g.Authenticate(cl(uintptr(100+i), "192.0.2.5", "x", "alice", "wrong"))
		g.Disconnected(uintptr(100 + i))
	}
	logged := strings.Count(ls.all(), "mosquitto-guard: event=refused ")
	assert.Less(t, logged, 50)
	assert.Equal(t, float64(50-logged), sample(t, g.metrics.reg, "mosquitto_guard_refusal_lines_suppressed_total"))
}

// Every rule the plugin refuses by has a label of its own: "other" stays 0.
func TestEveryRuleHasItsLabel(t *testing.T) {
	for _, r := range []string{RuleBadPassword, RuleUnknownUser, RuleBadStoredHash, RuleRedisUnavailable,
		RuleFailLimit, RuleUsernameThrottled, RuleClientIDConflict} {
		id := refusedBy(Decision{Result: Deny, Rule: r})
		assert.NotEqual(t, ruleOther, id, r)
		assert.Equal(t, r, ruleNames[id])
	}
	for _, s := range keys.Scopes {
		id := refusedBy(Decision{Result: Deny, Rule: "guard:block:x", Match: &store.Match{Scope: s}})
		assert.NotEqual(t, ruleOther, id, s)
		assert.Equal(t, string(s), ruleNames[id])
	}
	seen := map[string]bool{}
	for r := ruleID(0); r < nRules; r++ {
		assert.NotEmpty(t, ruleNames[r], "rule %d", r)
		assert.False(t, seen[ruleNames[r]], "%s twice", ruleNames[r])
		seen[ruleNames[r]] = true
	}
}

// Hostile clients (random client IDs, usernames and addresses, values that
// look like label values, block entries on them, bans of every scope) make
// no series: the number of series of every mosquitto_guard_ metric, and
// each label value, are fixed at start.
func TestMetricsCardinalityBoundedUnderHostileInput(t *testing.T) {
	g, st, _ := metricsGuard(t, map[string]string{"fail_scopes": "ip,clientid,username"})
	reg := g.metrics.reg
	before := guardSeries(t, reg)
	rnd := rand.New(rand.NewPCG(1, 2))
	hostile := func() string {
		switch rnd.IntN(5) {
		case 0:
			return fmt.Sprintf("dev-%d", rnd.Uint64())
		case 1:
			return `rule="x",result="allowed"}` + fmt.Sprint(rnd.Uint64())
		case 2:
			return "new\nline_total 1\n" + fmt.Sprint(rnd.Uint64())
		case 3:
			return strings.Repeat("L", 1000+rnd.IntN(1000))
		}
		return string([]byte{0xff, 0xfe, byte(rnd.Uint32())})
	}
	for i := range 3000 {
		id, user := hostile(), hostile()
		ip := fmt.Sprintf("10.%d.%d.%d", rnd.IntN(256), rnd.IntN(256), rnd.IntN(256))
		if i%3 == 0 {
			ip = fmt.Sprintf("2001:db8:%x::%x", rnd.IntN(65536), rnd.IntN(65536))
		}
		switch i % 7 {
		case 0:
			st.set("guard:block:clientid:"+id, hostile())
		case 1:
			st.set("guard:block:username:"+user, hostile())
		case 2:
			st.set("guard:block:ip:"+ip, hostile())
		}
		c := cl(uintptr(i+1), ip, id, user, hostile())
		if i%5 == 0 {
			c.HasUsername = false
		}
		g.Authenticate(c)
		g.FirstSight(Client{Handle: uintptr(1_000_000 + i), ClientID: id, Address: ip, CertID: keys.CertID([]byte(id))})
		g.metrics.found(hostile())
		g.metrics.banned(keys.Scope(hostile()))
		g.Disconnected(uintptr(i + 1))
	}
	after := guardSeries(t, reg)
	assert.Equal(t, before, after, "no series added")
	assert.Equal(t, int(nRules), after["mosquitto_guard_connects_total"])

	vocab := map[string]bool{}
	for _, n := range ruleNames {
		vocab[n] = true
	}
	for _, n := range resultNames {
		vocab[n] = true
	}
	for _, s := range banScopes {
		vocab[string(s)] = true
	}
	for _, k := range findingKinds {
		vocab[k] = true
	}
	vocab["auto"], vocab["block"], vocab["allow"] = true, true, true
	fams := gather(t, reg)
	total := 0.0
	for _, f := range fams {
		if !strings.HasPrefix(f.GetName(), "mosquitto_guard_") {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				assert.True(t, vocab[l.GetValue()], "%s{%s=%.40q}: not a fixed label value", f.GetName(), l.GetName(), l.GetValue())
			}
			if f.GetName() == "mosquitto_guard_connects_total" {
				total += m.Counter.GetValue()
			}
		}
	}
	assert.Equal(t, 6000.0, total, "every CONNECT and first sight counted once")
	assert.Equal(t, 0.0, sample(t, reg, "mosquitto_guard_connects_total", "rule", "other"))
}

// guardSeries counts the series of each mosquitto_guard_ metric.
func guardSeries(t *testing.T, reg *metrics.Registry) map[string]int {
	t.Helper()
	fams := gather(t, reg)
	out := map[string]int{}
	for _, f := range fams {
		if strings.HasPrefix(f.GetName(), "mosquitto_guard_") {
			out[f.GetName()] = len(f.GetMetric())
		}
	}
	return out
}

// The endpoint serves the guard's registry in the text format, and the
// Go and process collectors; Close frees its port.
func TestMetricsEndpoint(t *testing.T) {
	g, _, ls := metricsGuard(t, nil)
	g.Authenticate(cl(1, "192.0.2.1", "a", "alice", "alice-pw"))
	addr := g.metricsSrv.Addr().String()
	assert.Contains(t, ls.all(), "mosquitto-guard: metrics on http://"+addr+"/metrics")
	resp, err := http.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	require.NoError(t, err)
	require.Contains(t, fams, "mosquitto_guard_connects_total")
	for _, name := range []string{"mosquitto_guard_connect_seconds", "mosquitto_guard_redis_up", "process_resident_memory_bytes", "go_goroutines"} {
		assert.Contains(t, fams, name)
	}
	for _, m := range fams["mosquitto_guard_connects_total"].GetMetric() {
		if hasLabels(m, []string{"result", "allowed", "rule", "password"}) {
			assert.Equal(t, 1.0, m.Counter.GetValue())
		}
	}
	g.Close()
	l, err := net.Listen("tcp", addr)
	require.NoError(t, err, "the port is free after Close")
	l.Close()
}

// An address that cannot be listened on is an option error naming the
// option, the value and why; nothing of the guard is started.
func TestMetricsAddrCannotListen(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	cfg, err := config.Parse(map[string]string{"backend": "defer"})
	require.NoError(t, err)
	for addr, why := range map[string]string{
		busy.Addr().String(): "address already in use",
		"192.0.2.1:9466":     "bind: cannot assign requested address",
	} {
		cfg.MetricsAddr = addr
		ls := &logSink{}
		g, err := NewWith(cfg, Output{Log: ls.log}, Deps{Store: newFakeStore(), Counter: &fakeCounter{}})
		require.Error(t, err)
		assert.Nil(t, g)
		var oe *config.OptionError
		require.True(t, errors.As(err, &oe))
		assert.Equal(t, `option metrics_addr: bad value "`+addr+`": expected a host:port this broker can listen on (`+why+`)`, err.Error())
		assert.Empty(t, ls.all(), "nothing started, nothing logged")
	}
}

// A guard that fails after opening the endpoint (its password file went
// missing) closes it.
func TestMetricsClosedWhenNewFails(t *testing.T) {
	free, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := free.Addr().String()
	free.Close()
	path := passwdFile(t)
	cfg, err := config.Parse(map[string]string{"password_file": path})
	require.NoError(t, err)
	cfg.MetricsAddr = addr
	cfg.PasswordFile = path + ".gone"
	_, err = NewWith(cfg, Output{Log: func(Level, string) {}}, Deps{Store: newFakeStore(), Counter: &fakeCounter{}})
	require.Error(t, err)
	l, err := net.Listen("tcp", addr)
	require.NoError(t, err, "the endpoint was closed")
	l.Close()
}

func TestMetricsOff(t *testing.T) {
	g, _, _, _ := newGuard(t, nil)
	assert.Nil(t, g.metrics)
	assert.Nil(t, g.metricsSrv)
	assert.False(t, g.Timed())
	g.ObserveConnect(time.Millisecond) // nothing to observe: no panic
	g.Authenticate(cl(1, "192.0.2.1", "a", "alice", "alice-pw"))
}

// benchStore answers every lookup at once with nothing listed: the
// benchmarks below measure the plugin's own work, not a fake Redis.
type benchStore struct{}

func (benchStore) Lookup(context.Context, store.Query) (store.Answer, error) {
	return store.Answer{}, nil
}
func (benchStore) LiveConns(context.Context, string) ([]store.Conn, error) { return nil, nil }
func (benchStore) PublishChange(context.Context, string) error             { return nil }
func (benchStore) Ping(context.Context) error                              { return nil }
func (benchStore) Close() error                                            { return nil }
func (benchStore) ReleaseThrottle(context.Context, string, string) (bool, error) {
	return false, nil
}
func (benchStore) ClaimThrottle(context.Context, string, string, time.Duration) (bool, error) {
	return false, nil
}

// BenchmarkConnectCounting is what the metrics add to one CONNECT: its
// count and the observation of its time (0 allocs/op), and the two clock
// reads that time it.
//
//	go test ./plugin -run '^$' -bench 'ConnectCounting|Authenticate' -benchmem -count 5
func BenchmarkConnectCounting(b *testing.B) {
	m := newGuardMetrics(config.BackendFiles)
	allowed := Decision{Result: Allow}
	refused := Decision{Result: Deny, Rule: "guard:block:cidr:198.51.100.0/24", Match: &store.Match{Scope: keys.CIDR}}
	b.Run("allowed", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			m.decided(allowed)
			m.connectTime.Observe(12 * time.Microsecond)
		}
	})
	b.Run("refused", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			m.decided(refused)
			m.connectTime.Observe(12 * time.Microsecond)
		}
	})
	// The cgo layer's two clock reads around a CONNECT.
	b.Run("clock", func(b *testing.B) {
		b.ReportAllocs()
		var d time.Duration
		for b.Loop() {
			start := time.Now()
			d += time.Since(start)
		}
		_ = d
	})
}

// BenchmarkAuthenticate is a CONNECT's Authenticate and DISCONNECT on the
// verification cache's hit path (the password checked before), with the
// metrics off and on; on, it also observes the CONNECT's time as the cgo
// layer does (two clock reads). "paired" alternates the two guards in
// blocks of 256 CONNECTs and reports each one's ns per CONNECT and their
// ratio, so that a shared machine's drift hits both alike.
func BenchmarkAuthenticate(b *testing.B) {
	guard := func(b *testing.B, on bool) *Guard {
		path := b.TempDir() + "/passwd"
		require.NoError(b, writeFile(path, alicePasswd))
		cfg, err := config.Parse(map[string]string{"password_file": path})
		require.NoError(b, err)
		if on {
			cfg.MetricsAddr = "127.0.0.1:0"
		}
		g, err := NewWith(cfg, Output{Log: func(Level, string) {}}, Deps{Store: benchStore{}, Counter: &fakeCounter{}})
		require.NoError(b, err)
		b.Cleanup(g.Close)
		require.Equal(b, Allow, g.Authenticate(cl(1, "192.0.2.1", "dev", "alice", "alice-pw")).Result)
		g.Disconnected(1)
		return g
	}
	c := cl(1, "192.0.2.1", "dev", "alice", "alice-pw")
	connect := func(g *Guard) { // as cgo's guardBasicAuth, then its DISCONNECT
		var start time.Time
		if g.Timed() {
			start = time.Now()
		}
		g.Authenticate(c)
		if g.Timed() {
			g.ObserveConnect(time.Since(start))
		}
		g.Disconnected(1)
	}
	for _, on := range []bool{false, true} {
		b.Run(fmt.Sprintf("metrics=%v", on), func(b *testing.B) {
			g := guard(b, on)
			b.ReportAllocs()
			for b.Loop() {
				connect(g)
			}
		})
	}
	b.Run("paired", func(b *testing.B) {
		gs := [2]*Guard{guard(b, false), guard(b, true)}
		var spent [2]time.Duration
		n := 0
		for b.Loop() {
			for i, g := range gs {
				t0 := time.Now()
				for range 256 {
					connect(g)
				}
				spent[i] += time.Since(t0)
			}
			n += 256
		}
		off, on := float64(spent[0])/float64(n), float64(spent[1])/float64(n)
		b.ReportMetric(off, "off-ns/connect")
		b.ReportMetric(on, "on-ns/connect")
		b.ReportMetric(on/off, "on/off")
	})
}

func newTestReplica() *replica.Replica { return replica.New(keys.Builder{Prefix: "guard:"}) }

func writeFile(path, content string) error { return os.WriteFile(path, []byte(content), 0o600) }
