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

// HOLDS: the round trip an operator makes with a long username's automatic
// ban: guardctl list shows its hashed form whole; that form, copied into
// guardctl unban username, deletes it (and nothing else). unallow of the
// long value deletes the allow key by the value only: no allow key is
// ever written or deleted by a form (allow exact only), so an allow key on
// the literal form stays.
func TestAtk50ListThenUnbanUsernameForm(t *testing.T) {
	t.Setenv(passwordEnv, "")
	r := testenv.StartRedis(t)
	c := client(t, r.Addr)
	ctx := context.Background()
	set := func(k string) { require.NoError(t, c.Set(ctx, k, "auto: failed authentication", time.Hour).Err()) }
	keysNow := func() []string { ks := allKeys(t, c); slices.Sort(ks); return ks }

	long := strings.Repeat("U", 400)
	form := keys.Tracking(long)
	set("u:block:username:" + form)
	set("u:allow:username:" + long)
	set("u:allow:username:" + form)
	code, out, errOut := ctl(t, r.Addr, "u:", "list")
	require.Equal(t, exitOK, code, errOut)
	require.Contains(t, out, form, "shown whole")
	var shown string
	for _, f := range strings.Fields(out) {
		if strings.HasPrefix(f, "sha256:") {
			shown = f
		}
	}
	require.Equal(t, form, shown)
	code, out, errOut = ctl(t, r.Addr, "u:", "unban", "username", shown)
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "unbanned u:block:username:"+form+"\n", out)
	code, out, errOut = ctl(t, r.Addr, "u:", "unallow", "username", long)
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "unallowed u:allow:username:"+long+"\n", out)
	assert.Equal(t, []string{"u:allow:username:" + form}, keysNow(), "the allow on the literal form stays")
}
