package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// listDoc is the document of guardctl list --json.
type listDoc struct {
	List    string         `json:"list"`
	Prefix  string         `json:"prefix"`
	Scope   string         `json:"scope"`
	Total   int            `json:"total"`
	More    int            `json:"more"`
	Entries []listDocEntry `json:"entries"`
}

type listDocEntry struct {
	Key         string `json:"key"`
	Scope       string `json:"scope"`
	Value       string `json:"value"`
	ValueBase64 string `json:"value_base64"`
	Origin      string `json:"origin"`
	Reason      string `json:"reason"`
	ExpiresMs   *int64 `json:"expires_ms"`
}

// exactValue returns the value of a listed entry, byte for byte.
func exactValue(t *testing.T, e listDocEntry) string {
	t.Helper()
	if e.ValueBase64 == "" {
		return e.Value
	}
	b, err := base64.StdEncoding.DecodeString(e.ValueBase64)
	require.NoError(t, err)
	return string(b)
}

// ends is when the test bans with an expiry end: a whole second, so the
// table shows it exactly.
var ends = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// globPrefix holds every glob character: SCAN must match it literally.
const globPrefix = `t*[1]?\:`

// listFixture stores bans, allow entries and keys guardctl list must skip.
func listFixture(t *testing.T, c *redis.Client) {
	t.Helper()
	ctx := context.Background()
	set := func(key, value string, at time.Time) {
		require.NoError(t, c.Set(ctx, key, value, 0).Err())
		if !at.IsZero() {
			require.NoError(t, c.PExpireAt(ctx, key, at).Err())
		}
	}
	p := globPrefix
	set(p+"block:ip:10.0.0.2", "x", time.Time{})
	set(p+"block:ip:9.0.0.1", "auto: 6 failed authentications within 1m0s (offence 1, 10m0s) at 2026-11-21T17:31:10Z", ends)
	set(p+"block:ip:2001:db8::1", "scanner", ends.Add(time.Hour))
	set(p+"block:cidr:198.51.100.0/24", "abuse report 4711", time.Time{})
	set(p+"block:cidr:10.0.0.0/8", "auto: range", time.Time{})
	set(p+"block:cidr:10.1.2.3/8", "typo", time.Time{}) // never matches
	set(p+"block:clientid:dev 1\n", "stolen\tlaptop", ends)
	set(p+"block:clientid:"+strings.Repeat("c", 100), "long", time.Time{})
	set(p+"block:username:alice", strings.Repeat("r", 100), time.Time{})
	set(p+"allow:clientid:plant-gateway", "gateway", time.Time{})
	set(p+"allow:ip:192.0.2.50", "load test", ends)
	// Keys the list skips.
	set(p+"block:host:x", "unknown scope", time.Time{})
	require.NoError(t, c.HSet(ctx, p+"block:ip:1.1.1.1", "a", "b").Err())
	set("tAB1Z\\:block:ip:6.6.6.6", "the unescaped pattern would match this", time.Time{})
	set("t*[1]?\\:blocked:ip:6.6.6.7", "another kind", time.Time{})
	set("guard:block:ip:6.6.6.8", "another prefix", time.Time{})
}

const wantListTable = `9 bans
SCOPE     VALUE                                                         ORIGIN    EXPIRES               REASON
cidr      10.0.0.0/8                                                    auto      never                 "auto: range"
cidr      10.1.2.3/8                                                    operator  never                 "typo"
cidr      198.51.100.0/24                                               operator  never                 "abuse report 4711"
clientid  ccccccccccccccccccccccccccccccccccccccccccccccccccccccccc...  operator  never                 "long"
clientid  "dev 1\n"                                                     operator  2030-01-02T03:04:05Z  "stolen\tlaptop"
ip        9.0.0.1                                                       auto      2030-01-02T03:04:05Z  "auto: 6 failed authentications within 1m0s (offence 1, "...
ip        10.0.0.2                                                      operator  never                 "x"
ip        2001:db8::1                                                   operator  2030-01-02T04:04:05Z  "scanner"
username  alice                                                         operator  never                 "rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr"...
`

