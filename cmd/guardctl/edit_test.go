package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// ctl runs guardctl with args (command first) against addr, under prefix
// unless it is empty (then the default prefix applies), in process.
func ctl(t *testing.T, addr, prefix string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	full := []string{args[0], "--redis-addr", addr}
	if prefix != "" {
		full = append(full, "--key-prefix", prefix)
	}
	full = append(full, args[1:]...)
	var out, errb bytes.Buffer
	code = run(full, &out, &errb)
	return code, out.String(), errb.String()
}

// client returns a go-redis client of addr, for checking what guardctl wrote.
func client(t *testing.T, addr string) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true})
	t.Cleanup(func() { c.Close() })
	return c
}

// subscribe subscribes to channel and waits until Redis confirms it.
func subscribe(t *testing.T, c *redis.Client, channel string) *redis.PubSub {
	t.Helper()
	ps := c.Subscribe(context.Background(), channel)
	t.Cleanup(func() { ps.Close() })
	_, err := ps.Receive(context.Background())
	require.NoError(t, err)
	return ps
}

// nextMessage returns the payload of the next message on ps.
func nextMessage(t *testing.T, ps *redis.PubSub) string {
	t.Helper()
	m, err := ps.ReceiveTimeout(context.Background(), 2*time.Second)
	require.NoError(t, err, "a message on the change channel")
	msg, ok := m.(*redis.Message)
	require.True(t, ok, "got %T", m)
	return msg.Payload
}

// noMessage checks nothing more was published on ps.
func noMessage(t *testing.T, ps *redis.PubSub) {
	t.Helper()
	m, err := ps.ReceiveTimeout(context.Background(), 50*time.Millisecond)
	assert.Error(t, err, "no other message, got %v", m)
}

// allKeys returns every key of the database.
func allKeys(t *testing.T, c *redis.Client) []string {
	t.Helper()
	ks, err := c.Keys(context.Background(), "*").Result()
	require.NoError(t, err)
	return ks
}

