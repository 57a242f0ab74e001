package e2e

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestAtk75ClusterNodeRefusedHSETStopsTheBroker (was a DEFECT, 2 of 2 runs;
// fixed: checkWrite asks every master on a key in its own slots): README, start
// check: "NOPERM ... for a command" names redis_username, the key commands
// of the configuration (with clientid_conflict flag, the default: HSET,
// XADD, ...) each asked. On a 3-node cluster, the probe's keys
// guard:settings-check (slot 11151, node 2) and rate:guard:settings-check
// (slot 4767, node 0) never reach node 1 (slots 5461-10922): node 1's user
// refused HSET should stop the broker naming redis_username, as it would on
// node 2. A third of the client IDs would have their tracking refused.
func TestAtk75ClusterNodeRefusedHSETStopsTheBroker(t *testing.T) {
	cl := startCheckCluster(t)
	cl.Nodes[1].CLI("ACL", "SETUSER", "default", "-hset")
	conf := clusterConf(cl)
	exited, out := atk55Run(t, conf, 4*time.Second)
	assert.True(t, exited, "the broker should stop (node 1 refuses HSET):\n%s", out)
	assert.Len(t, optionLines(out, "redis_username"), 1, "one line naming redis_username:\n%s", out)

	cl.Nodes[1].CLI("ACL", "SETUSER", "default", "+hset")
	exited, out = atk55Run(t, conf, 3*time.Second)
	require.False(t, exited, "control: every node allows HSET:\n%s", out)
	require.Contains(t, out, "mosquitto-guard: ready", "control")
}

// TestAtk75ClusterNodeReadOnlyKeysStopsTheBroker (was a DEFECT, 2 of 2
// runs; fixed as above): README: NOPERM
// for either key ("read-only ones such as %R~ where the plugin writes")
// names redis_username. redis_username guard, per-node ACLs: on node 1
// only, the user's key pattern is %R~guard:* (GETs pass, writes refused).
func TestAtk75ClusterNodeReadOnlyKeysStopsTheBroker(t *testing.T) {
	cl := startCheckCluster(t)
	for i, n := range cl.Nodes {
		keys := "~guard:*"
		if i == 1 {
			keys = "%R~guard:*"
		}
		n.CLI("ACL", "SETUSER", "guard", "on", ">atk75-secret", "resetkeys", keys, "~rate:guard:*", "+@all")
	}
	conf := clusterConf(cl, "auth_opt_redis_username guard", "auth_opt_redis_password atk75-secret")
	exited, out := atk55Run(t, conf, 4*time.Second)
	assert.True(t, exited, "the broker should stop (node 1 gives read-only keys):\n%s", out)
	assert.Len(t, optionLines(out, "redis_username"), 1, "one line naming redis_username:\n%s", out)
	assert.NotContains(t, out, "atk75-secret", "a password shown")

	cl.Nodes[1].CLI("ACL", "SETUSER", "guard", "resetkeys", "~guard:*", "~rate:guard:*")
	exited, out = atk55Run(t, conf, 3*time.Second)
	require.False(t, exited, "control: every node gives read-write keys:\n%s", out)
	require.Contains(t, out, "mosquitto-guard: ready", "control")
	assert.NotContains(t, out, "atk75-secret", "a password shown")
}

// TestAtk75ClusterHarmlessNodeDifferencesStart (HOLDS): nodes differing only
// in maxmemory/policy, protected-mode and an extra ACL user, all right for
// the plugin's user, must start.
func TestAtk75ClusterHarmlessNodeDifferencesStart(t *testing.T) {
	cl := startCheckCluster(t)
	for i, n := range cl.Nodes {
		n.CLI("ACL", "SETUSER", "guard", "on", ">atk75-secret", "resetkeys", "~guard:*", "~rate:guard:*", "+@all")
		switch i {
		case 0:
			n.CLI("CONFIG", "SET", "protected-mode", "no")
		case 1:
			n.CLI("CONFIG", "SET", "maxmemory", "200mb")
			n.CLI("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
		case 2:
			n.CLI("ACL", "SETUSER", "other", "on", ">x", "~*", "+@read")
			n.CLI("CONFIG", "SET", "hz", "50")
		}
	}
	conf := clusterConf(cl, "auth_opt_redis_username guard", "auth_opt_redis_password atk75-secret")
	exited, out := atk55Run(t, conf, 3*time.Second)
	require.False(t, exited, "harmless differences stopped the broker:\n%s", out)
	require.Contains(t, out, "mosquitto-guard: ready")
	assert.NotContains(t, out, "atk75-secret", "a password shown")
}
