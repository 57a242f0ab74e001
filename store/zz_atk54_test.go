package store

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// atk54Hook runs before, once, ahead of the first command named name.
type atk54Hook struct {
	name   string
	before func()
}

func (h *atk54Hook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *atk54Hook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h *atk54Hook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.before != nil && strings.EqualFold(cmd.Name(), h.name) {
			f := h.before
			h.before = nil
			f()
		}
		return next(ctx, cmd)
	}
}

// DEFECT (3 of 3 runs, deterministic; a race with the plugin writing at
// the same time). 06d308b,
// store/edit.go DeleteAutoEntry: "It returns the key, whether it was
// deleted and, when it was not, whether an entry of another origin (an
// operator's) is there"; the commit: "otherwise it says an entry of
// another origin is there, and unban prints 'left <key>: not an automatic
// ban'". The origin is judged by the Lua script, but "other" is read by a
// second command (EXISTS, store/edit.go:94-98) after it: an automatic ban
// the plugin writes in between (the client failing again while the
// operator unbans it) is reported as another origin's, and guardctl tells
// the operator "left <key>: not an automatic ban (an operator's ban of
// that value itself)" of a ban that is automatic (and that the client is
// still refused by). Simulated here by a go-redis hook writing the
// plugin's value just before the EXISTS.
func TestAtk54DeleteAutoEntryRaceCallsAutomaticBanAnOperators(t *testing.T) {
	s, _ := newStore(t, "u:")
	ctx := context.Background()
	rdb := s.Client()
	long := strings.Repeat("L", 300)
	form := keys.Tracking(long)
	key := "u:block:clientid:" + form
	other := redis.NewClient(&redis.Options{Addr: rdb.(*redis.Client).Options().Addr})
	t.Cleanup(func() { other.Close() })
	rdb.AddHook(&atk54Hook{name: "exists", before: func() {
		require.NoError(t, other.Set(ctx, key, keys.AutoBanMarker+" over 1 failed authentications (offence 2)", time.Minute).Err())
	}})
	k, deleted, isOther, err := s.DeleteAutoEntry(ctx, keys.Block, keys.ClientID, form)
	require.NoError(t, err)
	require.Equal(t, key, k)
	v, _ := other.Get(ctx, key).Result()
	t.Logf("deleted=%v other=%v; the key now holds %q", deleted, isOther, v)
	assert.False(t, isOther == KeptOperators && keys.IsAutoBan(v),
		"DeleteAutoEntry says an entry of another origin (an operator's) is there; it is the plugin's automatic ban %q", v)
}