func TestEditWritesKey(t *testing.T) {
	t.Setenv(passwordEnv, "")
	t.Setenv("USER", "tester")
	r := testenv.StartRedis(t)
	c := client(t, r.Addr)
	ctx := context.Background()
	const forever = time.Duration(-1)

	for _, tc := range []struct {
		prefix string
		args   []string
		key    string
		value  string
		ttl    time.Duration
		stderr string
	}{
		{prefix: "p:", args: []string{"ban", "clientid", "sensor-17"},
			key: "p:block:clientid:sensor-17", value: "operator: banned with guardctl by tester", ttl: forever},
		{prefix: "p:", args: []string{"ban", "ip", "::ffff:192.0.2.1", "--for", "90m", "--reason", "scanner"},
			key: "p:block:ip:192.0.2.1", value: "scanner", ttl: 90 * time.Minute,
			stderr: "guardctl: ip \"::ffff:192.0.2.1\" written as 192.0.2.1\n"},
		{prefix: "p:", args: []string{"ban", "ip", "2001:DB8:0:0:0:0:0:1"},
			key: "p:block:ip:2001:db8::1", value: "operator: banned with guardctl by tester", ttl: forever,
			stderr: "guardctl: ip \"2001:DB8:0:0:0:0:0:1\" written as 2001:db8::1\n"},
		{prefix: "p:", args: []string{"ban", "--for", "7d", "--reason=abuse report 4711", "cidr", "203.0.113.0/24"},
			key: "p:block:cidr:203.0.113.0/24", value: "abuse report 4711", ttl: 7 * 24 * time.Hour},
		{prefix: "p:", args: []string{"ban", "cidr", "2001:db8::/32", "--for", "1500ms", "--reason", "not auto: x"},
			key: "p:block:cidr:2001:db8::/32", value: "not auto: x", ttl: 1500 * time.Millisecond},
		{prefix: "p:", args: []string{"ban", "username", "alice", "--for", "1d12h"},
			key: "p:block:username:alice", value: "operator: banned with guardctl by tester", ttl: 36 * time.Hour},
		{prefix: "p:", args: []string{"allow", "clientid", "plant-gateway"},
			key: "p:allow:clientid:plant-gateway", value: "operator: allowed with guardctl by tester", ttl: forever},
		{prefix: "p:", args: []string{"allow", "cidr", "10.0.0.0/8", "--reason", "office", "--for", "2h"},
			key: "p:allow:cidr:10.0.0.0/8", value: "office", ttl: 2 * time.Hour},
		{prefix: "acme:guard:", args: []string{"ban", "ip", "198.51.100.7"},
			key: "acme:guard:block:ip:198.51.100.7", value: "operator: banned with guardctl by tester", ttl: forever},
		{prefix: "", args: []string{"ban", "ip", "198.51.100.7"},
			key: "guard:block:ip:198.51.100.7", value: "operator: banned with guardctl by tester", ttl: forever},
	} {
		require.NoError(t, c.FlushAll(ctx).Err())
		prefix := tc.prefix
		if prefix == "" {
			prefix = defaultKeyPrefix
		}
		ps := subscribe(t, c, prefix+"changes")
		start := time.Now()
		code, out, errOut := ctl(t, r.Addr, tc.prefix, tc.args...)
		require.Equal(t, exitOK, code, "%q: %s", tc.args, errOut)
		assert.Equal(t, tc.stderr, errOut, "%q", tc.args)

		assert.Equal(t, []string{tc.key}, allKeys(t, c), "%q: exactly one key", tc.args)
		assert.Equal(t, tc.value, c.Get(ctx, tc.key).Val(), "%q", tc.args)
		ttl := c.PTTL(ctx, tc.key).Val()
		done := tc.args[0] + "ned"
		if tc.args[0] == "allow" {
			done = "allowed"
		}
		if tc.ttl == forever {
			assert.Equal(t, time.Duration(-1), ttl, "%q: no expiry", tc.args)
			assert.Equal(t, done+" "+tc.key+" for ever\n", out)
		} else {
			assert.InDelta(t, tc.ttl.Milliseconds(), ttl.Milliseconds(), 1000, "%q: PTTL", tc.args)
			assert.LessOrEqual(t, ttl, tc.ttl)
			m := regexp.MustCompile(`^` + done + ` (\S+) until (\S+)\n$`).FindStringSubmatch(out)
			require.NotNil(t, m, "%q: %q", tc.args, out)
			assert.Equal(t, tc.key, m[1])
			until, err := time.Parse(time.RFC3339, m[2])
			require.NoError(t, err)
			assert.WithinDuration(t, start.Add(tc.ttl), until, 2*time.Second)
		}
		assert.Equal(t, tc.key, nextMessage(t, ps), "%q: the key published on %schanges", tc.args, prefix)
		noMessage(t, ps)
		ps.Close()
	}
}

func TestBanReplaces(t *testing.T) {
	t.Setenv(passwordEnv, "")
	t.Setenv("USER", "")
	t.Setenv("LOGNAME", "logname")
	r := testenv.StartRedis(t)
	c := client(t, r.Addr)
	ctx := context.Background()
	key := "g:block:ip:203.0.113.7"
	require.NoError(t, c.Set(ctx, key, "auto: 6 failed authentications", 10*time.Minute).Err())

	code, out, _ := ctl(t, r.Addr, "g:", "ban", "ip", "203.0.113.7", "--for", "2h")
	require.Equal(t, exitOK, code)
	assert.Contains(t, out, "banned "+key+" until ")
	assert.Equal(t, "operator: banned with guardctl by logname", c.Get(ctx, key).Val(), "an automatic ban becomes the operator's; $LOGNAME without $USER")
	assert.Greater(t, c.PTTL(ctx, key).Val(), time.Hour)

	code, out, _ = ctl(t, r.Addr, "g:", "ban", "ip", "203.0.113.7", "--reason", "for good")
	require.Equal(t, exitOK, code)
	assert.Equal(t, "banned "+key+" for ever\n", out)
	assert.Equal(t, time.Duration(-1), c.PTTL(ctx, key).Val(), "without --for the ban no longer ends")
	assert.Equal(t, "for good", c.Get(ctx, key).Val())
}

