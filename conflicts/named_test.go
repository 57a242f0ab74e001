package conflicts

import (
	"context"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// warmFolding connects and disconnects each device three times, each pair
// in a batch of its own, so that the next pair of each is folded away: its
// client ID read quiet and its principal's use recorded fresh (as
// BenchmarkWorkerReconnects warms its devices).
func warmFolding(t *testing.T, tr *Tracker, clk *clock, devices []string) {
	t.Helper()
	for range 3 {
		for _, d := range devices {
			c := tr.NewConn("alice", "192.0.2.7", clk.now())
			require.NoError(t, tr.handle(context.Background(), []event{{kind: evConnect, clientID: d, conn: c}, {kind: evDisconnect, clientID: d, conn: c}}))
		}
	}
}

// Issue 12: a device reconnecting in a loop, its connect and disconnect
// folded away in one batch, costs the worker no string: the connections'
// IDs and IP texts are formatted only for those a write or a finding
// shows. Before, every batch's connections were named, one allocation a
// batch and a third of the worker's time per reconnect
// (BenchmarkWorkerReconnects: 41 B and 0.53 µs an op, now 0 B and 0.33).
func TestFoldedPairsNameNothing(t *testing.T) {
	m := newMemStore()
	tr, clk, _ := tracker(t, m, testOptions())
	var devices []string
	for i := range 32 {
		devices = append(devices, "device-"+strconv.Itoa(i))
	}
	warmFolding(t, tr, clk, devices)
	var batch []event
	for _, d := range devices {
		// The DISCONNECT's address in its 16 bytes, as the plugin gives it.
		c := addrConn(tr.NewConn("alice", "192.0.2.7", clk.now()))
		batch = append(batch, event{kind: evConnect, clientID: d, conn: c}, event{kind: evDisconnect, clientID: d, conn: c})
	}
	before := m.writes
	require.NoError(t, tr.handle(context.Background(), batch))
	require.Equal(t, before, m.writes, "the warmed pairs fold away: nothing to write")
	if !raceEnabled {
		assert.Equal(t, 0.0, testing.AllocsPerRun(50, func() { require.NoError(t, tr.handle(context.Background(), batch)) }))
	}
}

// Issue 12: a folded pair whose connect took a connection of this broker
// over (a local takeover) is still evaluated, its connection named: the
// duplicate finding that takeover_limit takeovers make shows both
// connections by their IDs.
func TestFoldedTakeoverIsNamed(t *testing.T) {
	m := newMemStore()
	opts := testOptions()
	tr, clk, _ := tracker(t, m, opts)
	warmFolding(t, tr, clk, []string{"dev"})
	held := tr.NewConn("alice", "192.0.2.7", clk.now())
	require.NoError(t, tr.handle(context.Background(), []event{{kind: evConnect, clientID: "dev", conn: held}}))
	var last Conn
	for range opts.TakeoverLimit {
		last = tr.NewConn("alice", "192.0.2.7", clk.now())
		pair := []event{{kind: evConnect, clientID: "dev", conn: last, other: &held}, {kind: evDisconnect, clientID: "dev", conn: last}}
		// Folded away: no write but the client ID's leaving this
		// instance's brokerconns set (held was listed there).
		require.NoError(t, tr.handle(context.Background(), pair))
	}
	require.Len(t, m.findings, 1)
	f := m.findings[0]
	assert.Equal(t, store.KindDuplicate, f.Kind)
	var ids []string
	for _, c := range f.Connections {
		ids = append(ids, c.ID)
	}
	assert.ElementsMatch(t, []string{tr.StoreConn(last).ID, tr.StoreConn(held).ID}, ids)
}
