package ratelimit

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/rediserr"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// An operator's stray value under a key of the limits (atk69): the ban is
// still written, and the error names the key and is a reply about that key
// (store.IsKeyReply), which the plugin logs without taking Redis for down.
// Before, a non-numeric offences count failed the ban with Go's parse
// error, which no reply test knows: Redis was marked down, and no ban
// was written.
func TestStrayValuesUnderLimitKeys(t *testing.T) {
	ctx := context.Background()
	_, rdb := setup(t)
	kb := keys.Builder{Prefix: "guard:"}
	l := New(rdb, kb, Policy{Limit: 1, Window: time.Minute, BanTime: 10 * time.Second, BanMax: 80 * time.Second})

	require.NoError(t, rdb.Set(ctx, "guard:offences:ip:192.0.2.1", "junk", 0).Err())
	var ban *Ban
	var err error
	for i := 0; i < 3 && ban == nil; i++ {
		ban, err = l.Fail(ctx, keys.IP, "192.0.2.1")
	}
	require.NotNil(t, ban, "the ban is written: %v", err)
	assert.Equal(t, 1, ban.Offence, "a stray count is taken as none")
	require.Error(t, err, "its INCR fails")
	assert.True(t, rediserr.IsKeyReply(err), "%v", err)
	assert.Contains(t, err.Error(), `"guard:offences:ip:192.0.2.1"`)

	// A key of another type there (atk70: no ban was ever written).
	require.NoError(t, rdb.HSet(ctx, "guard:offences:ip:192.0.2.3", "f", "v").Err())
	ban = nil
	for i := 0; i < 3 && ban == nil; i++ {
		ban, err = l.Fail(ctx, keys.IP, "192.0.2.3")
	}
	require.NotNil(t, ban, "the ban is written: %v", err)
	assert.True(t, rediserr.IsKeyReply(err), "%v", err)
	assert.Contains(t, err.Error(), `"guard:offences:ip:192.0.2.3"`)

	require.NoError(t, rdb.Set(ctx, "rate:guard:fail:ip:192.0.2.2", "junk", 0).Err())
	_, err = l.Fail(ctx, keys.IP, "192.0.2.2")
	require.Error(t, err)
	assert.True(t, rediserr.IsKeyReply(err), "%v", err)
	assert.Contains(t, err.Error(), `"rate:guard:fail:ip:192.0.2.2"`)

	require.NoError(t, rdb.HSet(ctx, "rate:guard:fail:anysource:username:bob", "f", "v").Err())
	_, err = l.ThrottleFail(ctx, "bob", 3)
	if assert.Error(t, err) {
		assert.True(t, rediserr.IsKeyReply(err), "%v", err)
		assert.Contains(t, err.Error(), `"rate:guard:fail:anysource:username:bob"`)
	}
}
