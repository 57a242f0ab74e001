package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/ratelimit"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// explained is the part of guardctl explain --json the tests read.
type explained struct {
	Limits struct {
		FailLimit int               `json:"fail_limit"`
		From      map[string]string `json:"from"`
	} `json:"limits"`
	Entries []struct {
		Key, Role, Origin, Reason string
		List                      string `json:"list"`
		SetMs                     *int64 `json:"set_ms"`
		TTLMs                     *int64 `json:"ttl_ms"`
		LiftedBy                  string `json:"lifted_by"`
	} `json:"entries"`
	Verdict struct {
		Result, Line string
		Block        *string
	} `json:"verdict"`
	Failures struct {
		ExemptBy *string `json:"exempt_by"`
		Keys     []struct {
			Scope, Value, Counter string
			Counted, Allowed      int
			BanAt                 int     `json:"ban_at"`
			BannedBy              *string `json:"banned_by"`
			BanLiftedBy           *string `json:"ban_lifted_by"`
			Offences              int
			NextBanMs             int64  `json:"next_ban_ms"`
			FullInMs              int64  `json:"full_in_ms"`
			OffencesForgetMs      *int64 `json:"offences_forget_ms"`
		} `json:"keys"`
	} `json:"failures"`
	Throttle *struct {
		Throttled bool
		Applies   bool
		Ignored   string
		Origin    string
		SetMs     *int64 `json:"set_ms"`
		TTLMs     *int64 `json:"ttl_ms"`
		Counter   *struct {
			Counted, Allowed int
			ThrottleAt       int `json:"throttle_at"`
		}
	} `json:"throttle"`
	ClientID *struct {
		Live []struct {
			Broker, Principal, IP string
			LeaseRuns             bool `json:"lease_runs"`
		}
		Seen []struct {
			Principal, IP string
		}
		Findings []struct {
			Kind       string
			Principals []string
		}
	} `json:"clientid_state"`
}

// guardctlRun runs the built guardctl with args (and env, "NAME=value");
// it returns stdout and fails the test on a non-zero exit.
func guardctlRun(t *testing.T, bin string, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "guardctl %q: %s", args, stderr.String())
	return string(out)
}

func explainJSON(t *testing.T, bin string, env []string, args ...string) explained {
	t.Helper()
	out := guardctlRun(t, bin, env, append([]string{"explain", "--json"}, args...)...)
	var x explained
	require.NoError(t, json.Unmarshal([]byte(out), &x), out)
	return x
}

// verdictLine returns the Verdict line of explain's text output.
func verdictLine(t *testing.T, out string) string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, "Verdict: "); ok {
			return v
		}
	}
	t.Fatalf("no verdict in:\n%s", out)
	return ""
}

// snapshot is every key's value (DUMP) and absolute expiry (PEXPIRETIME):
// what a write, or a rewritten expiry, would change.
func snapshot(t *testing.T, rdb *redis.Client) map[string]string {
	t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	it := rdb.Scan(ctx, 0, "*", 1000).Iterator()
	for it.Next(ctx) {
		k := it.Val()
		dump, err := rdb.Dump(ctx, k).Result()
		require.NoError(t, err)
		exp, err := rdb.Do(ctx, "PEXPIRETIME", k).Int64()
		require.NoError(t, err)
		out[k] = fmt.Sprintf("%x@%d", dump, exp)
	}
	require.NoError(t, it.Err())
	return out
}