func TestUnbanUnallow(t *testing.T) {
	t.Setenv(passwordEnv, "")
	r := testenv.StartRedis(t)
	c := client(t, r.Addr)
	ctx := context.Background()
	ps := subscribe(t, c, "u:changes")
	block, allow := "u:block:ip:2001:db8::1", "u:allow:ip:2001:db8::1"
	require.NoError(t, c.Set(ctx, block, "x", time.Hour).Err())
	require.NoError(t, c.Set(ctx, allow, "y", 0).Err())

	code, out, errOut := ctl(t, r.Addr, "u:", "unban", "ip", "2001:DB8::1")
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "unbanned "+block+"\n", out)
	assert.Equal(t, "guardctl: ip \"2001:DB8::1\" written as 2001:db8::1\n", errOut)
	assert.Equal(t, []string{allow}, allKeys(t, c), "only the block key is gone")
	assert.Equal(t, block, nextMessage(t, ps))

	code, out, errOut = ctl(t, r.Addr, "u:", "unban", "ip", "2001:db8::1")
	require.Equal(t, exitOK, code, "a missing key is no error")
	assert.Equal(t, block+" did not exist; nothing to unban\n", out)
	assert.Empty(t, errOut)
	assert.Equal(t, block, nextMessage(t, ps), "published anyway: a replica that missed the DEL catches up")

	code, out, _ = ctl(t, r.Addr, "u:", "unallow", "ip", "2001:db8::1")
	require.Equal(t, exitOK, code)
	assert.Equal(t, "unallowed "+allow+"\n", out)
	assert.Empty(t, allKeys(t, c))
	assert.Equal(t, allow, nextMessage(t, ps))

	code, out, _ = ctl(t, r.Addr, "u:", "unallow", "ip", "2001:db8::1")
	require.Equal(t, exitOK, code)
	assert.Equal(t, allow+" did not exist; nothing to unallow\n", out)
	assert.Equal(t, allow, nextMessage(t, ps))
	noMessage(t, ps)
}

// hostile are client IDs and usernames that must reach Redis byte for byte.
var hostile = []string{
	"a:b", "guard:block:ip:1.2.3.4", "dev*", "[abc]?", `back\slash`, " two  spaces ", "line\nbreak",
	"tab\there", "é-ü", "\xff\xfe invalid UTF-8", `"quoted"`, "-dash", "--", strings.Repeat("x", 1000),
	strings.Repeat("😀", 300),
}

func TestEditHostileValues(t *testing.T) {
	t.Setenv(passwordEnv, "")
	r := testenv.StartRedis(t)
	c := client(t, r.Addr)
	ctx := context.Background()
	for _, scope := range []string{"clientid", "username"} {
		for _, v := range hostile {
			require.NoError(t, c.FlushAll(ctx).Err())
			// A decoy the value would match as a glob pattern.
			require.NoError(t, c.Set(ctx, "h:block:"+scope+":decoy", "d", 0).Err())
			key := "h:block:" + scope + ":" + v
			ps := subscribe(t, c, "h:changes")

			code, out, errOut := ctl(t, r.Addr, "h:", "ban", scope, "--reason", "r", "--", v)
			require.Equal(t, exitOK, code, "%q: %s", v, errOut)
			assert.Equal(t, "banned "+showKey(key)+" for ever\n", out, "%q", v)
			assert.Empty(t, errOut)
			assert.ElementsMatch(t, []string{"h:block:" + scope + ":decoy", key}, allKeys(t, c), "%q: the exact key", v)
			assert.Equal(t, "r", c.Get(ctx, key).Val())
			assert.Equal(t, key, nextMessage(t, ps))

			code, out, _ = ctl(t, r.Addr, "h:", "list", "--json", "--scope", scope)
			require.Equal(t, exitOK, code)
			var doc listDoc
			require.NoError(t, json.Unmarshal([]byte(out), &doc))
			require.Len(t, doc.Entries, 2, "%q", v)
			got := doc.Entries[0]
			if got.Value == "decoy" {
				got = doc.Entries[1]
			}
			assert.Equal(t, exactValue(t, got), v, "%q: the value listed exactly", v)

			code, out, _ = ctl(t, r.Addr, "h:", "unban", scope, "--", v)
			require.Equal(t, exitOK, code)
			assert.Equal(t, "unbanned "+showKey(key)+"\n", out)
			assert.Equal(t, []string{"h:block:" + scope + ":decoy"}, allKeys(t, c), "%q: only that key deleted", v)
			assert.Equal(t, key, nextMessage(t, ps))
			ps.Close()
		}
	}
}

