package replica

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// A Sync on a client that follows a Sentinel master (the store's failover
// client). After an ordered failover, whose old master stays alive and
// holds the subscription until the sentinels demote it, a change made on
// the new master reaches the replica within a second: the sync sees the
// master's run_id change. A user without INFO (an ACL without @dangerous)
// still gets a replica, with one warning.
func TestSyncFollowsSentinelFailover(t *testing.T) {
	sn := testenv.StartSentinel(t, testenv.SentinelOptions{})
	for _, n := range sn.Nodes {
		// ACLs are per node: both, so that the user is there after a failover.
		n.CLI("ACL", "SETUSER", "noinfo", "on", ">pw", "~*", "&*", "+@all", "-info")
	}
	open := func(user, pw string) (*Replica, *Sync, *logs) {
		st := store.New(store.Options{Addrs: strings.Split(sn.Addrs, ","), Timeout: time.Second, Username: user, Password: pw,
			SentinelMaster: sn.Name}, kb)
		t.Cleanup(func() { st.Close() })
		r := New(kb)
		var l logs
		s := NewSync(r, st.Background().Client(), Options{ResyncEvery: time.Hour, Log: l.add})
		run(t, s)
		require.Eventually(t, s.Ready, 5*time.Second, 5*time.Millisecond, "the replica never loaded")
		return r, s, &l
	}

	restricted, _, l := open("noinfo", "pw")
	old := sn.Master()
	old.CLI("SET", "guard:block:clientid:a", "x")
	require.Eventually(t, func() bool { return restricted.Lookup(q("a", "", ""), time.Now()).Block != nil }, time.Second, 5*time.Millisecond)
	assert.Equal(t, 1, l.count("replica: cannot read the Sentinel master's run_id"), "%q", l.lines)

	r, _, l := open("", "")
	require.True(t, old.WaitReplicas(1, 2*time.Second), "the replica has a before the failover")
	next := sn.Failover(15 * time.Second)
	failedOver := time.Now()
	next.CLI("SET", "guard:block:clientid:after", "x")
	require.Eventually(t, func() bool { return r.Lookup(q("after", "", ""), time.Now()).Block != nil }, time.Second, 5*time.Millisecond,
		"a change on the new master reaches the replica within 1 s of the failover")
	t.Logf("a change on the new master reached the replica %s after the failover", time.Since(failedOver).Round(time.Millisecond))
	// Three fresh-clone CI runs of nine found it missing here: a test of
	// another package had killed a Sentinel master whose port FreePort then
	// gave to one of these nodes, and that test's sentinels made the node
	// their replica (its keys flushed). testenv now holds a killed server's
	// port (TestStoppedRedisPortStaysHeld); the roles below say if a node
	// ever follows a master not of this test again. A later failure here
	// had another cause: the wait above was a WAIT from a new redis-cli,
	// which waits for nothing, and a failover within a second of the
	// sentinels settling promoted a replica that had not been sent a yet
	// (now WaitReplicas, and StartSentinel waits for an acknowledged write).
	if !assert.NotNil(t, r.Lookup(q("a", "", ""), time.Now()).Block, "what was replicated before stays") {
		for _, n := range sn.Nodes {
			role, _ := n.TryCLI("ROLE")
			t.Logf("node %s: ROLE %q", n.Addr, role)
		}
	}
	assert.Equal(t, 1, l.count("replica: the Sentinel master changed (a failover)"), "%q", l.lines)
}