// Part 1, the entries and the verdict, with nothing but Redis: every range
// containing the IP, the narrowest deciding; refused by an operator and by
// an automatic ban; accepted with no entry; proof lifting an IP ban and a
// claim not lifting it; IPv6 and IPv4-mapped addresses; a certificate by
// its PEM file. Every run is as a Redis user that may only read, and every
// key's value and expiry are the same after as before.
func TestExplainEntriesEndToEnd(t *testing.T) {
	bin := buildGuardctl(t)
	r := startRedis(t)
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })
	ca := testenv.NewCA(t)
	dev := ca.Client(t, "dev-17")
	autoAt := time.Now().UTC().Format(time.RFC3339)
	autoReason := "auto: over 5 failed authentications (5 allowed, refilling 1 per 1m0s) (offence 1, 10m0s) at " + autoAt
	for _, kv := range []struct {
		key, value string
		ttl        time.Duration
	}{
		{"guard:block:cidr:203.0.0.0/8", "wide", 0},
		{"guard:block:cidr:203.0.0.0/16", "narrower", 0},
		{"guard:block:cidr:203.0.113.0/24", "abuse report 4711", 6*24*time.Hour + 3*time.Hour + 10*time.Minute},
		{"guard:block:cidr:203.0.114.0/24", "does not contain the IP", 0},
		{"guard:block:ip:198.51.100.9", autoReason, 10 * time.Minute},
		{"guard:allow:clientid:plant-gw", "plant gateway", 0},
		{"guard:block:clientid:plant-gw", "lifted by the claim", 0},
		{"guard:allow:ip:198.51.100.20", "gateway address", 0},
		{"guard:block:ip:198.51.100.20", "old ban", time.Hour},
		{"guard:block:cidr:198.51.100.0/24", "range ban", 0},
		{"guard:block:cidr:2001:db8::/32", "v6 wide", 0},
		{"guard:block:cidr:2001:db8:1::/48", "v6 narrow", 0},
		{"guard:block:cert:" + dev.ID, "device stolen", 0},
	} {
		require.NoError(t, rdb.Set(ctx, kv.key, kv.value, kv.ttl).Err())
	}
	// Counters, connections and findings too, so that every read runs.
	kb := keys.Builder{Prefix: "guard:"}
	_, err := ratelimit.New(rdb, kb, ratelimit.Policy{}).Fail(ctx, keys.IP, "192.0.2.55")
	require.NoError(t, err)
	st := store.New(store.Options{Addrs: []string{r.Addr}, Timeout: time.Second}, kb)
	t.Cleanup(func() { st.Close() })
	c := store.Conn{ID: "i-1", Instance: "i", Broker: "eu-1", Principal: "carol", IP: "192.0.2.55", ConnectedMs: time.Now().UnixMilli()}
	_, err = st.WriteConns(ctx, []store.ConnWrite{{ClientID: "nobody", Instance: "i", Live: &c, Seen: &c}}, time.Hour)
	require.NoError(t, err)
	_, err = st.RenewLease(ctx, "i", time.Hour)
	require.NoError(t, err)

	// A key of another type than string: read with TYPE, under the same user.
	require.NoError(t, rdb.SAdd(ctx, "guard:block:cidr:203.0.113.0/25", "oops").Err())

	// The ACL guardctl explain -h and the README name: reads of the
	// prefix's keys and redis_rate's, TIME and PING; nothing else.
	require.Equal(t, "OK", r.CLI("ACL", "SETUSER", "reader", "on", ">reader-pw", "~guard:*", "~rate:guard:*", "resetchannels",
		"-@all", "+@read", "+time", "+ping"))
	require.Contains(t, r.CLI("--user", "reader", "--pass", "reader-pw", "--no-auth-warning", "SET", "guard:x", "1"), "NOPERM",
		"the user cannot write")
	require.Equal(t, "OK", r.CLI("ACL", "LOG", "RESET"))
	t.Cleanup(func() {
		assert.Equal(t, "", r.CLI("ACL", "LOG"), "explain ran no command and read no key the ACL denies")
	})
	before := snapshot(t, rdb)
	env := []string{"GUARD_REDIS_PASSWORD=reader-pw"}
	conn := []string{"--redis-addr", r.Addr, "--redis-username", "reader"}
	explain := func(args ...string) string {
		return guardctlRun(t, bin, env, append(append([]string{"explain"}, conn...), args...)...)
	}

	out := explain("--ip", "203.0.113.7")
	assert.Equal(t, "refused by guard:block:cidr:203.0.113.0/24 (operator, 6d 3h left: abuse report 4711)", verdictLine(t, out))
	assert.Regexp(t, `(?m)^  decides    guard:block:cidr:203\.0\.113\.0/24\s+operator\s+unknown\s+6d 3h\s+"abuse report 4711"$`, out)
	assert.Regexp(t, `(?m)^  outranked  guard:block:cidr:203\.0\.0\.0/16\s+operator\s+unknown\s+permanent\s+"narrower"$`, out)
	assert.Regexp(t, `(?m)^  outranked  guard:block:cidr:203\.0\.0\.0/8 `, out)
	assert.NotContains(t, out, "203.0.114.0", "a range not containing the IP")
	assert.Contains(t, out, "\nIgnored, of another type than string:\n  guard:block:cidr:203.0.113.0/25: bans nothing: holds a set, not a string")
	assert.Equal(t, verdictLine(t, out), verdictLine(t, explain("--ip", "::ffff:203.0.113.7")), "IPv4-mapped counts as IPv4")

	x := explainJSON(t, bin, env, append(conn, "--ip", "203.0.113.7")...)
	require.Len(t, x.Entries, 3)
	assert.Equal(t, []string{"decides", "outranked", "outranked"}, []string{x.Entries[0].Role, x.Entries[1].Role, x.Entries[2].Role})
	assert.Equal(t, "refused", x.Verdict.Result)
	assert.Nil(t, x.Entries[0].SetMs, "an operator's entry says no time")
	assert.InDelta(t, (6*24*time.Hour + 3*time.Hour + 10*time.Minute).Milliseconds(), *x.Entries[0].TTLMs, 5000)
	assert.Nil(t, x.Entries[1].TTLMs, "permanent")

	out = explain("--ip", "198.51.100.9", "--clientid", "sensor-1")
	assert.Regexp(t, `^refused by guard:block:ip:198\.51\.100\.9 \(auto, (10m|9m 5\ds) left: `+regexp.QuoteMeta(autoReason)+`\)$`, verdictLine(t, out))
	assert.Contains(t, out, "auto      "+autoAt, "the time an automatic ban carries")

	out = explain("--ip", "192.0.2.55", "--clientid", "nobody", "--username", "carol")
	assert.Equal(t, "accepted: no entry", verdictLine(t, out))
	assert.Contains(t, out, "Entries: none matches")
	assert.Contains(t, out, "ip 192.0.2.55: 1 counted, 4 more allowed: the 5th failure from now bans (refilling 1 per 1m, full again in ")
	assert.Regexp(t, `live: 1 connection\n\s+BROKER\s+PRINCIPAL\s+IP\s+SINCE\s*\n\s+eu-1\s+"carol"\s+192\.0\.2\.55\s+`, out)

	out = explain("--ip", "198.51.100.20", "--clientid", "plant-gw")
	assert.Equal(t, "accepted: guard:allow:ip:198.51.100.20 lifts guard:block:clientid:plant-gw, guard:block:ip:198.51.100.20, "+
		"guard:block:cidr:198.51.100.0/24", verdictLine(t, out), "proof lifts every ban; preferred to the claim")
	assert.Contains(t, out, "not counted for this client: guard:allow:ip:198.51.100.20 exempts it")
	assert.Regexp(t, `(?m)^  unused\s+guard:allow:clientid:plant-gw `, out)

	out = explain("--ip", "198.51.100.9", "--clientid", "plant-gw")
	assert.Regexp(t, `^refused by guard:block:ip:198\.51\.100\.9 \(auto, .*\); guard:allow:clientid:plant-gw does not lift it `+
		`\(an allow entry on a claim lifts only clientid and username bans\)$`, verdictLine(t, out), "a claim does not lift an IP ban")
	assert.Regexp(t, `(?m)^  lifted by guard:allow:clientid:plant-gw\s+guard:block:clientid:plant-gw `, out, "but lifts the client ID's")

	out = explain("--ip", "2001:db8:1::5")
	assert.Equal(t, "refused by guard:block:cidr:2001:db8:1::/48 (operator, permanent: v6 narrow)", verdictLine(t, out))
	assert.Contains(t, out, "guard:block:cidr:2001:db8::/32", "the wider IPv6 range is listed")
	assert.Contains(t, out, "cidr 2001:db8:1::/64: 0 counted", "IPv6 failures are counted by their /64")

	out = explain("--cert", dev.CertPath)
	assert.Equal(t, "refused by guard:block:cert:"+dev.ID+" (operator, permanent: device stolen)", verdictLine(t, out))
	colons := strings.ToUpper(strings.Join(regexp.MustCompile("..").FindAllString(dev.ID, -1), ":"))
	assert.Equal(t, verdictLine(t, out), verdictLine(t, explain("--cert", colons)), "the ID in openssl's form")

	assert.Equal(t, before, snapshot(t, rdb), "no key, value or expiry changed")
}

