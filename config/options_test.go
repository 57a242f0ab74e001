package config

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/ratelimit"
)

func TestParseDefaults(t *testing.T) {
	c, err := Parse(nil)
	require.NoError(t, err)
	assert.Equal(t, []string{"127.0.0.1:6379"}, c.RedisAddrs)
	assert.Equal(t, 100*time.Millisecond, c.RedisTimeout)
	assert.Equal(t, "guard:", c.KeyPrefix)
	assert.Equal(t, BackendDefer, c.Backend)
	assert.Equal(t, 5, c.Policy.Limit)
	assert.Equal(t, time.Minute, c.Policy.Window)
	assert.Equal(t, 10*time.Minute, c.Policy.BanTime)
	assert.Equal(t, 24*time.Hour, c.Policy.BanMax)
	assert.Equal(t, []keys.Scope{keys.IP}, c.FailScopes)
	assert.False(t, c.DenyWhenRedisDown)
	assert.Equal(t, "base64", c.SaltEncoding)
	assert.Equal(t, 65535, c.ClientIDMaxBytes, "MQTT's most: no bound of its own")
	assert.Equal(t, 65535, c.UsernameMaxBytes)
}

func TestParseValues(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "passwd")
	require.NoError(t, os.WriteFile(pw, nil, 0o600))
	c, err := Parse(map[string]string{
		"redis_addr":         "10.0.0.1:7000, 10.0.0.2:7001",
		"redis_timeout":      "250ms",
		"key_prefix":         "site1:",
		"password_file":      pw,
		"fail_limit":         "10",
		"fail_window":        "5m",
		"fail_scopes":        "ip, username clientid,ip",
		"ban_time":           "1h",
		"ban_max":            "168h",
		"redis_unavailable":  "deny",
		"clientid_max_bytes": "128",
		"username_max_bytes": "64",
	})
	require.NoError(t, err)
	assert.Equal(t, 128, c.ClientIDMaxBytes)
	assert.Equal(t, 64, c.UsernameMaxBytes)
	assert.Equal(t, []string{"10.0.0.1:7000", "10.0.0.2:7001"}, c.RedisAddrs)
	assert.Equal(t, BackendFiles, c.Backend, "password_file implies backend files")
	assert.Equal(t, []keys.Scope{keys.IP, keys.Username, keys.ClientID}, c.FailScopes)
	assert.Equal(t, 10, c.Policy.Limit)
	assert.True(t, c.DenyWhenRedisDown)
}

func TestParseErrorsNameOptionValueAndForm(t *testing.T) {
	cases := []struct {
		opts map[string]string
		want string
	}{
		{map[string]string{"fail_limit": "abc"}, `option fail_limit: bad value "abc": expected a whole number from 1 to 1000000`},
		{map[string]string{"fail_limit": "0"}, `option fail_limit: bad value "0": expected a whole number`},
		{map[string]string{"ban_time": "10"}, `option ban_time: bad value "10": expected a duration`},
		{map[string]string{"fail_window": "-1m"}, `option fail_window: bad value "-1m"`},
		{map[string]string{"redis_timeout": "0s"}, `option redis_timeout: bad value "0s"`},
		{map[string]string{"backend": "ldap"}, `option backend: bad value "ldap": expected one of files, redis, defer`},
		{map[string]string{"backend": "files"}, `option password_file: bad value "": expected the path of a mosquitto_passwd file`},
		{map[string]string{"password_file": "/nonexistent/passwd"}, `option password_file: bad value "/nonexistent/passwd": expected a regular file of at most 256 MiB readable by the broker's user (no such file or directory)`},
		{map[string]string{"fail_scopes": "ip,country"}, `option fail_scopes: bad value "ip,country"`},
		{map[string]string{"fail_scopes": "cidr"}, `option fail_scopes: bad value "cidr"`},
		{map[string]string{"fail_scopes": ""}, `option fail_scopes: bad value ""`},
		{map[string]string{"redis_unavailable": "maybe"}, `option redis_unavailable: bad value "maybe": expected allow or deny`},
		{map[string]string{"redis_addr": "localhost"}, `option redis_addr: bad value "localhost": expected host:port`},
		{map[string]string{"redis_addr": "h:99999"}, `option redis_addr: bad value "h:99999"`},
		{map[string]string{"redis_db": "-1"}, `option redis_db: bad value "-1"`},
		{map[string]string{"ban_time": "2h", "ban_max": "1h"}, `option ban_max: bad value "1h0m0s": expected a duration at least ban_time (2h0m0s)`},
		{map[string]string{"clientid_max_bytes": "0"}, `option clientid_max_bytes: bad value "0": expected a whole number from 1 to 65535`},
		{map[string]string{"username_max_bytes": "65536"}, `option username_max_bytes: bad value "65536": expected a whole number from 1 to 65535`},
		{map[string]string{"hasher_salt_encoding": "hex"}, `option hasher_salt_encoding: bad value "hex": expected base64, or utf8`},
		{map[string]string{"backend": "redis", "password_file": "/etc/passwd"}, `option password_file: bad value "/etc/passwd": expected no password_file unless backend is files`},
	}
	for _, c := range cases {
		_, err := Parse(c.opts)
		require.Error(t, err, "%v", c.opts)
		assert.Contains(t, err.Error(), c.want)
		var oe *OptionError
		assert.True(t, errors.As(err, &oe), "%v: want an *OptionError", c.opts)
	}
}

