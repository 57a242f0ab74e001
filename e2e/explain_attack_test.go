package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Hostile tests of guardctl explain: each sets up Redis, asks explain, and
// connects a real client from the same address to a real broker; explain's
// verdict must be what the broker does.

// attackEnv starts Redis, lets setup write to it, then starts the broker
// (conf lines extra): its replica loads what setup wrote, so the first
// CONNECT already sees it.
func attackEnv(t *testing.T, setup func(ctx context.Context, rdb *redis.Client), extra ...string) *env {
	t.Helper()
	e := envWithoutBroker(t)
	rdb := redis.NewClient(&redis.Options{Addr: e.redis.Addr})
	t.Cleanup(func() { rdb.Close() })
	setup(context.Background(), rdb)
	e.broker = startBroker(t, e.conf(extra...))
	broker := e.broker
	t.Cleanup(func() { checkEventLines(t, broker.Output()) })
	return e
}

// An allow entry on proof (ip, cidr, cert) exempts its client from the
// failure limits, the username throttle among them (plugin.authenticate
// skips checkLimits for an exempt client): the broker accepts alice from an
// allowlisted address while alice is throttled. explain must not say the
// client is refused unchecked.
func TestAttackExplainThrottleUnderProofAllow(t *testing.T) {
	bin := buildGuardctl(t)
	e := attackEnv(t, func(ctx context.Context, rdb *redis.Client) {
		require.NoError(t, rdb.Set(ctx, "guard:allow:ip:127.0.61.1", "office vpn", 0).Err())
		require.NoError(t, rdb.Set(ctx, "guard:throttle:username:alice", "ops: throttled by hand", 0).Err())
	}, "auth_opt_username_fail_limit 3")

	// The control: from an address without the allow entry, the throttle refuses.
	require.EqualValues(t, refused, e.connect(as("127.0.61.2", "dev-b", "alice", "alice-pw")), "throttled alice from an unknown source")
	// The broker: the allowlisted address passes the throttle.
	require.EqualValues(t, accepted, e.connect(as("127.0.61.1", "dev-a", "alice", "alice-pw")), "an allow entry on ip exempts from the throttle")

	out := guardctlRun(t, bin, nil, "explain", "--config", e.broker.ConfPath,
		"--ip", "127.0.61.1", "--username", "alice", "--clientid", "dev-a")
	assert.NotContains(t, out, "it is refused unchecked",
		"explain says the broker refuses a client the broker accepts:\n%s", out)
	assert.Contains(t, out, "the username is throttled, but not for this client: guard:allow:ip:127.0.61.1 exempts this client")
	x := explainJSON(t, bin, nil, "--config", e.broker.ConfPath, "--ip", "127.0.61.1", "--username", "alice", "--clientid", "dev-a")
	require.NotNil(t, x.Throttle)
	assert.True(t, x.Throttle.Throttled)
	assert.False(t, x.Throttle.Applies)
	// From the other address explain still says the throttle refuses, as the broker did.
	out = guardctlRun(t, bin, nil, "explain", "--config", e.broker.ConfPath,
		"--ip", "127.0.61.2", "--username", "alice", "--clientid", "dev-b")
	assert.Contains(t, out, "it is refused unchecked", "the throttle applies without the allow entry:\n%s", out)
}

// With username_fail_limit 0 the plugin keeps no throttle and ignores a
// throttle key left in Redis (from when the limit was on, or written by
// hand): the broker accepts alice from any source. explain, reading the
// same mosquitto.conf, must not say she is refused unchecked.
func TestAttackExplainThrottleKeyIgnoredWhenLimitOff(t *testing.T) {
	bin := buildGuardctl(t)
	e := attackEnv(t, func(ctx context.Context, rdb *redis.Client) {
		require.NoError(t, rdb.Set(ctx, "guard:throttle:username:alice", "left over", 0).Err())
	}, "auth_opt_username_fail_limit 0")

	require.EqualValues(t, accepted, e.connect(as("127.0.62.1", "dev-a", "alice", "alice-pw")), "no throttle with username_fail_limit 0")

	out := guardctlRun(t, bin, nil, "explain", "--config", e.broker.ConfPath,
		"--ip", "127.0.62.1", "--username", "alice", "--clientid", "dev-a")
	assert.NotContains(t, out, "it is refused unchecked",
		"explain says the broker refuses a client the broker accepts:\n%s", out)
	assert.Contains(t, out, "but not for this client: username_fail_limit is 0: the plugin keeps no throttle and ignores throttle keys")
}