// Part 2, failures, with the plugin's own counts from real failed
// CONNECTs: after each failure explain says how many more pass before the
// one that bans, and exactly that many more pass and the next bans; then
// the offences and the next ban's length, checked by a second ban. The
// limits come from the broker's mosquitto.conf.
func TestExplainFailuresEndToEnd(t *testing.T) {
	bin := buildGuardctl(t)
	e := newEnv(t, "auth_opt_fail_limit 3", "auth_opt_ban_time 30s", "auth_opt_ban_max 1h")
	conf := []string{"--config", e.broker.ConfPath}
	const ip = "127.0.40.1"
	n := 0
	fail := func(times int) {
		for i := 0; i < times; i++ {
			n++ // a new client ID and unknown username each time: only the IP's count adds up
			require.EqualValues(t, refused, e.connect(as(ip, fmt.Sprint("guess-", n), fmt.Sprint("nobody-", n), "guess")))
		}
	}
	// state waits until the plugin's background count in Redis has reached counted.
	state := func(counted int) explained {
		var x explained
		eventually(t, 5*time.Second, func() bool {
			x = explainJSON(t, bin, nil, append(conf, "--ip", ip)...)
			return len(x.Failures.Keys) == 1 && x.Failures.Keys[0].Counted == counted
		}, "count %d never reached: %+v", counted, x.Failures)
		return x
	}

	x := explainJSON(t, bin, nil, append(conf, "--ip", ip)...)
	assert.Equal(t, 3, x.Limits.FailLimit)
	assert.Equal(t, e.broker.ConfPath+":6", x.Limits.From["fail_limit"], "named by its line in mosquitto.conf")
	assert.Equal(t, "default", x.Limits.From["fail_window"])

	fail(1)
	x = state(1)
	k := x.Failures.Keys[0]
	assert.Equal(t, "rate:guard:fail:ip:"+ip, k.Counter)
	assert.Equal(t, 2, k.Allowed)
	assert.Equal(t, 3, k.BanAt)
	out := guardctlRun(t, bin, nil, append([]string{"explain", "--ip", ip}, conf...)...)
	assert.Regexp(t, `ip 127\.0\.40\.1: 1 counted, 2 more allowed: the 3rd failure from now bans \(refilling 1 per 1m, full again in (1m|5\ds)\)`, out)
	assert.Contains(t, out, "offences 0; the next automatic ban: 30s")

	fail(k.BanAt - 1)
	x = state(3)
	assert.Equal(t, 0, x.Failures.Keys[0].Allowed)
	assert.Equal(t, "accepted: no entry", x.Verdict.Line, "no ban yet")
	fail(1)
	eventually(t, 5*time.Second, func() bool {
		x = explainJSON(t, bin, nil, append(conf, "--ip", ip)...)
		return x.Verdict.Result == "refused"
	}, "the %s failure from the first explain did not ban", "3rd")
	assert.Regexp(t, `^refused by guard:block:ip:127\.0\.40\.1 \(auto, (30|29)s left: auto: over 3 failed authentications `+
		`\(3 allowed, refilling 1 per 1m0s\) \(offence 1, 30s\) \(ban [0-9a-f]{16}\) at \S+Z\)$`, x.Verdict.Line)
	require.Len(t, x.Entries, 1)
	require.NotNil(t, x.Entries[0].SetMs)
	assert.InDelta(t, time.Now().UnixMilli(), *x.Entries[0].SetMs, 3000)
	k = x.Failures.Keys[0]
	assert.Equal(t, 1, k.Offences)
	assert.Equal(t, time.Minute.Milliseconds(), k.NextBanMs, "ban_time doubled")
	require.NotNil(t, k.BannedBy)
	require.NotNil(t, k.OffencesForgetMs)
	assert.InDelta(t, (30*time.Second + time.Hour).Milliseconds(), *k.OffencesForgetMs, 3000, "offences kept ban + ban_max")
	out = guardctlRun(t, bin, nil, append([]string{"explain", "--ip", ip}, conf...)...)
	assert.Contains(t, out, "    banned now by guard:block:ip:127.0.40.1 (auto, ")
	assert.Regexp(t, `offences 1 \(forgotten in 1h( 1m)?\); the next automatic ban: 1m\n`, out)

	// Lifting the ban resets the count; the next ban is as long as explain said.
	guardctlRun(t, bin, nil, append([]string{"unban", "ip", ip}, conf...)...)
	x = state(0)
	k = x.Failures.Keys[0]
	assert.Equal(t, "accepted: no entry", x.Verdict.Line)
	assert.Equal(t, 3, k.Allowed)
	assert.Equal(t, 1, k.Offences)
	fail(k.Allowed)
	x = state(3)
	assert.Equal(t, "accepted", x.Verdict.Result)
	fail(1)
	eventually(t, 5*time.Second, func() bool {
		x = explainJSON(t, bin, nil, append(conf, "--ip", ip)...)
		return x.Verdict.Result == "refused"
	}, "no second ban")
	require.NotNil(t, x.Entries[0].TTLMs)
	assert.InDelta(t, time.Minute.Milliseconds(), *x.Entries[0].TTLMs, 3000, "the next ban explain announced")
	assert.Equal(t, 2, x.Failures.Keys[0].Offences)
	assert.Equal(t, (2 * time.Minute).Milliseconds(), x.Failures.Keys[0].NextBanMs)
}