func TestParseUnknownOptionNeverEchoesValue(t *testing.T) {
	_, err := Parse(map[string]string{"redis_pasword": "s3cret"})
	require.ErrorIs(t, err, errUnknownOption)
	assert.Contains(t, err.Error(), "option redis_pasword: unknown option")
	assert.NotContains(t, err.Error(), "s3cret")
}

func TestEveryOptionHasADefaultThatParses(t *testing.T) {
	c, err := Parse(nil)
	require.NoError(t, err)
	assert.Equal(t, 5*time.Minute, c.ReplicaResync)
	assert.Equal(t, 100000, c.AuthCache)
	assert.Equal(t, ACLAuto, c.ACLCheck)
	assert.Equal(t, ConflictFlag, c.Conflicts.Mode)
	assert.Equal(t, 31*24*time.Hour, c.Conflicts.Window)
	assert.Equal(t, 30*time.Second, c.Conflicts.Lease)
	assert.NotEmpty(t, c.Conflicts.BrokerName)
}

// A ban_time above ban_max's default names ban_time, the option the user
// wrote, not ban_max and a value the user never wrote.
func TestBanTimeAboveDefaultMax(t *testing.T) {
	_, err := Parse(map[string]string{"ban_time": "31d"})
	require.Error(t, err)
	assert.Equal(t, `option ban_time: bad value "31d": expected a duration at most ban_max (24h0m0s, its default; set ban_max too)`, err.Error())
	_, err = Parse(map[string]string{"ban_time": "2h", "ban_max": "1h"})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "option ban_max:")
}

func TestParseDurationDays(t *testing.T) {
	for in, want := range map[string]time.Duration{"31d": 744 * time.Hour, "1d12h": 36 * time.Hour, "90s": 90 * time.Second} {
		d, err := ParseDuration(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, d, in)
	}
	for _, bad := range []string{"d", "xd", "1d1", "-1d"} {
		_, err := ParseDuration(bad)
		assert.Error(t, err, bad)
	}
}

// One parser of days for the plugin and guardctl audit --since: digits only
// before the d, nothing negative after it, no overflow.
func TestParseDurationStrict(t *testing.T) {
	for in, want := range map[string]time.Duration{"0d": 0, "100000d": 100000 * 24 * time.Hour, "0d1s": time.Second, "1.5h": 90 * time.Minute} {
		d, err := ParseDuration(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, d, in)
	}
	for _, bad := range []string{"+1d", "1d-5h", "100001d", "106752d", "100000d2562047h", " 1d", "1d ", "1.5d", "31D", "1dd", "d5h"} {
		_, err := ParseDuration(bad)
		assert.Error(t, err, bad)
	}
}

// ratelimit's defaults are the options' defaults: one source.
func TestPolicyDefaultsAreRatelimits(t *testing.T) {
	c, err := Parse(nil)
	require.NoError(t, err)
	assert.Equal(t, ratelimit.Policy{Limit: ratelimit.DefaultLimit, Window: ratelimit.DefaultWindow,
		BanTime: ratelimit.DefaultBanTime, BanMax: ratelimit.DefaultBanMax}, c.Policy)
}

// The conflict tracker's options come out of Parse in conflicts.Options;
// Deny and ClaimTimeout are the plugin's to derive (from Mode, redis_timeout).
func TestParseConflictTrackerOptions(t *testing.T) {
	c, err := Parse(map[string]string{"clientid_conflict": "deny", "takeover_limit": "7", "broker_lease": "45s"})
	require.NoError(t, err)
	assert.Equal(t, ConflictDeny, c.Conflicts.Mode)
	assert.Equal(t, 7, c.Conflicts.TakeoverLimit)
	assert.Equal(t, 45*time.Second, c.Conflicts.Lease)
	assert.False(t, c.Conflicts.Deny, "held once, as Mode")
}