func TestEditUsageErrors(t *testing.T) {
	t.Setenv(passwordEnv, "")
	r := testenv.StartRedis(t)
	c := client(t, r.Addr)
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"ban", "ip", "1.2.3"}, `bad ip "1.2.3": expected an IPv4 or IPv6 address such as 192.0.2.1 or 2001:db8::1`},
		{[]string{"ban", "ip", "192.0.2.0/24"}, `bad ip "192.0.2.0/24": expected an IPv4 or IPv6 address such as 192.0.2.1 or 2001:db8::1; for a range use scope cidr`},
		{[]string{"ban", "ip", "host.example"}, `bad ip "host.example": expected an IPv4 or IPv6 address`},
		{[]string{"unban", "ip", "1.2.3.4.5"}, `bad ip "1.2.3.4.5"`},
		{[]string{"ban", "cidr", "203.0.113.5/24"}, `bad range "203.0.113.5/24": expected the canonical network 203.0.113.0/24`},
		{[]string{"ban", "cidr", "2001:DB8::/32"}, `bad range "2001:DB8::/32": expected the canonical network 2001:db8::/32`},
		{[]string{"allow", "cidr", "::ffff:192.0.2.0/120"}, `bad range "::ffff:192.0.2.0/120": expected the canonical network 192.0.2.0/24`},
		{[]string{"ban", "cidr", "192.0.2.1"}, `bad range "192.0.2.1": expected a network such as 203.0.113.0/24 or 2001:db8::/32; for one address use scope ip`},
		{[]string{"ban", "cidr", "10.0.0.0/33"}, `bad range "10.0.0.0/33": expected a network such as`},
		{[]string{"ban", "host", "x"}, `unknown scope "host" (expected clientid, ip, cidr, username or cert)`},
		{[]string{"unallow", "IP", "1.2.3.4"}, `unknown scope "IP" (expected clientid, ip, cidr, username or cert)`},
		{[]string{"ban", "ip", "1.2.3.4", "--for", "3x"}, `invalid value "3x" for flag -for: bad duration "3x": expected e.g. 31d, 12h or 1d12h`},
		{[]string{"ban", "ip", "1.2.3.4", "--for", "0s"}, `invalid value "0s" for flag -for: bad duration "0s": must be positive`},
		{[]string{"ban", "ip", "1.2.3.4", "--for", "-1h"}, `invalid value "-1h" for flag -for: bad duration "-1h": expected e.g.`},
		{[]string{"ban", "ip", "1.2.3.4", "--for", "10us"}, `invalid value "10us" for flag -for: bad duration "10us": expected at least 1ms`},
		{[]string{"allow", "ip", "1.2.3.4", "--for"}, `flag needs an argument: -for`},
		{[]string{"ban", "username", "alice", "--reason", "auto: x"}, `--reason "auto: x": must not start with "auto:", which marks the plugin's automatic bans`},
		{[]string{"allow", "username", "alice", "--reason", "auto:"}, `must not start with "auto:"`},
		{[]string{"ban", "username", "alice", "--reason", ""}, `--reason: expected a text, not an empty one`},
		{[]string{"ban", "clientid", ""}, `empty VALUE: expected a client ID`},
		{[]string{"ban", "ip", ""}, `empty VALUE: expected an IPv4 or IPv6 address`},
		{[]string{"ban", "ip"}, `expected SCOPE VALUE, got 1 argument`},
		{[]string{"unban"}, `expected SCOPE VALUE, got 0 arguments`},
		{[]string{"ban", "clientid", "two", "words"}, `unexpected argument "words" after SCOPE VALUE (quote a VALUE holding spaces)`},
		{[]string{"unban", "ip", "1.2.3.4", "--for", "1h"}, `flag provided but not defined: -for`},
		{[]string{"unallow", "ip", "1.2.3.4", "--reason", "x"}, `flag provided but not defined: -reason`},
		{[]string{"ban", "--nope", "ip", "1.2.3.4"}, `flag provided but not defined: -nope`},
		{[]string{"ban", "clientid", "-dash"}, `flag provided but not defined: -dash`},
		{[]string{"ban", "ip", "1.2.3.4", "--redis-db", "x"}, `invalid value "x" for flag -redis-db`},
		{[]string{"list", "--scope", "host"}, `--scope: unknown scope "host" (expected clientid, ip, cidr, username or cert)`},
		{[]string{"list", "--limit", "0"}, `--limit 0: expected a number of entries, 1 or more`},
		{[]string{"list", "--limit", "x"}, `invalid value "x" for flag -limit`},
		{[]string{"list", "ip"}, `unexpected argument "ip" (use --scope to choose a scope)`},
	} {
		code, out, errOut := ctl(t, r.Addr, "e:", tc.args...)
		assert.Equal(t, exitUsage, code, "%q", tc.args)
		assert.Empty(t, out, "%q", tc.args)
		want := "guardctl: " + tc.args[0] + ": "
		assert.True(t, strings.HasPrefix(errOut, want), "%q: %q", tc.args, errOut)
		assert.Contains(t, errOut, tc.msg, "%q", tc.args)
		assert.True(t, strings.HasSuffix(errOut, "\nRun 'guardctl "+tc.args[0]+" -h' for usage.\n"), "%q: %q", tc.args, errOut)
		assert.Equal(t, 2, strings.Count(errOut, "\n"), "%q", tc.args)
	}
	assert.Empty(t, allKeys(t, c), "nothing written")
}