// Part 3, the username throttle, from real failures of one username from
// many addresses: explain says how many more failures pass before the one
// that throttles, and then that it is throttled.
func TestExplainThrottleEndToEnd(t *testing.T) {
	bin := buildGuardctl(t)
	e := newEnv(t, "auth_opt_username_fail_limit 3")
	conf := []string{"--config", e.broker.ConfPath, "--username", "alice"}
	n := 0
	fail := func(times int) {
		for i := 0; i < times; i++ {
			n++ // a new address each time: no address comes near its own limit
			require.EqualValues(t, refused, e.connect(as(fmt.Sprint("127.0.42.", n), "phone", "alice", "guess")))
		}
	}
	state := func(counted int) explained {
		var x explained
		eventually(t, 5*time.Second, func() bool {
			x = explainJSON(t, bin, nil, conf...)
			return x.Throttle != nil && x.Throttle.Counter != nil && x.Throttle.Counter.Counted == counted
		}, "username count %d never reached", counted)
		return x
	}
	fail(1)
	x := state(1)
	assert.False(t, x.Throttle.Throttled)
	assert.Equal(t, 2, x.Throttle.Counter.Allowed)
	assert.Equal(t, 3, x.Throttle.Counter.ThrottleAt)
	out := guardctlRun(t, bin, nil, append([]string{"explain"}, conf...)...)
	assert.Regexp(t, `Username "alice":\n  not throttled\n  failures from any source: 1 counted of 3, `+
		`2 more allowed: the 3rd failure from now throttles it \(refilling 1 per 1m, full again in (1m|5\ds)\)\n`, out)

	fail(x.Throttle.Counter.ThrottleAt - 1)
	x = state(3)
	assert.False(t, x.Throttle.Throttled, "not yet")
	fail(1)
	eventually(t, 5*time.Second, func() bool {
		x = explainJSON(t, bin, nil, conf...)
		return x.Throttle.Throttled
	}, "the failure explain named did not throttle")
	assert.Equal(t, "auto", x.Throttle.Origin)
	require.NotNil(t, x.Throttle.SetMs)
	assert.InDelta(t, time.Now().UnixMilli(), *x.Throttle.SetMs, 3000)
	require.NotNil(t, x.Throttle.TTLMs)
	assert.Positive(t, *x.Throttle.TTLMs)
	assert.Equal(t, "accepted: no entry", x.Verdict.Line, "a throttle is no ban")
	out = guardctlRun(t, bin, nil, append([]string{"explain"}, conf...)...)
	assert.Contains(t, out, "  but the username is throttled: unless this source authenticated as it within conflict_window, it is refused unchecked")
	assert.Regexp(t, `throttled by guard:throttle:username:alice \(auto, \S+( \S+)? left, set \S+Z\)`, out)
}

