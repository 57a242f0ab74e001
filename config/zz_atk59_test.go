package config

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// HOLDS (passed 3 of 3). 482b37e: config.Parse refuses redis_username
// without redis_password, and redis_sentinel_username without
// redis_sentinel_password (go-redis sends a username only with a
// password). Hostile forms: a password of blanks only (trimmed away: no
// password), the two problems at once (both named in one start), a
// username holding what looks like a URL's user:password@ (only what
// follows the last '@' is shown), and the pair in the other order (a
// password without a username is Redis's default user: accepted).
// guardctl's ParseRedis leaves the username alone (its password may come
// from GUARD_REDIS_PASSWORD).
func TestAtk59UsernameNeedsPassword(t *testing.T) {
	base := func(kv ...string) map[string]string {
		m := map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	named := func(err error) []string {
		var errs Errors
		require.True(t, errors.As(err, &errs), "%v", err)
		var out []string
		for _, e := range errs {
			var oe *OptionError
			if errors.As(e, &oe) {
				out = append(out, oe.Option)
			}
		}
		return out
	}

	_, err := Parse(base("redis_username", "guard59", "redis_password", "   \t "))
	require.Error(t, err, "a password of blanks is none")
	assert.Equal(t, []string{"redis_username"}, named(err))

	_, err = Parse(base("redis_username", "guard59", "redis_sentinel_master", "mymaster", "redis_sentinel_username", "sen59"))
	require.Error(t, err)
	assert.Equal(t, []string{"redis_username", "redis_sentinel_username"}, named(err), "both named at once")

	_, err = Parse(base("redis_username", "guard:Pw59Secret@x"))
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "Pw59Secret", "a user:password@ in redis_username shown")

	_, err = Parse(base("redis_username", "guard59", "redis_password", "k59"))
	assert.NoError(t, err, "a username with its password")
	_, err = Parse(base("redis_password", "k59"))
	assert.NoError(t, err, "a password alone: Redis's default user")
	_, err = Parse(base("redis_sentinel_master", "mymaster", "redis_sentinel_password", "s59"))
	assert.NoError(t, err, "a sentinel password alone")

	o, err := ParseRedis(base("redis_username", "guard59"))
	assert.NoError(t, err, "guardctl: the password may come later")
	assert.Equal(t, "guard59", o.RedisUsername)
	assert.False(t, strings.Contains(o.RedisPassword, "guard59"))
}