func TestListTable(t *testing.T) {
	t.Setenv(passwordEnv, "")
	r := testenv.StartRedis(t)
	c := client(t, r.Addr)
	listFixture(t, c)

	code, out, errOut := ctl(t, r.Addr, globPrefix, "list")
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, wantListTable, out)
	assert.Equal(t, `guardctl: "t*[1]?\\:block:host:x" is no list key (unknown scope), which the plugin ignores; not shown
guardctl: "t*[1]?\\:block:cidr:10.1.2.3/8" can never match: expected the canonical network 10.0.0.0/8
`, errOut)

	code, out, errOut = ctl(t, r.Addr, globPrefix, "list", "--allow")
	require.Equal(t, exitOK, code, errOut)
	assert.Empty(t, errOut)
	assert.Equal(t, `2 allowlist entries
SCOPE     VALUE          ORIGIN    EXPIRES               REASON
clientid  plant-gateway  operator  never                 "gateway"
ip        192.0.2.50     operator  2030-01-02T03:04:05Z  "load test"
`, out)

	code, out, errOut = ctl(t, r.Addr, globPrefix, "list", "--scope", "ip")
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, `3 bans with scope ip
SCOPE  VALUE        ORIGIN    EXPIRES               REASON
ip     9.0.0.1      auto      2030-01-02T03:04:05Z  "auto: 6 failed authentications within 1m0s (offence 1, "...
ip     10.0.0.2     operator  never                 "x"
ip     2001:db8::1  operator  2030-01-02T04:04:05Z  "scanner"
`, out)
	assert.Empty(t, errOut, "keys holding no string are left out")
	assert.NotContains(t, errOut, "unknown scope", "the pattern names the scope")

	code, out, _ = ctl(t, r.Addr, globPrefix, "list", "--allow", "--scope", "username")
	require.Equal(t, exitOK, code)
	assert.Equal(t, "no allowlist entries with scope username\n", out)

	code, out, errOut = ctl(t, r.Addr, "empty:", "list")
	require.Equal(t, exitOK, code)
	assert.Equal(t, "no bans\n", out)
	assert.Empty(t, errOut)

	code, out, _ = ctl(t, r.Addr, "", "list")
	require.Equal(t, exitOK, code)
	assert.Equal(t, "1 ban\nSCOPE  VALUE    ORIGIN    EXPIRES  REASON\nip     6.6.6.8  operator  never    \"another prefix\"\n", out, "the default prefix guard:")
}

func TestListJSON(t *testing.T) {
	t.Setenv(passwordEnv, "")
	r := testenv.StartRedis(t)
	c := client(t, r.Addr)
	listFixture(t, c)
	require.NoError(t, c.Set(context.Background(), globPrefix+"block:username:\xffbad", "x", 0).Err())

	code, out, errOut := ctl(t, r.Addr, globPrefix, "list", "--json", "--scope", "clientid")
	require.Equal(t, exitOK, code, errOut)
	ms := ends.UnixMilli()
	assert.JSONEq(t, `{
		"list": "block", "prefix": "t*[1]?\\:", "scope": "clientid", "total": 2, "more": 0,
		"entries": [
			{"key": "t*[1]?\\:block:clientid:`+strings.Repeat("c", 100)+`", "scope": "clientid", "value": "`+strings.Repeat("c", 100)+`",
			 "origin": "operator", "reason": "long", "expires_ms": null},
			{"key": "t*[1]?\\:block:clientid:dev 1\n", "scope": "clientid", "value": "dev 1\n",
			 "origin": "operator", "reason": "stolen\tlaptop", "expires_ms": `+strconv.FormatInt(ms, 10)+`}
		]}`, fixExpiry(t, out, ms))

	code, out, _ = ctl(t, r.Addr, globPrefix, "list", "--json")
	require.Equal(t, exitOK, code)
	var doc listDoc
	require.NoError(t, json.Unmarshal([]byte(out), &doc))
	assert.Equal(t, "block", doc.List)
	assert.Empty(t, doc.Scope)
	assert.Equal(t, 10, doc.Total)
	assert.Zero(t, doc.More)
	var got []string
	for _, e := range doc.Entries {
		got = append(got, e.Scope+" "+exactValue(t, e)+" "+e.Origin)
		assert.Equal(t, globPrefix+"block:"+e.Scope+":"+e.Value, e.Key)
	}
	assert.Equal(t, []string{
		"cidr 10.0.0.0/8 auto", "cidr 10.1.2.3/8 operator", "cidr 198.51.100.0/24 operator",
		"clientid " + strings.Repeat("c", 100) + " operator", "clientid dev 1\n operator",
		"ip 9.0.0.1 auto", "ip 10.0.0.2 operator", "ip 2001:db8::1 operator",
		"username alice operator", "username \xffbad operator",
	}, got)
	last := doc.Entries[9]
	assert.Equal(t, "\ufffdbad", last.Value, "JSON strings are UTF-8")
	assert.Equal(t, base64.StdEncoding.EncodeToString([]byte("\xffbad")), last.ValueBase64, "the exact bytes")
	assert.Empty(t, doc.Entries[8].ValueBase64, "only for values that are not UTF-8")
	assert.Equal(t, strings.Repeat("r", 100), doc.Entries[8].Reason, "JSON reasons are not cut")

	code, out, _ = ctl(t, r.Addr, "none:", "list", "--json", "--allow")
	require.Equal(t, exitOK, code)
	assert.JSONEq(t, `{"list": "allow", "prefix": "none:", "total": 0, "more": 0, "entries": []}`, out)
}

