package plugin

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// Only a scan that stands for a ban moves g.scans: a CONNECT that sees it
// move between its list check and its admit reads the lists again
// (banRaced), a cost meant for the CONNECTs a ban scan may have missed.
// The known-source rewrite and the kicks of a password file's changed users
// are no ban: before, each moved it, and every CONNECT overlapping one read
// the lists twice.
func TestOnlyBanScansMoveTheBanCounter(t *testing.T) {
	g, _, _ := rewriteGuard(t, 10)
	for i := 0; i < 10; i++ {
		require.Equal(t, Allow, g.Authenticate(rewriteClient(i, "pw")).Result)
	}
	before := g.scans.Load()
	require.NoError(t, g.rewriteKnown())
	users := g.creds.users.Load()
	g.kickChangedUsers(appliedUsers{users: users, prev: users})
	assert.Equal(t, before, g.scans.Load(), "a scan that is no ban moved the ban counter")

	g.kickMatching("guard:block:ip:192.0.2.1", keys.IP, "192.0.2.1")
	g.kickMatching("guard:block:clientid:nobody", keys.ClientID, "nobody")
	assert.Equal(t, before+2, g.scans.Load(), "a ban scan must move it")
	g.mu.Lock()
	defer g.mu.Unlock()
	assert.Zero(t, g.recs.scans, "every scan ended")
}
