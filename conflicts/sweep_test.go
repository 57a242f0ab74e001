package conflicts

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Quiet marks older than quietFor are forgotten by the sweep, and their
// memory with them; younger ones stay, and a reconnect within quietFor
// still skips its read.
func TestSweepQuiet(t *testing.T) {
	mem := newMemStore()
	c, clk, _ := tracker(t, mem, testOptions())
	connect := func(id string) {
		conn := c.NewConn("alice", "192.0.2.1", clk.now())
		require.NoError(t, c.handle(context.Background(), []event{{kind: evConnect, clientID: id, conn: conn}}))
	}
	for i := 0; i < 1000; i++ {
		connect(fmt.Sprintf("old-%d", i))
	}
	require.Equal(t, 1000, c.quietMarks())
	clk.advance(quietFor - time.Second)
	connect("young")
	clk.advance(2 * time.Second) // the old ones are past quietFor now
	c.sweep(clk.now().UnixMilli())
	assert.Equal(t, 1, c.quietMarks(), "only the young mark is left")
	assert.True(t, c.isQuiet("young", "alice", clk.now().UnixMilli()))
}
