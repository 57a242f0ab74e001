package conflicts

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logline"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// atk53: a README audit (commit 648f3ea).

// DEFECT (a figure). README, Log lines (line 947-950): "every value a client
// chose (client_id, username, cert_subject) or an operator wrote (reason)
// comes after them, cut at 200 bytes at a character boundary, followed by
// its full length when cut". A finding's `principals` are the usernames
// clients chose (in tracking form, up to 256 bytes each), and its line
// quotes them up to 2000 bytes (conflicts/findings.go:60-63,
// findingListMax), not 200: two 250-byte usernames give a 500-byte value.
func TestAtk53FindingPrincipalsCutAt200(t *testing.T) {
	a, b := strings.Repeat("a", 250), strings.Repeat("b", 250)
	f := &store.Finding{ID: "1-0", Reason: "DUPLICATE_CLIENT_ID_ACROSS_CONNECTIONS", Severity: "HIGH",
		Kind: store.KindCrossPrincipal, Action: "flagged", ClientID: "dev-1", Count: 1,
		Principals:  []string{a, b},
		Connections: []store.Conn{{IP: "192.0.2.1", Broker: "b1"}, {IP: "192.0.2.2", Broker: "b1"}}}
	line := describeFinding(f)
	ev, err := logline.Parse(line)
	if err != nil {
		t.Fatalf("%v: %s", err, line)
	}
	p := ev.Get("principals")
	t.Logf("principals: %d bytes", len(p))
	assert.LessOrEqual(t, len(p), 200, "README: a value a client chose is cut at 200 bytes")
}
