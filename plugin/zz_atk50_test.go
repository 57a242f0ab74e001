package plugin

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// atk50: hostile tests of 5a21ab0 (a kick by a hashed form hashes the long
// claims outside g.mu) and keys.IsTrackingHash's edges.

func atk50LongID(tag string, i int) string {
	return fmt.Sprintf("%s-%05d-", tag, i) + strings.Repeat("L", 60_000)
}

// HOLDS: while the kick by a hashed form hashes its candidates outside
// g.mu (a few ms for 300 IDs of 60 KB), the broker thread churns: each
// candidate but the target ends, and a new client with another long ID
// takes its handle. No record is reused under the scan (limbo), so no new
// client is kicked, and the target, which the form names, is.
func TestAtk50HashedKickWithChurnKicksTargetOnly(t *testing.T) {
	for run := range 3 {
		var kr kickRecorder
		g := kickGuard(t, map[string]string{"backend": "defer"}, Output{Log: func(Level, string) {}, Kick: kr.kick})
		const n = 300
		target := 150
		for i := range n {
			admitRC(g, rc(uintptr(i+1), atk50LongID("old", i), "u"), false)
		}
		form := keys.Tracking(atk50LongID("old", target))
		key := "guard:block:clientid:" + form
		require.NoError(t, g.replica.Put(key, "operator", time.Time{}))
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			g.kickMatching(key, keys.ClientID, form)
		}()
		for i := range n {
			if i == target {
				continue
			}
			g.Disconnected(uintptr(i + 1))
			admitRC(g, rc(uintptr(i+1), atk50LongID("new", i), "u"), false)
		}
		wg.Wait()
		got := kr.all()
		assert.Equal(t, []string{atk50LongID("old", target)}, got, "run %d: kicked the target alone", run)
	}
}

// HOLDS: IsTrackingHash's edges. A block key on "sha256:" and 64
// upper-case hex digits, or on 63 or 65 hex digits (70 or 72 bytes), is no
// hashed form: it kicks the client claiming that exact value only, never
// the long client ID whose (lower-case) form it spells, nor one whose
// form it prefixes.
func TestAtk50TrackingHashEdgesExactOnly(t *testing.T) {
	long := atk50LongID("dev", 1)
	lower := keys.Tracking(long)
	require.True(t, keys.IsTrackingHash(lower))
	upper := "sha256:" + strings.ToUpper(lower[7:])
	short := lower[:70]
	longer := lower + "0"
	for _, v := range []string{upper, short, longer} {
		require.False(t, keys.IsTrackingHash(v), v)
		var kr kickRecorder
		g := kickGuard(t, map[string]string{"backend": "defer"}, Output{Log: func(Level, string) {}, Kick: kr.kick})
		admitRC(g, rc(1, long, "u"), false)
		admitRC(g, rc(2, v, "u"), false)
		admitRC(g, rc(3, "x", v), false)
		admitRC(g, rc(4, "y", long), false)
		ban(t, g, keys.ClientID, v)
		ban(t, g, keys.Username, v)
		assert.ElementsMatch(t, []string{v, "x"}, kr.all(), "value %q (%d bytes): exact claims only", v, len(v))
	}
}

// HOLDS: a block key on a username's hashed form kicks the long username
// it hashes and the client whose username is the form itself, not a
// client without a username nor one whose client ID (not username) hashes
// to it.
func TestAtk50UsernameFormKick(t *testing.T) {
	long := atk50LongID("user", 7)
	form := keys.Tracking(long)
	var kr kickRecorder
	g := kickGuard(t, map[string]string{"backend": "defer"}, Output{Log: func(Level, string) {}, Kick: kr.kick})
	admitRC(g, rc(1, "a", long), false)
	admitRC(g, rc(2, "b", form), false)
	admitRC(g, rc(3, long, "someone"), false)
	c := rc(4, "d", "")
	c.HasUsername = false
	admitRC(g, c, false)
	ban(t, g, keys.Username, form)
	assert.ElementsMatch(t, []string{"a", "b"}, kr.all())
}