// Under backend defer the plugin checks no password, so it holds no client
// to the failure limits or the throttle (authenticate skips checkLimits):
// mosquitto's own password_file decides, and accepts alice. explain must
// not say she is refused unchecked.
func TestAttackExplainThrottleKeyIgnoredUnderBackendDefer(t *testing.T) {
	bin := buildGuardctl(t)
	e := envWithoutBroker(t)
	rdb := redis.NewClient(&redis.Options{Addr: e.redis.Addr})
	t.Cleanup(func() { rdb.Close() })
	require.NoError(t, rdb.Set(context.Background(), "guard:throttle:username:alice", "ops: throttled by hand", 0).Err())
	e.broker = startBroker(t, e.conf("auth_opt_backend defer", "auth_opt_username_fail_limit 3", "password_file "+e.passwd))

	require.EqualValues(t, accepted, e.connect(as("127.0.66.1", "dev-a", "alice", "alice-pw")), "backend defer throttles no one")

	out := guardctlRun(t, bin, nil, "explain", "--config", e.broker.ConfPath,
		"--ip", "127.0.66.1", "--username", "alice", "--clientid", "dev-a")
	assert.NotContains(t, out, "it is refused unchecked",
		"explain says the broker refuses a client the broker accepts:\n%s", out)
	assert.Contains(t, out, "but not for this client: backend defer checks no password")
	x := explainJSON(t, bin, nil, "--config", e.broker.ConfPath, "--ip", "127.0.66.1", "--username", "alice")
	require.NotNil(t, x.Throttle)
	assert.False(t, x.Throttle.Applies)
}

// An automatic ban that an allow entry lifts does not refuse: explain's
// verdict says so, and its failure section must not say the opposite
// ("banned now ...: its attempts are refused unchecked").
func TestAttackExplainLiftedBanNotRefusedInFailures(t *testing.T) {
	bin := buildGuardctl(t)
	e := attackEnv(t, func(ctx context.Context, rdb *redis.Client) {
		require.NoError(t, rdb.Set(ctx, "guard:block:ip:127.0.63.1",
			"auto: over 5 failed authentications (5 allowed, refilling 1 per 1m0s) (offence 1, 10m0s) at 2030-01-01T00:00:00Z", 0).Err())
		require.NoError(t, rdb.Set(ctx, "guard:allow:cidr:127.0.63.0/24", "lab", 0).Err())
	})

	require.EqualValues(t, accepted, e.connect(as("127.0.63.1", "dev-a", "alice", "alice-pw")), "the cidr allow lifts the ip ban")

	out := guardctlRun(t, bin, nil, "explain", "--config", e.broker.ConfPath, "--ip", "127.0.63.1")
	assert.Contains(t, verdictLine(t, out), "accepted")
	assert.NotContains(t, out, "refused unchecked",
		"explain's failure section says a lifted ban refuses:\n%s", out)
	assert.Contains(t, out, "    banned now by guard:block:ip:127.0.63.1 (auto, permanent), lifted for this client by guard:allow:cidr:127.0.63.0/24: the ban does not refuse it\n")
	x := explainJSON(t, bin, nil, "--config", e.broker.ConfPath, "--ip", "127.0.63.1")
	require.Len(t, x.Failures.Keys, 1)
	require.NotNil(t, x.Failures.Keys[0].BannedBy)
	require.NotNil(t, x.Failures.Keys[0].BanLiftedBy)
	assert.Equal(t, "guard:allow:cidr:127.0.63.0/24", *x.Failures.Keys[0].BanLiftedBy)
}

