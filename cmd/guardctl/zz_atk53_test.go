package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// atk53: a README audit (commit 648f3ea): guardctl's usage text against the
// README.

// DEFECT. README line 220: "guard:allow:clientid:<client id>,
// guard:allow:username:<username> | what the client claims: exempt only
// from `clientid` and `username` bans; never from an `ip` or `cidr` ban,
// and its failures count like anyone's", and line 356 (claims lift "only
// `clientid` and `username` bans", failures "counted like anyone's"). The
// usage text an operator reads before `guardctl allow clientid
// plant-gateway` (README line 276) says the opposite: `guardctl -h`
// "allow    exempt a client ID, username, IP or range from every ban"
// (cmd/guardctl/main.go:36) and `guardctl allow -h` "Clients matching it
// are exempt from every ban and from automatic banning" (edit.go:82), for
// every scope.
func TestAtk53AllowUsageAgreesWithTheAllowlistClaims(t *testing.T) {
	var out, errb bytes.Buffer
	require.Equal(t, exitOK, run([]string{"allow", "-h"}, &out, &errb))
	sub := out.String() + errb.String()
	out.Reset()
	errb.Reset()
	run([]string{"-h"}, &out, &errb)
	top := out.String() + errb.String()
	for _, l := range strings.Split(top, "\n") {
		if strings.Contains(l, "allow ") && strings.Contains(l, "every ban") {
			t.Logf("guardctl -h: %s", strings.TrimSpace(l))
		}
	}
	assert.False(t, strings.Contains(strings.Join(strings.Fields(sub), " "), "exempt from every ban and from automatic banning"),
		"README: an allow entry on a client ID or username lifts only clientid and username bans, and its failures count")
	assert.False(t, strings.Contains(top, "exempt a client ID, username, IP or range from every ban"),
		"README: an allow entry on a client ID or username lifts only clientid and username bans")
}