// Part 4, a client ID's conflict state, made by real connections through
// the broker: two principals using one client ID, the second taking it over.
func TestExplainConflictEndToEnd(t *testing.T) {
	bin := buildGuardctl(t)
	e := newEnv(t, "auth_opt_broker_name eu-1")
	conf := []string{"--config", e.broker.ConfPath, "--clientid", "shared-7"}
	aliceConn, code := e.dial(as("127.0.43.1", "shared-7", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	eventually(t, 5*time.Second, func() bool { return e.redis.CLI("HLEN", "guard:seen:shared-7") == "1" }, "alice not recorded")
	bobConn, code := e.dial(as("127.0.43.2", "shared-7", "bob", "bob-pw"))
	require.EqualValues(t, accepted, code)
	e.waitFindings(1)
	_, _ = aliceConn, bobConn

	var x explained
	eventually(t, 5*time.Second, func() bool {
		x = explainJSON(t, bin, nil, conf...)
		cs := x.ClientID
		return cs != nil && len(cs.Live) == 1 && cs.Live[0].Principal == "bob" && len(cs.Seen) == 2 && len(cs.Findings) == 1
	}, "conflict state not as made: %+v", x.ClientID)
	live := x.ClientID.Live[0]
	assert.Equal(t, "eu-1", live.Broker)
	assert.Equal(t, "127.0.43.2", live.IP)
	assert.True(t, live.LeaseRuns)
	assert.Equal(t, []string{"bob", "alice"}, []string{x.ClientID.Seen[0].Principal, x.ClientID.Seen[1].Principal}, "newest first")
	assert.Equal(t, "cross-principal", x.ClientID.Findings[0].Kind)
	assert.Equal(t, []string{"alice", "bob"}, x.ClientID.Findings[0].Principals)

	out := guardctlRun(t, bin, nil, append([]string{"explain"}, conf...)...)
	assert.Regexp(t, `Client ID "shared-7":\n  live: 1 connection\n\s+BROKER\s+PRINCIPAL\s+IP\s+SINCE\s*\n\s+eu-1\s+"bob"\s+127\.0\.43\.2\s+\S+Z \(\S+ ago\)`, out)
	assert.Regexp(t, `principals within conflict_window \(31d\): 2\n.*\n\s+"bob"\s+127\.0\.43\.2\s+eu-1\s+\S+Z\s+-\n\s+"alice"\s+127\.0\.43\.1\s+eu-1\s+\S+Z\s+\S+Z\n`, out)
	assert.Regexp(t, `findings: 1 \(all 1 findings read\)\n.*\n\s+\S+Z\s+cross-principal\s+flagged\s+alice,bob\s+1\s`, out)
}
