package e2e

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// buildGuardctl builds cmd/guardctl into a temporary directory.
func buildGuardctl(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	bin := filepath.Join(t.TempDir(), "guardctl")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/guardctl")
	cmd.Dir = filepath.Dir(filepath.Dir(file))
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	return bin
}

// The findings the plugin writes are what guardctl audits, with the Redis
// address read from the broker's own mosquitto.conf.
func TestGuardctlAuditsPluginFindings(t *testing.T) {
	bin := buildGuardctl(t)
	e := newEnv(t)
	require.EqualValues(t, accepted, e.connect(as("127.0.30.1", "audit-me", "alice", "alice-pw")))
	e.waitLive("audit-me", 0)
	require.EqualValues(t, accepted, e.connect(as("127.0.30.2", "audit-me", "bob", "bob-pw")))
	e.waitFindings(1)

	out, err := exec.Command(bin, "audit", "--json", "--config", e.broker.ConfPath).CombinedOutput()
	require.NoError(t, err, "%s", out)
	var rep struct {
		Clients []struct {
			ClientID string `json:"clientid"`
			Findings []struct {
				Reason     string   `json:"reason"`
				Principals []string `json:"principals"`
				Count      int      `json:"count"`
			} `json:"findings"`
		} `json:"clients"`
	}
	require.NoError(t, json.Unmarshal(out, &rep), "%s", out)
	require.Len(t, rep.Clients, 1)
	assert.Equal(t, "audit-me", rep.Clients[0].ClientID)
	require.Len(t, rep.Clients[0].Findings, 1)
	f := rep.Clients[0].Findings[0]
	assert.Equal(t, "DUPLICATE_CLIENT_ID_ACROSS_CONNECTIONS", f.Reason)
	assert.Equal(t, []string{"alice", "bob"}, f.Principals)
	assert.Equal(t, 1, f.Count)

	table, err := exec.Command(bin, "audit", "--config", e.broker.ConfPath, "--since", "1d").CombinedOutput()
	require.NoError(t, err, "%s", table)
	assert.Contains(t, string(table), "1 finding for 1 client ID since")
	assert.Contains(t, string(table), `"audit-me"`)
}
