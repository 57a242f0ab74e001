package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// A kick that a drain puts back (its connection is the client whose
// BASIC_AUTH is running: the broker has not yet put it under its client ID)
// is neither counted as taken nor lost: it stays queued, the waker keeps
// signalling for it, and the next drain that may take it does. Counted as
// taken, it would tell the waker that TICKs run kicks while this one waits.
func TestPutBackKickIsNotTaken(t *testing.T) {
	testenv.Need(t, "redis-server", "mosquitto_passwd")
	redis := testenv.StartRedis(t)
	dir := t.TempDir()
	ab := newAuthBench(t, redis, dir, passwdHash(t, dir), 1, "flag")
	wakeAsThisThread(t)
	withTickSeen(t, true)
	t.Cleanup(resetQueue)

	c := ab.client(0, "putback-1")
	ab.connect(t, c)
	redis.CLI("SET", "guard:block:clientid:putback-1", "test")
	require.Eventually(t, func() bool { return kicksQueued() == 1 }, 5*time.Second, 5*time.Millisecond,
		"the ban of a connected client queues its kick")
	taken := kicksTaken()

	drainAll(uintptr(c.handle)) // this connection's own BASIC_AUTH: its kick waits
	require.EqualValues(t, 1, kicksQueued(), "the kick put back is still queued")
	require.Equal(t, taken, kicksTaken(), "a kick put back was counted as taken")
	n := wake.sent.Load()
	require.Eventually(t, func() bool { return wake.sent.Load() > n }, time.Second, time.Millisecond,
		"the kick put back is not signalled again")

	// The connection ends before a TICK runs the kick: the next drain drops
	// it (KickDue: not due), and that counts as taken.
	ab.disconnect(c)
	drainAll(0)
	require.Zero(t, kicksQueued())
	require.Equal(t, taken+1, kicksTaken())
	require.Eventually(t, func() bool { return !wake.running.Load() }, time.Second, time.Millisecond, "the waker stops")
}
