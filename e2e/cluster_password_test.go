package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// startCheckCluster is a 3-node Redis Cluster for a test of the start check
// against it (the broker started by atk55Run); skipped with -short.
func startCheckCluster(t *testing.T) *testenv.Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("forms a Redis Cluster")
	}
	testenv.Need(t, "mosquitto", "redis-server", "redis-cli", "stdbuf")
	return testenv.StartRedisCluster(t, 3)
}

// clusterConf is a broker's configuration with the guard on cl, and extra
// lines.
func clusterConf(cl *testenv.Cluster, extra ...string) string {
	conf := "allow_anonymous false\nauth_plugin " + pluginPath + "\nauth_opt_redis_addr " + cl.Addrs + "\n"
	for _, l := range extra {
		conf += l + "\n"
	}
	return conf
}

// optionLines are out's lines naming option name.
func optionLines(out, name string) []string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "mosquitto-guard: option "+name) {
			lines = append(lines, l)
		}
	}
	return lines
}

// A Redis Cluster one of whose three nodes takes another password (a
// rotation done on two of them) stops the broker at start with one line
// naming redis_password and that node: before ef3306d it started, the
// start check's PING having met a node that took the password, and a
// third of the plugin's keys (bans, counts, tracking) stayed out of reach
// for as long as it ran. The same cluster with every node agreeing starts.
func TestClusterNodeWithAnotherPasswordStopsTheBroker(t *testing.T) {
	cl := startCheckCluster(t)
	for i, n := range cl.Nodes {
		pass := "right-secret"
		if i == 2 {
			pass = "rotated-secret"
		}
		n.CLI("CONFIG", "SET", "requirepass", pass)
	}
	conf := clusterConf(cl, "auth_opt_redis_password right-secret")
	exited, out := atk55Run(t, conf, 6*time.Second)
	assert.True(t, exited, "the broker should stop:\n%s", out)
	lines := optionLines(out, "redis_password")
	if assert.Len(t, lines, 1, "one line naming redis_password:\n%s", out) {
		assert.Contains(t, lines[0], "WRONGPASS")
		if strings.Contains(lines[0], "(GET ") { // not the PING's refusal, which met that node first
			assert.Contains(t, lines[0], cl.Nodes[2].Addr, "the node that refused")
		}
	}
	assert.NotContains(t, out, "right-secret", "a password shown")
	assert.NotContains(t, out, "rotated-secret", "a password shown")

	cl.Nodes[2].CLI("-a", "rotated-secret", "--no-auth-warning", "CONFIG", "SET", "requirepass", "right-secret")
	exited, out = atk55Run(t, conf, 3*time.Second)
	require.False(t, exited, "control: every node takes the password:\n%s", out)
	require.Contains(t, out, "mosquitto-guard: ready", "control")
}