// fixExpiry checks the expiry of the second entry of a list --json output
// is within a second of ms (it is computed from PTTL and the local clock)
// and returns the output with exactly ms there.
func fixExpiry(t *testing.T, out string, ms int64) string {
	t.Helper()
	var doc listDoc
	require.NoError(t, json.Unmarshal([]byte(out), &doc))
	require.Len(t, doc.Entries, 2)
	require.NotNil(t, doc.Entries[1].ExpiresMs)
	got := *doc.Entries[1].ExpiresMs
	assert.InDelta(t, ms, got, 1000)
	return strings.Replace(out, `"expires_ms": `+strconv.FormatInt(got, 10), `"expires_ms": `+strconv.FormatInt(ms, 10), 1)
}

func TestListLimit(t *testing.T) {
	t.Setenv(passwordEnv, "")
	r := testenv.StartRedis(t)
	c := client(t, r.Addr)
	listFixture(t, c)

	code, out, errOut := ctl(t, r.Addr, globPrefix, "list", "--limit", "2")
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, `9 bans, the first 2 shown; 7 more not shown (--limit)
SCOPE  VALUE       ORIGIN    EXPIRES  REASON
cidr   10.0.0.0/8  auto      never    "auto: range"
cidr   10.1.2.3/8  operator  never    "typo"
`, out)
	assert.Contains(t, errOut, `10.1.2.3/8" can never match`, "warnings for the entries shown")

	code, out, _ = ctl(t, r.Addr, globPrefix, "list", "--limit", "3", "--json", "--scope", "ip")
	require.Equal(t, exitOK, code)
	var doc listDoc
	require.NoError(t, json.Unmarshal([]byte(out), &doc))
	assert.Equal(t, 3, doc.Total)
	assert.Zero(t, doc.More)
	assert.Len(t, doc.Entries, 3)

	code, out, _ = ctl(t, r.Addr, globPrefix, "list", "--limit", "1", "--json", "--scope", "ip")
	require.Equal(t, exitOK, code)
	doc = listDoc{}
	require.NoError(t, json.Unmarshal([]byte(out), &doc))
	assert.Equal(t, 3, doc.Total)
	assert.Equal(t, 2, doc.More)
	require.Len(t, doc.Entries, 1)
	assert.Equal(t, "9.0.0.1", doc.Entries[0].Value)
}

func TestListManyKeys(t *testing.T) {
	t.Setenv(passwordEnv, "")
	r := testenv.StartRedis(t)
	c := client(t, r.Addr)
	ctx := context.Background()
	const n = 5000
	pipe := c.Pipeline()
	for i := range n {
		pipe.Set(ctx, fmt.Sprintf("m:block:clientid:dev-%05d", i), "r", 0)
	}
	_, err := pipe.Exec(ctx)
	require.NoError(t, err)

	code, out, errOut := ctl(t, r.Addr, "m:", "list", "--limit", "3")
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, `5000 bans, the first 3 shown; 4997 more not shown (--limit)
SCOPE     VALUE      ORIGIN    EXPIRES  REASON
clientid  dev-00000  operator  never    "r"
clientid  dev-00001  operator  never    "r"
clientid  dev-00002  operator  never    "r"
`, out)

	code, out, _ = ctl(t, r.Addr, "m:", "list", "--json")
	require.Equal(t, exitOK, code)
	var doc listDoc
	require.NoError(t, json.Unmarshal([]byte(out), &doc))
	assert.Equal(t, n, doc.Total)
	assert.Equal(t, n-defaultLimit, doc.More)
	require.Len(t, doc.Entries, defaultLimit)
	assert.Equal(t, "dev-00999", doc.Entries[defaultLimit-1].Value)
}

