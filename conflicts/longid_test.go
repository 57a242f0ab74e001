package conflicts

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"unicode/utf8"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// longIDOf is a client ID of n bytes, distinct for each i.
func longIDOf(i, n int) string {
	s := fmt.Sprintf("dev-%d-", i)
	return s + strings.Repeat("y", n-len(s))
}

// heapInUse is the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// The queue between the broker thread and the worker holds each event's
// client ID in its tracking form: with Redis hung (the worker stuck in a
// round trip), 2 000 connections with 60 000-byte client IDs, each
// connected and gone, held every ID whole (120 MB here; at the queue's
// 65 536 events, about 4 GB). Now an event holds at most 71 bytes of it
// and, for a connect, the 200 its finding's log line would quote.
func TestQueuedEventsHoldNoLongClientID(t *testing.T) {
	c, clk, _ := tracker(t, newMemStore(), testOptions()) // no worker: the queue only fills
	const n, size = 2000, 60000
	before := heapInUse()
	for i := 0; i < n; i++ {
		id := longIDOf(i, size)
		conn := c.NewConn("alice", "192.0.2.1", clk.now())
		c.Connected(id, conn, nil)
		c.Disconnected(id, conn)
	}
	held := int64(heapInUse()) - int64(before)
	t.Logf("%d connects and disconnects of %d-byte client IDs queued: heap +%.1f MB (%.0f bytes an event pair)", n, size, float64(held)/(1<<20), float64(held)/n)
	assert.Less(t, held, int64(n*2048), "the queue keeps the client IDs (2 KB an event pair allowed)")
	evs := c.events.Take()
	require.Len(t, evs, 2*n)
	for i, ev := range evs {
		want := keys.Tracking(longIDOf(i/2, size))
		require.Equal(t, want, ev.clientID, "event %d", i)
		if ev.kind == evConnect {
			require.NotNil(t, ev.long)
			assert.Equal(t, longIDOf(i/2, size)[:logval.Max+1], ev.long.shown)
			assert.Equal(t, size, ev.long.bytes)
		} else {
			assert.Nil(t, ev.long, "a disconnect makes no finding")
		}
	}
}

// A client ID at most keys.TrackingMax bytes is queued as it is: the same
// string, no copy, no allocation (the fleet's case, on the broker thread).
func TestQueuedShortClientIDNotCopied(t *testing.T) {
	c, clk, _ := tracker(t, newMemStore(), testOptions())
	id := strings.Repeat("d", keys.TrackingMax)
	conn := c.NewConn("alice", "192.0.2.1", clk.now())
	c.Connected(id, conn, nil) // the queue's buffers grown
	c.events.Take()
	allocs := testing.AllocsPerRun(100, func() {
		c.Connected(id, conn, nil)
		c.Disconnected(id, conn)
		c.events.Take()
	})
	assert.Zero(t, allocs)
	c.Connected(id, conn, nil)
	ev := c.events.Take()[0]
	assert.Nil(t, ev.long)
	assert.Same(t, unsafeData(id), unsafeData(ev.clientID), "the client ID copied")
	// One that reads like a hash is hashed, whatever its length, as
	// keys.Tracking does: a short ID cannot pose as a long one's form.
	fake := keys.Tracking(longIDOf(0, 60000))
	c.Connected(fake, conn, nil)
	ev = c.events.Take()[0]
	assert.Equal(t, keys.Tracking(fake), ev.clientID)
	require.NotNil(t, ev.long)
	assert.Equal(t, fake, ev.long.shown)
}

// A finding on a long client ID names it by its tracking form, as Redis
// does, and its log line quotes the client ID's first 200 bytes (cut at a
// character boundary) with its length, as for the client ID itself before.
func TestLongClientIDFinding(t *testing.T) {
	mem := newMemStore()
	c, clk, logs := tracker(t, mem, testOptions())
	id := "dev" + strings.Repeat("é", 30000) // 60 003 bytes, 2-byte characters: byte 200 is mid-character
	alice := c.NewConn("alice", "192.0.2.1", clk.now())
	bob := c.NewConn("bob", "192.0.2.2", clk.now())
	c.Connected(id, alice, nil)
	c.Connected(id, bob, nil)
	require.NoError(t, c.handle(context.Background(), c.events.Take()))
	require.Len(t, mem.findings, 1)
	f := mem.findings[0]
	assert.Equal(t, keys.Tracking(id), f.ClientID)
	assert.True(t, f.ClientIDTracked)
	live := mem.live(id)
	require.Len(t, live, 1, "the connection live under the client ID's key (one per broker)")
	assert.Equal(t, c.StoreConn(bob).ID, live[0].ID)
	line := logs.all()
	cut := id[:199] // "dev" and 98 "é"
	require.True(t, utf8.ValidString(cut))
	require.False(t, utf8.ValidString(id[:200]))
	assert.Contains(t, line, fmt.Sprintf("client_id=%q client_id_bytes=%d", cut, len(id)))
	assert.NotContains(t, line, keys.Tracking(id), "the line quotes the client ID, not its hash")
}

// unsafeData is the first byte of s's bytes, to compare strings' storage.
func unsafeData(s string) *byte { return unsafe.StringData(s) }
