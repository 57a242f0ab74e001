package plugin

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logline"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// badLines collects every event line a test's logger saw that is not in
// logline's shape, or that is in one of the shapes before it; TestMain
// fails the package on any, so that every refusal, ban, throttle, kick and
// summary line any test provokes is held to the shape.
var badLines struct {
	mu    sync.Mutex
	lines []string
}

// oldShapes start the lines of the shapes before logline.
var oldShapes = []string{"refused ", "banned ", "throttling ", "kicking ", "finding ", "automatic ban of "}

func checkEventLine(msg string) {
	rest, ok := strings.CutPrefix(msg, logline.Prefix)
	if !ok {
		return
	}
	bad := false
	if strings.HasPrefix(rest, "event=") {
		f, err := logline.Parse(msg)
		bad = err != nil
		switch f.Get("event") {
		case "refused", "banned", "kicked", "refusals_suppressed":
			bad = bad || len(f.Keys) < 2 || (f.Keys[1] != "ip" && f.Keys[1] != "cidr" && f.Keys[1] != "source")
		}
	}
	for _, o := range oldShapes {
		bad = bad || strings.HasPrefix(rest, o) || strings.Contains(rest, " more refusals from ")
	}
	if bad {
		badLines.mu.Lock()
		badLines.lines = append(badLines.lines, msg)
		badLines.mu.Unlock()
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if len(badLines.lines) > 0 {
		fmt.Fprintf(os.Stderr, "event lines not in logline's shape:\n%s\n", strings.Join(badLines.lines, "\n"))
		code = 1
	}
	os.Exit(code)
}

// TestEventLinesKeepClientValuesLast: whatever a client sends, a refusal
// line starts event=refused ip=<its address>, every value it chose comes
// back whole from a parse, and none becomes a key of its own.
func TestEventLinesKeepClientValuesLast(t *testing.T) {
	hostile := `x" ip=10.9.9.9 rule="bad-password` + "\nmosquitto-guard: event=refused ip=10.9.9.9 "
	c := Client{Address: "192.0.2.1", ClientID: hostile, Username: hostile, HasUsername: true, CertID: "ab", CertSubject: hostile}
	ip := netip.MustParseAddr("192.0.2.1")
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	m := &store.Match{Key: "guard:block:username:" + hostile, Reason: hostile, TTL: time.Minute}
	line := clientFields(matchFields(clientLine("refused", &c, ip), m, now), &c).Str("reason", m.Reason).String()
	require.NotContains(t, line, "\n")
	f, err := logline.Parse(line)
	require.NoError(t, err, line)
	assert.Equal(t, []string{"event", "ip", "rule", "origin", "expires", "expires_in", "cert_id", "client_id", "username", "cert_subject", "reason"}, f.Keys)
	assert.Equal(t, "192.0.2.1", f.Get("ip"))
	for _, k := range []string{"client_id", "username", "cert_subject", "reason"} {
		assert.Equal(t, hostile, f.Get(k), k)
	}
	assert.Equal(t, "2026-12-01T00:01:00Z", f.Get("expires"))
	// An address that is not an IP is quoted, still second.
	f, err = logline.Parse(clientLine("refused", &Client{Address: "a b"}, netip.Addr{}).String())
	require.NoError(t, err)
	assert.Equal(t, "a b", f.Get("ip"))
}