// findings_topic is published to by mosquitto_broker_publish, which checks
// nothing: a name MQTT forbids or discourages is refused at start, not sent
// out at run time (before: invalid UTF-8 and control characters passed).
func TestFindingsTopicIsAnMQTTTopicName(t *testing.T) {
	for _, good := range []string{"", "guard/findings", "$SYS/guard", "caf\u00e9/\u00fc", "a b", "a/\u00a0b"} {
		c, err := Parse(map[string]string{"findings_topic": good})
		require.NoError(t, err, "%q", good)
		assert.Equal(t, good, c.Conflicts.FindingsTopic)
	}
	for _, bad := range []string{"a/+", "a/#", "a\x00b", "\xff\xfe", "a\xc3", "a\x01b", "a\x1fb", "a\x7fb", "a\u0085b", "a\u009fb", "a\tb"} {
		_, err := Parse(map[string]string{"findings_topic": bad})
		var oe *OptionError
		require.True(t, errors.As(err, &oe), "%q must be refused", bad)
		assert.Equal(t, "findings_topic", oe.Option, "%q", bad)
	}
}

// A redis:// URL or user:password@host in redis_addr is refused without its
// password reaching the log (before: the error quoted the whole value, and
// "pw@host:6379" was accepted, to be shown in every dial error).
func TestRedisAddrCredentialsNotShown(t *testing.T) {
	for v, shown := range map[string]string{
		"redis://:S3cretPass@127.0.0.1:26379/0": `"***@127.0.0.1:26379/0"`,
		"S3cretPass@127.0.0.1:26379":            `"***@127.0.0.1:26379"`,
		"guard:S3cretPass@h:1, b@S3cret@h:2":    `"***@h:2"`,
	} {
		_, err := Parse(map[string]string{"redis_addr": v})
		require.Error(t, err, v)
		assert.Contains(t, err.Error(), "option redis_addr: bad value "+shown+": expected host:port", v)
		assert.Contains(t, err.Error(), "set redis_username and redis_password", v)
		assert.NotContains(t, err.Error(), "S3cret", v)
	}
	_, err := ParseRedis(map[string]string{"redis_addr": "redis://:S3cretPass@127.0.0.1:26379/0"})
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "S3cret", "guardctl's parse too")
}

// The checks across options all run: a bad ban_time does not hide the
// password_file problem for the next start (before: combine stopped at its
// first error, and the password file was not opened after any error).
func TestCrossOptionErrorsAtOnce(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "passwd")
	cases := []struct {
		opts map[string]string
		want []string
	}{
		{map[string]string{"ban_time": "48h", "backend": "files"}, []string{"ban_time", "password_file"}},
		{map[string]string{"ban_time": "48h", "backend": "files", "password_file": missing}, []string{"ban_time", "password_file"}},
		{map[string]string{"ban_time": "2h", "ban_max": "1h", "password_file": missing}, []string{"ban_max", "password_file"}},
		{map[string]string{"fail_limit": "x", "password_file": missing}, []string{"fail_limit", "password_file"}},
		{map[string]string{"ban_time": "48h", "backend": "redis", "password_file": "/etc/passwd"}, []string{"ban_time", "password_file"}},
	}
	for _, c := range cases {
		_, err := Parse(c.opts)
		var errs Errors
		require.True(t, errors.As(err, &errs), "%v: %v", c.opts, err)
		var got []string
		for _, e := range errs {
			var oe *OptionError
			require.True(t, errors.As(e, &oe), "%v", e)
			got = append(got, oe.Option)
		}
		assert.Equal(t, c.want, got, "%v: %v", c.opts, err)
	}
}

// ParseOffline checks everything Parse checks but opening password_file,
// which guardctl, running as another user, may not be able to read.
func TestParseOffline(t *testing.T) {
	unreadable := map[string]string{"password_file": "/nonexistent/passwd", "fail_limit": "7"}
	_, err := Parse(unreadable)
	require.Error(t, err)
	c, err := ParseOffline(unreadable)
	require.NoError(t, err)
	assert.Equal(t, 7, c.Policy.Limit)
	assert.Equal(t, BackendFiles, c.Backend)

	_, err = ParseOffline(map[string]string{"fail_limit": "x", "ban_time": "2d", "backend": "redis", "password_file": "/p", "bogus": "1"})
	require.Error(t, err)
	msg := err.Error()
	for _, want := range []string{"fail_limit", "ban_time", "password_file", "bogus"} {
		assert.Contains(t, msg, want)
	}
}

func TestCheckOption(t *testing.T) {
	assert.NoError(t, CheckOption("fail_limit", " 3 "))
	assert.EqualError(t, CheckOption("fail_window", "5x"),
		`option fail_window: bad value "5x": expected a duration from 1s to 24h0m0s, such as 90s, 10m, 1h30m or 31d`)
	assert.EqualError(t, CheckOption("fail_scopes", "cidr"),
		`option fail_scopes: bad value "cidr": expected a list of ip, clientid, username separated by commas or spaces`)
	assert.Error(t, CheckOption("fail_limt", "3"))
}
