package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// walkOpen reports whether a reload's walk is still open for a client
// known to it.
func walkOpen() bool {
	return reload.InWalk(func(uint64) bool { return true }, func() int { return 0 }, false)
}

// TICK enters Go only when there is work: the first after a RELOAD, and
// any while the broker-thread queue holds work. An idle TICK, which under
// load fires every few CONNECTs, costs no callback into Go.
func TestTickEntersGoOnlyForWork(t *testing.T) {
	const noInstance = 0
	tickFromBroker(noInstance) // the first TICK comes in: TICK is delivered
	tickFromBroker(noInstance) // nothing queued: the flag is clear now

	// A walk opened behind the C side's back: a TICK that came into Go
	// would close it.
	reload.Reloaded()
	for range 3 {
		tickFromBroker(noInstance)
	}
	assert.True(t, walkOpen(), "an idle TICK came into Go")

	// Work queued: the next TICK comes in, drains it, and closes the walk.
	enqueueKick(12345, 1, "gone") // an instance that is not there: dropped when drained
	tickFromBroker(noInstance)
	assert.False(t, walkOpen(), "the TICK after work was queued stayed out of Go")
	logs.mu.Lock()
	assert.Empty(t, logs.lines, "drained")
	logs.mu.Unlock()

	// A RELOAD's walk is ended by the first TICK after it.
	reloadFromBroker(noInstance)
	assert.True(t, walkOpen())
	tickFromBroker(noInstance)
	assert.False(t, walkOpen(), "the first TICK after a RELOAD stayed out of Go")

	// And idle again.
	reload.Reloaded()
	tickFromBroker(noInstance)
	assert.True(t, walkOpen(), "an idle TICK came into Go")
	reload.Tick()
}