func TestEditRedisDown(t *testing.T) {
	t.Setenv(passwordEnv, "")
	addr := "127.0.0.1:" + jsonInt(int64(testenv.FreePort(t)))
	for _, args := range [][]string{
		{"ban", "ip", "192.0.2.1"}, {"unban", "ip", "192.0.2.1"}, {"allow", "clientid", "x"}, {"unallow", "clientid", "x"}, {"list"},
	} {
		start := time.Now()
		code, out, errOut := ctl(t, addr, "d:", args...)
		assert.Equal(t, exitError, code, "%q", args)
		assert.Empty(t, out)
		assert.Regexp(t, `^guardctl: redis at 127\.0\.0\.1:\d+: dial tcp .*connection refused\n$`, errOut, "%q: one line", args)
		assert.Less(t, time.Since(start), 3*time.Second)
	}
}

func TestEditPassword(t *testing.T) {
	r := testenv.StartRedis(t, "--requirepass", "s3cret")
	t.Setenv(passwordEnv, "")
	code, _, errOut := ctl(t, r.Addr, "pw:", "ban", "ip", "192.0.2.1")
	assert.Equal(t, exitError, code)
	assert.Regexp(t, `^guardctl: redis at 127\.0\.0\.1:\d+: NOAUTH.*\n$`, errOut)

	t.Setenv(passwordEnv, "s3cret")
	code, out, errOut := ctl(t, r.Addr, "pw:", "ban", "ip", "192.0.2.1")
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "banned pw:block:ip:192.0.2.1 for ever\n", out)
}

