package conflicts

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logline"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// atk53: a README audit (commit 648f3ea).

// Was a DEFECT of the README (fixed there): Log lines said every value a
// client chose is "cut at 200 bytes"; a finding's principals (usernames
// clients chose) are quoted up to 2000 bytes (findingListMax). The README
// now gives that bound.
func TestAtk53FindingPrincipalsCutAt2000(t *testing.T) {
	var ps []string
	for i := 0; i < 20; i++ {
		ps = append(ps, strings.Repeat(string(rune('a'+i)), 250))
	}
	f := &store.Finding{ID: "1-0", Reason: "DUPLICATE_CLIENT_ID_ACROSS_CONNECTIONS", Severity: "HIGH",
		Kind: store.KindCrossPrincipal, Action: "flagged", ClientID: "dev-1", Count: 1,
		Principals:  ps,
		Connections: []store.Conn{{IP: "192.0.2.1", Broker: "b1"}, {IP: "192.0.2.2", Broker: "b1"}}}
	line := describeFinding(f)
	ev, err := logline.Parse(line)
	if err != nil {
		t.Fatalf("%v: %s", err, line)
	}
	p := ev.Get("principals")
	t.Logf("principals: %d bytes", len(p))
	assert.LessOrEqual(t, len(p), 2000, "README: a finding's principals are cut at 2 000 bytes")
	assert.Greater(t, len(p), 1500, "cut near the bound, not dropped")
}
