package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

func TestHuman(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0:                                     "0s",
		-time.Second:                          "0s",
		300 * time.Millisecond:                "<1s",
		time.Second:                           "1s",
		42 * time.Second:                      "42s",
		59*time.Second + 600*time.Millisecond: "1m",
		90 * time.Second:                      "1m 30s",
		time.Hour:                             "1h",
		time.Hour + 29*time.Second:            "1h",
		time.Hour + 31*time.Second:            "1h 1m",
		23*time.Hour + 59*time.Minute + 40*time.Second: "1d",
		6*24*time.Hour + 3*time.Hour + 10*time.Minute:  "6d 3h",
		31 * 24 * time.Hour:                            "31d",
	} {
		assert.Equal(t, want, human(d), "%v", d)
	}
}

func TestOrdinalAndConfDur(t *testing.T) {
	for n, want := range map[int]string{1: "1st", 2: "2nd", 3: "3rd", 4: "4th", 11: "11th", 12: "12th", 13: "13th", 21: "21st", 22: "22nd", 101: "101st", 111: "111th"} {
		assert.Equal(t, want, ordinal(n))
	}
	for d, want := range map[time.Duration]string{time.Minute: "1m", 10 * time.Minute: "10m", 90 * time.Second: "1m30s",
		time.Hour: "1h", 90 * time.Minute: "1h30m", 24 * time.Hour: "1d", 31 * 24 * time.Hour: "31d", 36 * time.Hour: "36h"} {
		assert.Equal(t, want, confDur(d))
	}
}