func TestParseInterspersed(t *testing.T) {
	newFS := func() (*flag.FlagSet, *string, *bool) {
		fs := flag.NewFlagSet("x", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		return fs, fs.String("reason", "", ""), fs.Bool("json", false, "")
	}
	for _, tc := range []struct {
		args, pos []string
		reason    string
		json      bool
	}{
		{args: []string{"ip", "1.2.3.4"}, pos: []string{"ip", "1.2.3.4"}},
		{args: []string{"--reason", "r", "ip", "1.2.3.4"}, pos: []string{"ip", "1.2.3.4"}, reason: "r"},
		{args: []string{"ip", "--reason", "r", "1.2.3.4"}, pos: []string{"ip", "1.2.3.4"}, reason: "r"},
		{args: []string{"ip", "1.2.3.4", "-reason=a=b"}, pos: []string{"ip", "1.2.3.4"}, reason: "a=b"},
		{args: []string{"ip", "1.2.3.4", "--reason", "--"}, pos: []string{"ip", "1.2.3.4"}, reason: "--"},
		{args: []string{"ip", "1.2.3.4", "--reason", "-x"}, pos: []string{"ip", "1.2.3.4"}, reason: "-x"},
		{args: []string{"--json", "ip"}, pos: []string{"ip"}, json: true},
		{args: []string{"--json=false", "ip"}, pos: []string{"ip"}},
		{args: []string{"clientid", "--", "-x", "--json"}, pos: []string{"clientid", "-x", "--json"}},
		{args: []string{"clientid", "-"}, pos: []string{"clientid", "-"}},
		{args: nil, pos: nil},
	} {
		fs, reason, js := newFS()
		pos, err := parseInterspersed(fs, tc.args)
		require.NoError(t, err, "%q", tc.args)
		assert.Equal(t, tc.pos, pos, "%q", tc.args)
		assert.Equal(t, tc.reason, *reason, "%q", tc.args)
		assert.Equal(t, tc.json, *js, "%q", tc.args)
	}
	for _, args := range [][]string{{"ip", "--reason"}, {"--nope"}, {"---reason", "x"}, {"--json=maybe"}} {
		fs, _, _ := newFS()
		_, err := parseInterspersed(fs, args)
		assert.Error(t, err, "%q", args)
	}
}

func TestEditUsage(t *testing.T) {
	for _, e := range []edit{banEdit, unbanEdit, allowEdit, unallowEdit} {
		var out, errb bytes.Buffer
		require.Equal(t, exitOK, run([]string{e.name, "-h"}, &out, &errb), e.name)
		assert.Empty(t, errb.String())
		assert.True(t, strings.HasPrefix(out.String(), "Usage: guardctl "+e.name+" SCOPE VALUE "), e.name)
		fs := flag.NewFlagSet("", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		_, err := parseEditFlags(e, []string{"-h"})
		require.ErrorIs(t, err, flag.ErrHelp)
		var a editFlags
		a.conn.register(fs)
		names := []string{}
		if !e.remove {
			names = append(names, "for", "reason")
		} else {
			assert.NotContains(t, out.String(), "--for", e.name)
		}
		fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
		for _, n := range names {
			assert.Contains(t, out.String(), "--"+n+" ", "%s -h documents --%s", e.name, n)
		}
		for _, s := range []string{"clientid ID", "username NAME", "ip ADDRESS", "cidr NETWORK", "Exit status: 0 ok", "Examples:\n  guardctl " + e.name + " "} {
			assert.Contains(t, out.String(), s, e.name)
		}
	}
}

func TestRunUsageListsCommands(t *testing.T) {
	var out bytes.Buffer
	require.Equal(t, exitOK, run([]string{"-h"}, &out, &out))
	assert.Contains(t, out.String(), `Commands:
  allow    allowlist an IP, range or certificate (every ban lifted), or a client ID or username (its bans only)
  audit    list client-ID conflict findings (CONFLICTING_CLIENT_IDS_CHECK)
  ban      ban a client ID, username, certificate, IP or range, for a time or for ever
  explain  say why a client would be refused or accepted, from what Redis holds
  list     list the bans, or with --allow the allowlist
  unallow  remove an allowlist entry
  unban    lift a ban

Examples:
  guardctl ban ip 203.0.113.7 --for 1h --reason "scanner"
`)
	for n := range commands {
		var o, e bytes.Buffer
		assert.Equal(t, exitOK, run([]string{n, "--help"}, &o, &e), n)
		assert.Contains(t, o.String(), "Usage: guardctl "+n, n)
	}
}

// guardctl unban of a client ID or username that has a tracking form (over
// 256 bytes, or starting with "sha256:") also deletes the key by that form,
// where its automatic bans are (keys.FailKey), and says which it deleted.
// Before, it answered "did not exist; nothing to unban" and the client
// stayed banned (atk48's TestAtk48TrackingFormAutoBanKeyAndUnban, 4 of 4).
// guardctl list shows such a form whole, to be copied.
func TestUnbanLiftsTheTrackingForm(t *testing.T) {
	t.Setenv(passwordEnv, "")
	r := testenv.StartRedis(t)
	c := client(t, r.Addr)
	ctx := context.Background()
	long := strings.Repeat("L", 299) + "x"
	for _, v := range []struct{ scope, value string }{{"username", long}, {"clientid", long}, {"clientid", "sha256:dev"}} {
		tkey := "u:block:" + v.scope + ":" + keys.Tracking(v.value)
		require.NoError(t, c.Set(ctx, tkey, "auto: failed authentication", time.Hour).Err())
		code, out, _ := ctl(t, r.Addr, "u:", "list")
		require.Equal(t, exitOK, code)
		assert.Contains(t, out, keys.Tracking(v.value)+" ", "shown whole")

		code, out, errOut := ctl(t, r.Addr, "u:", "unban", v.scope, v.value)
		require.Equal(t, exitOK, code, errOut)
		assert.Equal(t, "unbanned "+tkey+"\n", out)
		assert.Empty(t, allKeys(t, c))

		code, out, _ = ctl(t, r.Addr, "u:", "unban", v.scope, v.value)
		require.Equal(t, exitOK, code)
		assert.Contains(t, out, "did not exist, nor "+tkey+" (its automatic bans' form); nothing to unban")
	}
	// An allow key names the value alone: unallow deletes nothing else.
	require.NoError(t, c.Set(ctx, "u:allow:clientid:"+keys.Tracking(long), "x", 0).Err())
	code, _, _ := ctl(t, r.Addr, "u:", "unallow", "clientid", long)
	require.Equal(t, exitOK, code)
	assert.Equal(t, []string{"u:allow:clientid:" + keys.Tracking(long)}, allKeys(t, c))
}

// The hashed form of a long value is also a client ID (or username) of its
// own: an operator's ban of that literal value is not the long value's
// automatic ban, and unbanning the long value leaves it, saying so.
func TestUnbanLeavesAnOperatorsBanOfTheForm(t *testing.T) {
	t.Setenv(passwordEnv, "")
	r := testenv.StartRedis(t)
	c := client(t, r.Addr)
	ctx := context.Background()
	long := strings.Repeat("L", 299) + "x"
	for _, scope := range []string{"clientid", "username"} {
		tkey := "u:block:" + scope + ":" + keys.Tracking(long)
		code, _, errOut := ctl(t, r.Addr, "u:", "ban", scope, keys.Tracking(long), "--reason", "that device")
		require.Equal(t, exitOK, code, errOut)

		code, out, errOut := ctl(t, r.Addr, "u:", "unban", scope, long)
		require.Equal(t, exitOK, code, errOut)
		assert.Equal(t, "left "+tkey+": not an automatic ban (an operator's ban of that value itself)\n"+
			showKey("u:block:"+scope+":"+long)+" did not exist; nothing to unban\n", out)
		v, err := c.Get(ctx, tkey).Result()
		require.NoError(t, err, "the operator's ban is left")
		assert.Equal(t, "that device", v)

		// Its own unban lifts it.
		code, out, errOut = ctl(t, r.Addr, "u:", "unban", scope, keys.Tracking(long))
		require.Equal(t, exitOK, code, errOut)
		assert.Equal(t, "unbanned "+tkey+"\n", out)
		assert.Empty(t, allKeys(t, c))
	}
}