// guardctl list names the ip keys the plugin can never match, as it does
// the range keys: with the canonical address expected when there is one.
func TestListReportsNonCanonicalIPKeys(t *testing.T) {
	t.Setenv(passwordEnv, "")
	r := testenv.StartRedis(t)
	c := client(t, r.Addr)
	ctx := context.Background()
	for _, k := range []string{
		"guard:block:ip:0:0:0:0:0:0:0:1", "guard:block:ip:2001:DB8::1", "guard:block:ip:127.000.0.1",
		"guard:block:ip:192.0.2.1", "guard:allow:ip:::ffff:1.2.3.4", "guard:allow:ip:not-an-ip",
	} {
		require.NoError(t, c.Set(ctx, k, "x", 0).Err())
	}

	code, _, errOut := ctl(t, r.Addr, "guard:", "list", "--scope", "ip")
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, `guardctl: guard:block:ip:0:0:0:0:0:0:0:1 can never match: expected the canonical address ::1
guardctl: guard:block:ip:127.000.0.1 can never match: expected an address such as 192.0.2.1 or 2001:db8::1
guardctl: guard:block:ip:2001:DB8::1 can never match: expected the canonical address 2001:db8::1
`, sortLines(errOut))

	code, _, errOut = ctl(t, r.Addr, "guard:", "list", "--allow")
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, `guardctl: guard:allow:ip:::ffff:1.2.3.4 can never match: expected the canonical address 1.2.3.4
guardctl: guard:allow:ip:not-an-ip can never match: expected an address such as 192.0.2.1 or 2001:db8::1
`, sortLines(errOut))
}

// sortLines sorts the lines of s, so a test need not depend on list order.
func sortLines(s string) string {
	lines := strings.SplitAfter(s, "\n")
	slices.Sort(lines)
	return strings.Join(lines, "")
}

// startCluster starts a Redis Cluster of two masters and returns the
// addresses to give guardctl and a client of each master.
func startCluster(t *testing.T) (addrs string, nodes []*redis.Client) {
	t.Helper()
	cl := testenv.StartRedisCluster(t, 2)
	for _, r := range cl.Nodes {
		nodes = append(nodes, client(t, r.Addr))
	}
	return cl.Addrs, nodes
}

func TestCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("forms a Redis Cluster")
	}
	addrs, nodes := startCluster(t)
	ctx := context.Background()
	ps := subscribe(t, nodes[1], "k:changes")
	// An empty --redis-password beats GUARD_REDIS_PASSWORD, which a parallel
	// test cannot t.Setenv.
	kctl := func(args ...string) (int, string, string) {
		t.Helper()
		return ctl(t, addrs, "k:", append([]string{args[0], "--redis-password="}, args[1:]...)...)
	}

	const n = 20
	var want []string
	for i := range n {
		v := fmt.Sprintf("dev-%02d", i)
		code, out, errOut := kctl("ban", "clientid", v, "--for", "1h")
		require.Equal(t, exitOK, code, errOut)
		assert.Contains(t, out, "banned k:block:clientid:"+v+" until ")
		assert.Equal(t, "k:block:clientid:"+v, nextMessage(t, ps), "published across the cluster")
		want = append(want, v)
	}
	for _, c := range nodes {
		size, err := c.DBSize(ctx).Result()
		require.NoError(t, err)
		assert.Positive(t, size, "the keys are spread over both masters")
	}

	code, out, errOut := kctl("list", "--json")
	require.Equal(t, exitOK, code, errOut)
	var doc listDoc
	require.NoError(t, json.Unmarshal([]byte(out), &doc))
	assert.Equal(t, n, doc.Total)
	var got []string
	for _, e := range doc.Entries {
		got = append(got, e.Value)
		require.NotNil(t, e.ExpiresMs)
		assert.InDelta(t, time.Now().Add(time.Hour).UnixMilli(), *e.ExpiresMs, 5000)
	}
	assert.Equal(t, want, got, "every master scanned, in order")

	code, out, _ = kctl("unban", "clientid", "dev-07")
	require.Equal(t, exitOK, code)
	assert.Equal(t, "unbanned k:block:clientid:dev-07\n", out)
	assert.Equal(t, "k:block:clientid:dev-07", nextMessage(t, ps))
	code, out, _ = kctl("list", "--limit", "1")
	require.Equal(t, exitOK, code)
	assert.True(t, strings.HasPrefix(out, "19 bans, the first 1 shown; 18 more not shown (--limit)\n"), out)

	// explain reads keys of many slots (and TIME, and the findings stream)
	// across the masters.
	code, _, errOut = kctl("ban", "cidr", "203.0.113.0/24", "--reason", "range")
	require.Equal(t, exitOK, code, errOut)
	code, out, errOut = kctl("explain", "--clientid", "dev-03", "--username", "u", "--ip", "203.0.113.7")
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "\nVerdict: refused by k:block:clientid:dev-03 (operator, ")
	assert.Regexp(t, `outranked\s+k:block:cidr:203\.0\.113\.0/24\s`, out)
	assert.Contains(t, out, "ip 203.0.113.7: 0 counted")
	assert.Contains(t, out, "findings: none (all 0 findings read)")
}
