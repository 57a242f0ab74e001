package conflicts

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logline"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// Hostile test of c714a05: a long client ID whose first 200 bytes hold no
// character start (continuation bytes: a client's choice) has nothing to
// quote, and Cut took the empty quote for "nothing at hand" and quoted the
// finding's ClientID, the hash, without client_id_bytes: the line read
// client_id="sha256:<hex>", as a client whose ID is that very string reads,
// where Str on the client ID (the line before) read client_id=""
// client_id_bytes=300.
func TestH13LongIDWithNothingToQuote(t *testing.T) {
	mem := newMemStore()
	c, clk, logs := tracker(t, mem, testOptions())
	id := strings.Repeat("\x80", 300)
	alice := c.NewConn("alice", "192.0.2.1", clk.now())
	bob := c.NewConn("bob", "192.0.2.2", clk.now())
	c.Connected(id, alice, nil)
	c.Connected(id, bob, nil)
	require.NoError(t, c.handle(context.Background(), c.events.Take()))
	require.Len(t, mem.findings, 1)
	line := logs.all()
	want := logline.Event("x").Str("client_id", id).String()
	want = want[strings.Index(want, "client_id="):]
	assert.Contains(t, line, want, "the line quotes the client ID as Str does")
	assert.Contains(t, line, fmt.Sprintf("client_id_bytes=%d", len(id)))
	assert.NotContains(t, line, keys.Tracking(id), "the line quotes the client ID's hash, as a client with that ID would read")
}
