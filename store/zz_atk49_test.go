package store_test

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
	"github.com/mosquitto-guard/mosquitto-guard/store/replica"
)

// atk49Claims are client IDs around the tracking form's edges: a long one
// (L), the literal form of L (H), the literal form of H, 256 and 257
// bytes, and a short "sha256:" one.
func atk49Claims() map[string]string {
	long := strings.Repeat("L", 299) + "x"
	h := keys.Tracking(long)
	return map[string]string{
		"long": long, "H=form(long)": h, "form(H)": keys.Tracking(h),
		"256": strings.Repeat("a", 256), "257": strings.Repeat("a", 257), "sha256:dev": "sha256:dev",
	}
}

func atk49Key(kind keys.Kind, value string) string {
	return keys.Builder{Prefix: "guard:"}.List(kind, keys.ClientID, value)
}

func keyOf(m *store.Match) string {
	if m == nil {
		return ""
	}
	return m.Key
}

// HOLDS: for every pair (banned claim, connecting claim) of atk49Claims,
// with the banned claim's automatic ban written as the plugin writes it
// (keys.FailKey), the Redis lookup (store.Lookup), guardctl explain's
// reads (Matching, Resolve) and the plugin's replica agree on the block;
// and the connecting claim is refused exactly when it is the banned claim,
// or literally the key's value (README: "beside the one that claims the
// form itself"). So a stranger's failures with the literal client ID
// "sha256:<hex of L>" never ban L (its ban is by the form of that literal),
// and a 256-byte ID is never looked up by a hash. Then an operator's allow
// on the connecting claim's value lifts its refusal in all three.
func TestAtk49AutoBanFormsAgree(t *testing.T) {
	r := testenv.StartRedis(t)
	s := store.New(store.Options{Addrs: []string{r.Addr}, Timeout: 2 * time.Second}, keys.Builder{Prefix: "guard:"})
	t.Cleanup(func() { s.Close() })
	ctx := context.Background()
	claims := atk49Claims()
	for bn, banned := range claims {
		_, v, ok := keys.FailKey(keys.ClientID, netip.Addr{}, 64, banned, "")
		require.True(t, ok)
		if len(banned) <= 256 && !strings.HasPrefix(banned, "sha256:") {
			require.Equal(t, banned, v, "%s: named by itself", bn)
		} else {
			require.True(t, keys.IsTrackingHash(v), "%s: named by its form", bn)
		}
		bkey := atk49Key(keys.Block, v)
		for cn, claim := range claims {
			name := fmt.Sprintf("banned %s, connecting %s", bn, cn)
			r.CLI("FLUSHALL")
			rep := replica.New(keys.Builder{Prefix: "guard:"})
			r.CLI("SET", bkey, "auto: failed authentication")
			require.NoError(t, rep.Put(bkey, "auto: failed authentication", time.Time{}))
			q := store.Query{ClientID: claim}
			want := ""
			if claim == banned || claim == v {
				want = bkey
			}
			a, err := s.Lookup(ctx, q)
			require.NoError(t, err)
			assert.Equal(t, want, keyOf(a.Block), "%s: store.Lookup", name)
			m, err := s.Matching(ctx, q, true)
			require.NoError(t, err)
			_, mb := store.Resolve(m.Allows, m.Blocks)
			assert.Equal(t, want, keyOf(mb), "%s: explain", name)
			assert.Equal(t, want, keyOf(rep.Lookup(q, time.Now()).Block), "%s: replica", name)
			if want == "" {
				continue
			}
			akey := atk49Key(keys.Allow, claim)
			r.CLI("SET", akey, "the device")
			require.NoError(t, rep.Put(akey, "the device", time.Time{}))
			a, err = s.Lookup(ctx, q)
			require.NoError(t, err)
			assert.Nil(t, a.Block, "%s: an allow on the value lifts (store)", name)
			assert.Nil(t, rep.Lookup(q, time.Now()).Block, "%s: an allow on the value lifts (replica)", name)
			m, err = s.Matching(ctx, q, true)
			require.NoError(t, err)
			ma, mb := store.Resolve(m.Allows, m.Blocks)
			assert.Nil(t, mb, "%s: explain", name)
			assert.Equal(t, akey, keyOf(ma), "%s: explain's allow", name)
		}
	}
}