func explainRun(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(append([]string{"explain"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func TestExplainUsageErrors(t *testing.T) {
	t.Setenv(passwordEnv, "")
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "nothing to explain: give at least one of --clientid, --ip, --username, --cert"},
		{[]string{"--json"}, "nothing to explain"},
		{[]string{"--ip", "203.0.113.0/24"}, `--ip "203.0.113.0/24": expected an IPv4 or IPv6 address`},
		{[]string{"--ip", "1.2.3"}, `--ip "1.2.3": expected`},
		{[]string{"--cert", "abc"}, `--cert: bad cert "abc": expected a certificate ID`},
		{[]string{"--ip", "192.0.2.1", "extra"}, `unexpected argument "extra"`},
		{[]string{"--ip", "192.0.2.1", "--fail-limit", "0"}, `invalid value "0" for flag -fail-limit: bad value "0": expected a whole number from 1 to 1000000`},
		{[]string{"--ip", "192.0.2.1", "--fail-scopes", "cidr"}, `invalid value "cidr" for flag -fail-scopes: bad value "cidr": expected a list of ip, clientid, username`},
		{[]string{"--ip", "192.0.2.1", "--conflict-window", "1x"}, `invalid value "1x" for flag -conflict-window`},
		{[]string{"--ip", "192.0.2.1", "--bogus"}, "flag provided but not defined: -bogus"},
	} {
		code, out, errOut := explainRun(t, c.args...)
		assert.Equal(t, exitUsage, code, "%q", c.args)
		assert.Empty(t, out)
		assert.Contains(t, errOut, "guardctl: explain: "+c.want, "%q", c.args)
		assert.True(t, strings.HasSuffix(errOut, "Run 'guardctl explain -h' for usage.\n"), errOut)
	}
	code, out, _ := explainRun(t, "-h")
	assert.Equal(t, exitOK, code)
	for _, name := range append(limitOptions, "clientid", "ip", "username", "cert", "json", "config", "redis-addr") {
		assert.Contains(t, out, "--"+limitFlag(name), "the usage names every flag")
	}
}

func TestParseExplainFlags(t *testing.T) {
	e, err := parseExplainFlags([]string{"--clientid", "", "--username=", "--ip", "::ffff:192.0.2.1",
		"--cert", strings.ToUpper("sha256 Fingerprint=" + strings.Repeat("AB:", 31) + "AB")})
	require.NoError(t, err)
	assert.True(t, e.hasClientID, "an empty client ID is one")
	assert.True(t, e.hasUsername)
	assert.Equal(t, "192.0.2.1", e.ip.String(), "IPv4-mapped counts as IPv4")
	assert.Equal(t, strings.Repeat("ab", 32), e.cert)
}

func writeConf(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "mosquitto.conf")
	require.NoError(t, os.WriteFile(p, []byte(text), 0o644))
	return p
}

// The limits come from the defaults, then the plugin's lines, then the
// flags; each says where it came from.
func TestResolveLimits(t *testing.T) {
	l, err := resolveLimits("", limitValues{})
	require.NoError(t, err)
	assert.Equal(t, 5, l.Policy.Limit)
	assert.Equal(t, 31*24*time.Hour, l.ConflictWindow)
	assert.Equal(t, "default", l.From["fail_limit"])

	conf := writeConf(t, `listener 1883
auth_plugin /usr/lib/mosquitto_guard.so
auth_opt_password_file /nonexistent/passwd
auth_opt_fail_limit 3
plugin_opt_ban_time 1m
auth_opt_fail_scopes ip username
auth_opt_clientid_conflict deny
`)
	l, err = resolveLimits(conf, limitValues{"ban_time": "2m", "conflict_window": "1d"})
	require.NoError(t, err, "password_file is not opened")
	assert.Equal(t, 3, l.Policy.Limit)
	assert.Equal(t, 2*time.Minute, l.Policy.BanTime)
	assert.Equal(t, []keys.Scope{keys.IP, keys.Username}, l.FailScopes)
	assert.Equal(t, 24*time.Hour, l.ConflictWindow)
	assert.Equal(t, "files", string(l.Backend))
	assert.Equal(t, "deny", string(l.Conflicts))
	assert.Equal(t, map[string]string{
		"fail_limit": conf + ":4", "ban_time": "--ban-time", "fail_scopes": conf + ":6", "conflict_window": "--conflict-window",
		"fail_window": "default", "ban_max": "default", "fail_ipv6_prefix": "default", "username_fail_limit": "default",
		"clientid_max_bytes": "default", "username_max_bytes": "default",
	}, l.From)

	bad := writeConf(t, "auth_plugin /usr/lib/mosquitto_guard.so\nauth_opt_fail_window 5x\nauth_opt_ban_time 2d\n")
	_, err = resolveLimits(bad, limitValues{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), bad+`:2: option fail_window: bad value "5x"`)
	assert.Contains(t, err.Error(), bad+`:3: option ban_time: bad value "2d": expected a duration at most ban_max`)
	_, err = resolveLimits(bad, limitValues{"fail_window": "5m", "ban_max": "7d"})
	assert.NoError(t, err, "the flags settle it")

	two := writeConf(t, `per_listener_settings true
listener 1883
auth_plugin /usr/lib/mosquitto_guard.so
auth_opt_fail_limit 3
listener 8883
auth_plugin /usr/lib/mosquitto_guard.so
auth_opt_fail_limit 4
`)
	_, err = resolveLimits(two, limitValues{})
	require.Error(t, err)
	assert.Equal(t, "config "+two+": mosquitto-guard is loaded 2 times with different fail_limit: "+
		two+":3 (listener 1883): fail_limit 3; "+two+":6 (listener 8883): fail_limit 4; say which with --fail-limit", err.Error())
	l, err = resolveLimits(two, limitValues{"fail_limit": "4"})
	require.NoError(t, err)
	assert.Equal(t, 4, l.Policy.Limit)
}

// Client IDs and usernames are any bytes: the text quotes them as log lines
// do; the JSON holds them exactly (base64 beside when not UTF-8).
func TestExplainHostileValues(t *testing.T) {
	t.Setenv(passwordEnv, "")
	r := testenv.StartRedis(t)
	id := "evil\nid\x00\xff" + strings.Repeat("A", 300)
	user := "bob\r\n[guard] accepted"
	rdb := openStore(t, r.Addr, "guard:", "").Client()
	require.NoError(t, rdb.Set(context.Background(), "guard:block:clientid:"+id, "stolen\nkeys", 0).Err())
	require.NoError(t, rdb.Set(context.Background(), "guard:allow:username:"+user, "auto: forged", 0).Err())

	code, out, errOut := explainRun(t, "--redis-addr", r.Addr, "--clientid", id, "--username", user)
	require.Equal(t, exitOK, code, errOut)
	for _, line := range strings.Split(out, "\n") {
		assert.NotContains(t, line, "\x00")
		assert.False(t, strings.HasPrefix(line, "id") || strings.HasPrefix(line, "[guard]"), "a value split a line: %q", line)
	}
	assert.Contains(t, out, `Client: client_id="evil\nid\x00\xffAAA`)
	assert.Contains(t, out, `username="bob\r\n[guard] accepted"`)
	assert.Contains(t, out, `Verdict: accepted: "guard:allow:username:bob\r\n[guard] accepted" lifts "guard:block:clientid:evil\nid\x00\xffAAAA`)
	assert.Contains(t, out, "...(", "a long value is cut, with its length")

	code, out, errOut = explainRun(t, "--redis-addr", r.Addr, "--clientid", id, "--username", user, "--json")
	require.Equal(t, exitOK, code, errOut)
	var doc struct {
		Identity struct {
			ClientID       string `json:"clientid"`
			ClientIDBase64 string `json:"clientid_base64"`
			Username       string `json:"username"`
		} `json:"identity"`
		Entries []struct {
			Key, Role, Origin string
			ValueBase64       string `json:"value_base64"`
		} `json:"entries"`
		Verdict struct{ Result, Line string } `json:"verdict"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &doc), out)
	raw, err := base64.StdEncoding.DecodeString(doc.Identity.ClientIDBase64)
	require.NoError(t, err)
	assert.Equal(t, id, string(raw), "the exact bytes")
	assert.Equal(t, user, doc.Identity.Username, "valid UTF-8 is held as it is")
	require.Len(t, doc.Entries, 2)
	assert.Equal(t, "lifted", doc.Entries[0].Role)
	assert.NotEmpty(t, doc.Entries[0].ValueBase64)
	assert.Equal(t, "counts", doc.Entries[1].Role)
	assert.Equal(t, "auto", doc.Entries[1].Origin, "a value starting auto: reads as the plugin's")
	assert.Equal(t, "accepted", doc.Verdict.Result)
}

func TestExplainRedisDown(t *testing.T) {
	t.Setenv(passwordEnv, "")
	addr := "127.0.0.1:" + jsonInt(int64(testenv.FreePort(t)))
	code, out, errOut := explainRun(t, "--redis-addr", addr, "--ip", "192.0.2.1")
	assert.Equal(t, exitError, code)
	assert.Empty(t, out)
	assert.Regexp(t, `^guardctl: redis at 127\.0\.0\.1:\d+: dial tcp .*connection refused\n$`, errOut)
}
