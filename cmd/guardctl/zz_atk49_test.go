package main

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// HOLDS: guardctl unban at the tracking form's edge. A 256-byte client ID
// is its own form: unban deletes its key alone, and leaves the key by its
// SHA-256 (another value's). A 257-byte one deletes its automatic ban by
// its form. guardctl ban of a long value names the value itself, and
// unban deletes that key and the automatic one. Unban of the long value
// leaves the automatic ban of the literal "sha256:<hex>" claim (its form
// is another hash).
func TestAtk49UnbanEdges(t *testing.T) {
	t.Setenv(passwordEnv, "")
	r := testenv.StartRedis(t)
	c := client(t, r.Addr)
	ctx := context.Background()
	set := func(k string) { require.NoError(t, c.Set(ctx, k, "auto: failed authentication", time.Hour).Err()) }
	keysNow := func() []string { ks := allKeys(t, c); slices.Sort(ks); return ks }

	v256 := strings.Repeat("a", 256)
	hashOf256 := "sha256:" + strings.TrimPrefix(keys.Tracking(v256+"\x00"), "sha256:") // some other form
	set("u:block:clientid:" + v256)
	set("u:block:clientid:" + hashOf256)
	code, out, errOut := ctl(t, r.Addr, "u:", "unban", "clientid", v256)
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "unbanned u:block:clientid:"+v256+"\n", out)
	assert.Equal(t, []string{"u:block:clientid:" + hashOf256}, keysNow())
	require.NoError(t, c.FlushAll(ctx).Err())

	v257 := strings.Repeat("a", 257)
	set("u:block:clientid:" + keys.Tracking(v257))
	code, out, errOut = ctl(t, r.Addr, "u:", "unban", "clientid", v257)
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "unbanned u:block:clientid:"+keys.Tracking(v257)+"\n", out)
	assert.Empty(t, keysNow())

	long := strings.Repeat("L", 299) + "x"
	h := keys.Tracking(long)
	code, _, errOut = ctl(t, r.Addr, "u:", "ban", "clientid", long)
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, []string{"u:block:clientid:" + long}, keysNow(), "an operator's ban names the value")
	set("u:block:clientid:" + h)                // long's automatic ban
	set("u:block:clientid:" + keys.Tracking(h)) // the literal h's automatic ban
	code, out, errOut = ctl(t, r.Addr, "u:", "unban", "clientid", long)
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "unbanned u:block:clientid:"+long+"\nunbanned u:block:clientid:"+h+"\n", out)
	assert.Equal(t, []string{"u:block:clientid:" + keys.Tracking(h)}, keysNow(), "the literal form's own ban stays")
}
