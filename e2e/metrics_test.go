package e2e

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// scrape GETs addr's /metrics and parses the text exposition.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	require.NoError(t, err)
	return fams
}

// value is the value of the series of name with labels (name, value
// pairs): a counter's or gauge's, a histogram's count; -1 when absent.
func value(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.GetLabel() {
				found = found || (l.GetName() == labels[i] && l.GetValue() == labels[i+1])
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	return -1
}

// connects sums mosquitto_guard_connects_total over every series.
func connects(fams map[string]*dto.MetricFamily) float64 {
	total := 0.0
	if f := fams["mosquitto_guard_connects_total"]; f != nil {
		for _, m := range f.GetMetric() {
			total += m.Counter.GetValue()
		}
	}
	return total
}

// The endpoint over real CONNECTs: exact counts by rule, a histogram
// observation per CONNECT, the replica's keys, redis_up following Redis,
// counters kept across a SIGHUP, and the port free once the broker stops.
func TestMetricsEndToEnd(t *testing.T) {
	addr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	e := newEnv(t, "auth_opt_metrics_addr "+addr)
	e.logLine("mosquitto-guard: metrics on http://" + addr + "/metrics")

	fams := scrape(t, addr)
	assert.Equal(t, 0.0, connects(fams))
	assert.Equal(t, 0.0, value(fams, "mosquitto_guard_connect_seconds"))
	assert.Equal(t, 1.0, value(fams, "mosquitto_guard_redis_up"))
	assert.Equal(t, 0.0, value(fams, "mosquitto_guard_replica_keys", "list", "block"))
	assert.Equal(t, 1.0, value(fams, "mosquitto_guard_replica_in_step"))

	// The lists: three block keys, two allow keys; the replica has them
	// once the gauges say so.
	e.redis.CLI("SET", "guard:block:ip:127.9.0.66", "abuse report 4711")
	e.redis.CLI("SET", "guard:block:clientid:stolen-1", "")
	e.redis.CLI("SET", "guard:block:cidr:127.9.8.0/24", "", "EX", "3600")
	e.redis.CLI("SET", "guard:allow:ip:127.9.0.77", "office")
	e.redis.CLI("SET", "guard:allow:username:bob", "")
	eventually(t, 3*time.Second, func() bool {
		f := scrape(t, addr)
		return value(f, "mosquitto_guard_replica_keys", "list", "block") == 3 && value(f, "mosquitto_guard_replica_keys", "list", "allow") == 2
	}, "replica_keys never reached block 3, allow 2")
	fams = scrape(t, addr)
	lag := value(fams, "mosquitto_guard_replica_lag_seconds")
	assert.True(t, lag >= 0 && lag < 3, "a change was just applied: lag %v", lag)

	// Real CONNECTs: 3 allowed, 2 bad passwords, 1 unknown user, refused by
	// an ip, a client ID and a range ban; one client stays connected.
	held, code := e.dial(as("127.9.0.1", "held", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	require.EqualValues(t, accepted, e.connect(as("127.9.0.2", "a2", "alice", "alice-pw")))
	require.EqualValues(t, accepted, e.connect(as("127.9.0.3", "b3", "bob", "bob-pw")))
	require.EqualValues(t, refused, e.connect(as("127.9.0.4", "x4", "alice", "wrong")))
	require.EqualValues(t, refused, e.connect(as("127.9.0.5", "x5", "bob", "wrong")))
	require.EqualValues(t, refused, e.connect(as("127.9.0.6", "x6", "zed", "zed-pw")))
	require.EqualValues(t, refused, e.connect(as("127.9.0.66", "x7", "alice", "alice-pw")))
	require.EqualValues(t, refused, e.connect(as("127.9.0.8", "stolen-1", "alice", "alice-pw")))
	require.EqualValues(t, refused, e.connect(as("127.9.8.9", "x9", "alice", "alice-pw")))
	const made = 9

	fams = scrape(t, addr)
	want := map[[2]string]float64{
		{"allowed", "password"}:     3,
		{"refused", "bad-password"}: 2,
		{"refused", "unknown-user"}: 1,
		{"refused", "ip"}:           1,
		{"refused", "clientid"}:     1,
		{"refused", "cidr"}:         1,
		{"refused", "username"}:     0,
		{"deferred", "no-username"}: 0,
	}
	for k, v := range want {
		assert.Equal(t, v, value(fams, "mosquitto_guard_connects_total", "result", k[0], "rule", k[1]), "%v", k)
	}
	assert.Equal(t, float64(made), connects(fams), "every CONNECT counted once")
	assert.Equal(t, float64(made), value(fams, "mosquitto_guard_connect_seconds"), "one observation per CONNECT")
	assert.Greater(t, value(fams, "mosquitto_guard_auth_cache_misses_total"), 0.0)
	assert.Greater(t, value(fams, "process_resident_memory_bytes"), 0.0, "the broker's own process metrics")

	// SIGHUP: the broker re-checks the held client (not a CONNECT: neither
	// counted nor timed); the endpoint and its counters stay.
	e.broker.Reload()
	e.logLine("Reloading config")
	time.Sleep(300 * time.Millisecond)
	after := scrape(t, addr)
	assert.Equal(t, float64(made), connects(after), "counters kept across SIGHUP, the re-check not counted")
	assert.Equal(t, float64(made), value(after, "mosquitto_guard_connect_seconds"))
	assert.Equal(t, 1, strings.Count(e.broker.Output(), "mosquitto-guard: metrics on "), "not reopened")
	require.EqualValues(t, accepted, e.connect(as("127.9.0.10", "a10", "alice", "alice-pw")))
	after = scrape(t, addr)
	assert.Equal(t, float64(made+1), connects(after), "a CONNECT after the reload is counted")
	assert.Equal(t, float64(made+1), value(after, "mosquitto_guard_connect_seconds"))
	held.Disconnect()

	// Redis stops: redis_up goes 0 within the health probe's bound (700 ms;
	// waited up to 3 s), and 1 when it is back.
	e.redis.Stop()
	eventually(t, 3*time.Second, func() bool { return value(scrape(t, addr), "mosquitto_guard_redis_up") == 0 }, "redis_up stayed 1")
	e.redis.Restart()
	eventually(t, 3*time.Second, func() bool { return value(scrape(t, addr), "mosquitto_guard_redis_up") == 1 }, "redis_up stayed 0")

	// The broker stops: plugin cleanup closes the endpoint; the port is free.
	e.broker.Stop()
	l, err := net.Listen("tcp", addr)
	require.NoError(t, err, "the metrics port is free once the broker stopped")
	l.Close()
}

// A Redis that hangs (SIGSTOP) keeps the replica's subscription open and
// silent: replica_in_step goes 0 with redis_up, since no change can be
// known to arrive, and 1 again once Redis answers. Before, it stayed 1.
func TestMetricsReplicaInStepFrozenRedis(t *testing.T) {
	addr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	e := newEnv(t, "auth_opt_metrics_addr "+addr)
	e.logLine("mosquitto-guard: metrics on http://" + addr + "/metrics")
	eventually(t, 3*time.Second, func() bool { return value(scrape(t, addr), "mosquitto_guard_replica_in_step") == 1 }, "in step at start")
	require.NoError(t, e.redis.Signal(syscall.SIGSTOP))
	defer e.redis.Signal(syscall.SIGCONT)
	eventually(t, 3*time.Second, func() bool {
		f := scrape(t, addr)
		return value(f, "mosquitto_guard_redis_up") == 0 && value(f, "mosquitto_guard_replica_in_step") == 0
	}, "replica_in_step stayed 1 with Redis frozen")
	require.NoError(t, e.redis.Signal(syscall.SIGCONT))
	eventually(t, 3*time.Second, func() bool { return value(scrape(t, addr), "mosquitto_guard_replica_in_step") == 1 }, "in step again")
}

// A metrics_addr another process listens on stops the broker at start with
// one line naming the option, the value and why.
func TestMetricsPortInUseStopsTheBroker(t *testing.T) {
	testenv.Need(t, "mosquitto", "mosquitto_passwd", "redis-server")
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	e := envWithoutBroker(t)
	out := startExpectFail(t, e.conf("auth_opt_metrics_addr "+busy.Addr().String()))
	line := fmt.Sprintf(`mosquitto-guard: option metrics_addr: bad value "%s": expected a host:port this broker can listen on (address already in use)`, busy.Addr())
	assert.Equal(t, 1, strings.Count(out, line), "one line:\n%s", out)
	assert.Equal(t, 1, strings.Count(out, "mosquitto-guard: option "), "only that line:\n%s", out)
	assert.NotContains(t, out, "mosquitto-guard: ready")
}

// A metrics_addr that is no host:port, or a host this machine does not
// have, stops the broker at start with its line.
func TestMetricsBadAddrStopsTheBroker(t *testing.T) {
	testenv.Need(t, "mosquitto", "mosquitto_passwd", "redis-server")
	e := envWithoutBroker(t)
	for v, want := range map[string]string{
		"localhost":      `option metrics_addr: bad value "localhost": expected host:port to serve Prometheus metrics on, such as 127.0.0.1:9466`,
		"127.0.0.1:0":    `option metrics_addr: bad value "127.0.0.1:0": expected host:port to serve Prometheus metrics on`,
		"192.0.2.1:9466": `option metrics_addr: bad value "192.0.2.1:9466": expected a host:port this broker can listen on (bind: cannot assign requested address)`,
	} {
		out := startExpectFail(t, e.conf("auth_opt_metrics_addr "+v))
		assert.Equal(t, 1, strings.Count(out, "mosquitto-guard: "+want), "%s:\n%s", v, out)
		assert.NotContains(t, out, "mosquitto-guard: ready", v)
	}
}

// per_listener_settings true starts one plugin instance per listener: each
// serves its own metrics_addr and counts its own listener's CONNECTs; two
// given the same address stop the broker with a line saying so.
func TestMetricsPerListener(t *testing.T) {
	e := envWithoutBroker(t)
	port2 := testenv.FreePort(t)
	plugin := func(metricsAddr string) []string {
		return []string{
			"allow_anonymous false",
			"auth_plugin " + pluginPath,
			"auth_opt_redis_addr " + e.redis.Addr,
			"auth_opt_password_file " + e.passwd,
			"auth_opt_metrics_addr " + metricsAddr,
		}
	}
	conf := func(m1, m2 string) string {
		lines := append([]string{"per_listener_settings true", "listener {{PORT}} 127.0.0.1"}, plugin(m1)...)
		lines = append(append(lines, "listener "+strconv.Itoa(port2)+" 127.0.0.1"), plugin(m2)...)
		return strings.Join(lines, "\n") + "\n"
	}

	same := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	out := startExpectFail(t, conf(same, same))
	assert.Equal(t, 1, strings.Count(out, `mosquitto-guard: option metrics_addr: bad value "`+same+`": expected a host:port this broker can listen on (port `),
		"one line for the second instance:\n%s", out)
	assert.Contains(t, out, "already serves the metrics of another instance of this plugin in this broker: with per_listener_settings true each listener's plugin needs its own metrics_addr")

	m1 := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	m2 := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	e.broker = testenv.StartMosquitto(t, conf(m1, m2))
	require.True(t, e.broker.WaitOutput("mosquitto-guard: metrics on http://"+m2, 5*time.Second))
	second := *e
	second.broker = &testenv.Mosquitto{Process: e.broker.Process, Addr: "127.0.0.1:" + strconv.Itoa(port2)}
	require.NoError(t, e.broker.WaitPort(second.broker.Addr, 5*time.Second))
	require.EqualValues(t, accepted, e.connect(as("127.9.1.1", "l1", "alice", "alice-pw")))
	require.EqualValues(t, refused, second.connect(as("127.9.1.2", "l2", "alice", "wrong")))
	require.EqualValues(t, refused, second.connect(as("127.9.1.3", "l3", "zed", "x")))
	f1, f2 := scrape(t, m1), scrape(t, m2)
	assert.Equal(t, 1.0, connects(f1))
	assert.Equal(t, 1.0, value(f1, "mosquitto_guard_connects_total", "result", "allowed", "rule", "password"))
	assert.Equal(t, 1.0, value(f1, "mosquitto_guard_connect_seconds"))
	assert.Equal(t, 2.0, connects(f2))
	assert.Equal(t, 1.0, value(f2, "mosquitto_guard_connects_total", "result", "refused", "rule", "bad-password"))
	assert.Equal(t, 2.0, value(f2, "mosquitto_guard_connect_seconds"))
}

// A broker given one CPU (taskset) runs the plugin's Go with GOMAXPROCS 2,
// so that Go's sysmon leaves the broker thread its P between callbacks;
// the operator's GOMAXPROCS wins. Read from the runtime's own metric.
func TestGoMaxProcsOnOneCPU(t *testing.T) {
	testenv.Need(t, "taskset", "mosquitto", "redis-server")
	r := testenv.StartRedis(t)
	dir := t.TempDir()
	pw := testenv.WriteFile(t, dir, "passwd", "")
	for _, c := range []struct {
		env  []string
		want float64
	}{{nil, 2}, {[]string{"GOMAXPROCS=1"}, 1}} {
		port, maddr := testenv.FreePort(t), "127.0.0.1:"+strconv.Itoa(testenv.FreePort(t))
		conf := testenv.WriteFile(t, dir, "gmp.conf", fmt.Sprintf("listener %d 127.0.0.1\nuser root\nallow_anonymous false\n"+
			"auth_plugin %s\nauth_opt_redis_addr %s\nauth_opt_password_file %s\nauth_opt_metrics_addr %s\n",
			port, pluginPath, r.Addr, pw, maddr))
		args := append(append([]string{"-c", "0", "env"}, c.env...), "mosquitto", "-c", conf)
		p := testenv.StartProcess(t, dir, "taskset", args...)
		require.NoError(t, p.WaitPort(maddr, 10*time.Second), p.Output())
		assert.Equal(t, c.want, value(scrape(t, maddr), "go_sched_gomaxprocs_threads"), "env %v", c.env)
		p.Stop()
	}
}

// The plugin leaves Go's collector as the broker's environment sets it:
// Go's default GOGC 100 without one, GOGC=50 (README Install: a fifth less
// RSS per live connection, for more collections on the broker's core) or a
// GOMEMLIMIT when the operator sets them. Read from the runtime's own
// metrics.
func TestGOGCDefault(t *testing.T) {
	testenv.Need(t, "mosquitto", "redis-server")
	r := testenv.StartRedis(t)
	dir := t.TempDir()
	pw := testenv.WriteFile(t, dir, "passwd", "")
	for _, c := range []struct {
		env   []string
		gogc  float64
		limit float64 // go_gc_gomemlimit_bytes; 0: Go's default (no limit)
	}{
		{nil, 100, 0},
		{[]string{"GOGC=50"}, 50, 0},
		{[]string{"GOGC=25"}, 25, 0},
		{[]string{"GOMEMLIMIT=64MiB"}, 100, 64 << 20},
	} {
		port, maddr := testenv.FreePort(t), "127.0.0.1:"+strconv.Itoa(testenv.FreePort(t))
		conf := testenv.WriteFile(t, dir, "gogc.conf", fmt.Sprintf("listener %d 127.0.0.1\nuser root\nallow_anonymous false\n"+
			"auth_plugin %s\nauth_opt_redis_addr %s\nauth_opt_password_file %s\nauth_opt_metrics_addr %s\n",
			port, pluginPath, r.Addr, pw, maddr))
		args := append(append([]string{}, c.env...), "mosquitto", "-c", conf)
		p := testenv.StartProcess(t, dir, "env", args...)
		require.NoError(t, p.WaitPort(maddr, 10*time.Second), p.Output())
		m := scrape(t, maddr)
		assert.Equal(t, c.gogc, value(m, "go_gc_gogc_percent"), "env %v", c.env)
		if c.limit > 0 {
			assert.Equal(t, c.limit, value(m, "go_gc_gomemlimit_bytes"), "env %v", c.env)
		} else {
			assert.Greater(t, value(m, "go_gc_gomemlimit_bytes"), float64(1<<62), "env %v: no limit", c.env)
		}
		p.Stop()
	}
}
