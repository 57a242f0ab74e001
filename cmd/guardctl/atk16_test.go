package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// guardctl explain --config reads clientid_max_bytes and username_max_bytes
// and says that a client ID or username over them is refused, unchecked:
// it said "accepted: no entry" (atk16), where the plugin refuses it with
// rule=clientid-too-long before any list or password.
func TestAtk16ExplainTooLong(t *testing.T) {
	t.Setenv(passwordEnv, "")
	r := testenv.StartRedis(t)
	conf := writeConf(t, "auth_plugin /usr/lib/mosquitto_guard.so\nauth_opt_password_file /nonexistent\n"+
		"auth_opt_clientid_max_bytes 8\nauth_opt_username_max_bytes 4\n")
	long := strings.Repeat("d", 9)

	code, out, errOut := explainRun(t, "--redis-addr", r.Addr, "--config", conf, "--clientid", long, "--ip", "192.0.2.1")
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "Verdict: refused: clientid-too-long", out)
	code, out, errOut = explainRun(t, "--redis-addr", r.Addr, "--config", conf, "--clientid", "dev", "--username", "alice")
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "Verdict: refused: username-too-long", out)
	code, out, errOut = explainRun(t, "--redis-addr", r.Addr, "--config", conf, "--clientid", strings.Repeat("d", 8), "--username", "bob")
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "Verdict: accepted: no entry", "at the bound")

	code, out, errOut = explainRun(t, "--redis-addr", r.Addr, "--config", conf, "--clientid", long, "--json")
	require.Equal(t, exitOK, code, errOut)
	var doc struct {
		Verdict struct{ Result, Line, Rule string } `json:"verdict"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &doc), out)
	assert.Equal(t, "refused", doc.Verdict.Result)
	assert.Equal(t, "clientid-too-long", doc.Verdict.Rule)

	// A flag beats the file, as for every limit.
	code, out, errOut = explainRun(t, "--redis-addr", r.Addr, "--config", conf, "--clientid", long, "--clientid-max-bytes", "100")
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "Verdict: accepted: no entry")
}