// The broker gives a client that sends an empty client ID (clean session)
// an ID of its own (auto-...) before the plugin sees it, so an entry on the
// empty client ID never refuses anyone. explain --clientid "" must not
// say it does.
func TestAttackExplainEmptyClientID(t *testing.T) {
	bin := buildGuardctl(t)
	e := attackEnv(t, func(ctx context.Context, rdb *redis.Client) {
		require.NoError(t, rdb.Set(ctx, "guard:block:clientid:", "no empty ids", 0).Err())
	})

	require.EqualValues(t, accepted, e.connect(as("127.0.64.1", "", "alice", "alice-pw")), "the broker names an empty client ID itself")

	out := guardctlRun(t, bin, nil, "explain", "--config", e.broker.ConfPath,
		"--ip", "127.0.64.1", "--username", "alice", "--clientid", "")
	assert.NotContains(t, verdictLine(t, out), "refused",
		"explain refuses a client the broker accepts:\n%s", out)
	assert.Equal(t, "accepted: no entry", verdictLine(t, out))
	assert.Contains(t, out, "the client ID is empty, and the plugin never sees an empty one: the broker gives the client an ID of its own")
	assert.Contains(t, guardctlRun(t, bin, nil, "explain", "--config", e.broker.ConfPath, "--ip", "127.0.64.1", "--clientid", "",
		"--fail-scopes", "ip,clientid"), "\n  clientid: the broker assigns the ID, a new one each time: no count builds up\n")
	assert.NotContains(t, out, "guard:block:clientid:", "an entry the plugin never matches is not listed")
	x := explainJSON(t, bin, nil, "--config", e.broker.ConfPath, "--ip", "127.0.64.1", "--clientid", "", "--fail-scopes", "ip,clientid")
	assert.Empty(t, x.Entries)
	assert.Nil(t, x.ClientID, "no client ID state for an ID the broker replaces")
	require.Len(t, x.Failures.Keys, 1, "no count under the empty client ID")
	assert.Equal(t, "ip", x.Failures.Keys[0].Scope)

	// The other half of what explain says: with allow_zero_length_clientid
	// false the broker itself refuses the empty ID (MQTT 3.1.1 "identifier
	// rejected"), before the plugin sees the client.
	e2 := attackEnv(t, func(context.Context, *redis.Client) {}, "allow_zero_length_clientid false")
	require.EqualValues(t, 2, e2.connect(as("127.0.64.2", "", "alice", "alice-pw")), "identifier rejected by the broker")
}

// A key of another type than string under a list prefix bans nothing: the
// replica skips it (and logs it). explain must still answer for a client
// it would match, as the broker does.
func TestAttackExplainWrongTypeKey(t *testing.T) {
	bin := buildGuardctl(t)
	e := attackEnv(t, func(ctx context.Context, rdb *redis.Client) {
		require.NoError(t, rdb.SAdd(ctx, "guard:block:cidr:127.0.65.0/24", "oops").Err())
	})

	require.EqualValues(t, accepted, e.connect(as("127.0.65.1", "dev-a", "alice", "alice-pw")), "a set bans nothing")

	out := guardctlRun(t, bin, nil, "explain", "--config", e.broker.ConfPath, "--ip", "127.0.65.1")
	assert.Contains(t, verdictLine(t, out), "accepted", "%s", out)
	assert.Equal(t, "accepted: no entry", verdictLine(t, out))
	assert.Contains(t, out, "  guard:block:cidr:127.0.65.0/24: bans nothing: holds a set, not a string (the plugin skips it, and logs it once)\n")
	assert.Contains(t, out, "ip 127.0.65.1: 0 counted", "explain carries on past the key")
	assert.True(t, e.broker.WaitOutput(`replica: skipping key "guard:block:cidr:127.0.65.0/24": it holds another type than a string`, 5*time.Second),
		"the plugin says the same")
}
