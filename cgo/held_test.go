package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/plugin"
)

// A DISCONNECT is held in C (no callback into Go of its own) and handled
// first by the next callback that enters Go: the next CONNECT, at the same
// client pointer too, sees the connection gone, and a TICK handles held
// ones. Past GUARD_PENDING_MAX, plugin.c enters Go at once.
func TestHeldDisconnects(t *testing.T) {
	testenv.Need(t, "redis-server", "mosquitto_passwd")
	redis := testenv.StartRedis(t)
	dir := t.TempDir()
	ab := newAuthBench(t, redis, dir, passwdHash(t, dir), 2, "off")
	live := func(c authClient, walk uint64) bool { // ReloadVisit: a live connection not visited by walk n
		pc := plugin.Client{Handle: uintptr(c.handle), ClientID: goString(c.id)}
		return ab.in.guard.ReloadVisit(&pc, walk)
	}
	a, b := ab.client(0, "dev-a"), ab.client(1, "dev-b")
	ab.connect(t, a)
	require.True(t, live(a, 1000))

	// Held: the guard has not heard of it yet.
	require.True(t, holdDisconnect(uintptr(ab.h), uintptr(a.handle), false))
	seenDel(uintptr(a.handle))
	assert.True(t, live(a, 1001), "handled before any callback")

	// The next CONNECT (another client) handles it first.
	ab.connect(t, b)
	assert.False(t, live(a, 1002), "the held DISCONNECT was not handled by the next CONNECT")

	// A new client at the freed pointer is a new connection, not the
	// broker re-checking the old one (which would not admit it).
	require.True(t, holdDisconnect(uintptr(ab.h), uintptr(b.handle), false))
	seenDel(uintptr(b.handle))
	again := ab.client(1, "dev-b-new") // the same pointer as b
	ab.connect(t, again)
	assert.True(t, live(again, 1003), "the new client at b's pointer was not admitted")

	// A TICK handles held ones.
	require.True(t, holdDisconnect(uintptr(ab.h), uintptr(again.handle), false))
	seenDel(uintptr(again.handle))
	tickFromBroker(uintptr(ab.h))
	assert.False(t, live(again, 1004), "the TICK after a held DISCONNECT did not handle it")

	// The bound: GUARD_PENDING_MAX held, then no room.
	n := 0
	for holdDisconnect(uintptr(ab.h), 0x1000+uintptr(n)*16, false) {
		n++
	}
	assert.Equal(t, 1024, n)
	handleHeld()
	assert.True(t, holdDisconnect(uintptr(ab.h), 0x1000, false), "room again once handled")
	handleHeld()
}

// A new CONNECT at a pointer the denied set names (a banned client that
// left) is seen, and no longer denied: the set names the one that left.
func TestConnectClearsDenied(t *testing.T) {
	testenv.Need(t, "redis-server", "mosquitto_passwd")
	redis := testenv.StartRedis(t)
	dir := t.TempDir()
	ab := newAuthBench(t, redis, dir, passwdHash(t, dir), 1, "off")
	c := ab.client(0, "dev-a")
	require.True(t, deniedAdd(uintptr(c.handle)))
	ab.connect(t, c)
	assert.True(t, seenHas(uintptr(c.handle)))
	assert.False(t, deniedTake(uintptr(c.handle)), "still denied after a new CONNECT at its pointer")
	ab.disconnect(c)
}
