package main

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// An empty client ID reaches the plugin as the broker's own (auto- and a
// UUID: 41 bytes), so under a clientid_max_bytes below that the plugin
// refuses every such client (e2e TestZZAtk16AssignedIDOverTheBound), and
// if the broker does not assign one it refuses the CONNECT itself. explain
// said "accepted: no entry" for it (atk17, README-only attack).
func TestAtk17ExplainEmptyIDUnderTheBound(t *testing.T) {
	t.Setenv(passwordEnv, "")
	r := testenv.StartRedis(t)
	conf := writeConf(t, "auth_plugin /usr/lib/mosquitto_guard.so\nauth_opt_password_file /nonexistent\n"+
		"auth_opt_clientid_max_bytes 40\n")

	code, out, errOut := explainRun(t, "--redis-addr", r.Addr, "--config", conf, "--clientid", "", "--ip", "192.0.2.1")
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "Verdict: refused: clientid-too-long", out)

	code, out, errOut = explainRun(t, "--redis-addr", r.Addr, "--config", conf, "--clientid", "", "--json")
	require.Equal(t, exitOK, code, errOut)
	var doc struct {
		Verdict struct{ Result, Line, Rule string } `json:"verdict"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &doc), out)
	assert.Equal(t, "refused", doc.Verdict.Result)
	assert.Equal(t, "clientid-too-long", doc.Verdict.Rule)

	// At 41 the broker's ID fits: accepted, as the plugin does.
	code, out, errOut = explainRun(t, "--redis-addr", r.Addr, "--config", conf, "--clientid", "", "--clientid-max-bytes", "41")
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "Verdict: accepted: no entry", out)
}
