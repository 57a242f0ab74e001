package e2e

import (
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// Was a DEFECT (atk26, README), fixed in the README: it said of a
// broker's stop that "the cleanup gives it 2 s" to end the connections it
// holds. The plugin's cleanup (Guard.Close) bounds all it does by
// closeBound, 1.5 s, its wait for background work included. Pinned: with
// Redis taking no writes for 3 s from just before SIGTERM (CLIENT PAUSE
// WRITE), mosquitto still stops within that bound (and 400 ms for the
// signal and the process's exit on a loaded machine, where 200 ms were
// allowed before: a wait for Redis would take the pause's 3 s, a cleanup
// of 2 s would pass 1.9 s), alice's record keeps no end, and her live
// entry stays for the lease's reap.
func TestAtk26ShutdownReapGetsTheREADMEs2s(t *testing.T) {
	e := newEnv(t)
	_, code := e.dial(as("127.0.92.1", "held-26", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	e.waitLive("held-26", 1)

	e.redis.CLI("CLIENT", "PAUSE", "3000", "WRITE")
	start := time.Now()
	require.NoError(t, e.broker.Signal(syscall.SIGTERM))
	_, done := e.broker.Wait(5 * time.Second)
	require.True(t, done, "mosquitto did not stop")
	took := time.Since(start)
	assert.Less(t, took, 1900*time.Millisecond, "the cleanup's 1.5 s")
	time.Sleep(time.Until(start.Add(3200 * time.Millisecond))) // the pause has ended

	rec := e.seenRecord("held-26", "alice")
	require.NotNil(t, rec)
	assert.Nil(t, rec["disconnected_ms"], "the stop gave up on Redis: the lease's reap ends it")
	assert.Equal(t, "1", e.redis.CLI("HLEN", "guard:conn:held-26"))
}

// HOLDS: a broker stopping while Redis takes no writes at all does not
// hang: mosquitto exits within about closeBound (well within 3 s), and the
// live entry stays for the lease's reap.
func TestAtk26ShutdownWithRedisStalledDoesNotHang(t *testing.T) {
	e := newEnv(t)
	_, code := e.dial(as("127.0.92.2", "held-27", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	e.waitLive("held-27", 1)

	e.redis.CLI("CLIENT", "PAUSE", "6000", "WRITE")
	start := time.Now()
	require.NoError(t, e.broker.Signal(syscall.SIGTERM))
	_, done := e.broker.Wait(5 * time.Second)
	require.True(t, done, "mosquitto did not stop")
	assert.Less(t, time.Since(start), 3*time.Second)
	time.Sleep(time.Until(start.Add(6500 * time.Millisecond)))
	assert.Equal(t, "1", e.redis.CLI("HLEN", "guard:conn:held-27"))
}

// Was a DEFECT (atk26), fixed (the end is the dead lease's): a false finding after a crash and a late restart, real
// brokers (about 65 s: conflict_window's least is 1m). The broker holding
// alice's connection is killed (SIGKILL: no cleanup); it is started again
// after more than conflict_window, and its first lease renewal reaps the
// dead instance with its own time: alice's record gets an end a minute
// after her connection died (the README promises "up to broker_lease and
// one renewal after the death"). Bob taking the client ID then is flagged
// although nobody used it within the window. Before 73e75bd he was not.
func TestAtk26LateRestartFalseFinding(t *testing.T) {
	if testing.Short() {
		t.Skip("waits conflict_window")
	}
	extra := []string{"auth_opt_conflict_window 1m", "auth_opt_broker_lease 2s"}
	e := newEnv(t, extra...)
	_, code := e.dial(as("127.0.92.3", "held-28", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	e.waitLive("held-28", 1)

	require.NoError(t, e.broker.Signal(syscall.SIGKILL))
	_, done := e.broker.Wait(5 * time.Second)
	require.True(t, done)
	killed := time.Now().UnixMilli()
	time.Sleep(62 * time.Second)

	e.broker = testenv.StartMosquitto(t, e.conf(extra...))
	require.True(t, e.broker.WaitOutput("mosquitto-guard: ready", 5*time.Second))
	eventually(t, 5*time.Second, func() bool { return e.redis.CLI("HLEN", "guard:conn:held-28") == "0" }, "the dead instance is reaped")
	rec := e.seenRecord("held-28", "alice")
	require.NotNil(t, rec)
	if end, ok := rec["disconnected_ms"].(float64); ok {
		assert.LessOrEqual(t, int64(end), killed+3000, "alice's end is %d ms after the kill", int64(end)-killed)
	}

	require.EqualValues(t, accepted, e.connect(as("127.0.92.4", "held-28", "bob", "bob-pw")))
	time.Sleep(1500 * time.Millisecond) // the worker's linger and write
	assert.Empty(t, e.findings(), "nobody used held-28 within conflict_window before bob")
}
