package e2e

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// reloaded sends SIGHUP and waits for the broker's "Reloading config." line.
func (e *env) reloaded() {
	e.t.Helper()
	n := strings.Count(e.broker.Output(), "Reloading config.")
	e.broker.Reload()
	eventually(e.t, 10*time.Second, func() bool { return strings.Count(e.broker.Output(), "Reloading config.") > n }, "no reload")
}

// TestHostileReloadRemovedUserConnectingDuringTheReadIsKicked: a client
// connecting as a user the new file removes, after the SIGHUP and before
// the late read is applied, is checked against the users loaded before and
// let in; once the file is in force it must be kicked like the ones
// connected before the SIGHUP.
func TestHostileReloadRemovedUserConnectingDuringTheReadIsKicked(t *testing.T) {
	e := newEnv(t)
	e.writeFiller(200_000, "alice", "bob")
	e.broker.Reload()
	e.logLine("loaded 200002 users")

	e.writeFiller(200_000, "bob") // alice removed
	e.reloaded()
	late, code := e.dial(as("127.0.45.1", "dev-alice-late", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code, "the read was applied already: no window to test")
	require.NotContains(t, e.broker.Output(), "loaded 200001 users", "connected before the apply")
	e.logLine("loaded 200001 users")
	e.logLine("event=kicked", `client_id="dev-alice-late"`, "rule=user-changed")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	eventually(t, 5*time.Second, func() bool { return late.Ping(ctx) != nil }, "alice, connected during the read, escaped the kick")
}

// TestHostileReloadStormEndsWithTheLastFile: ten SIGHUPs in a second while
// a 200 000-user file is read, the file changed halfway (alice removed,
// then the original back). Each SIGHUP holds the broker thread at most
// 100 ms (a connected client's PINGs are answered meanwhile); once the
// storm is over the users in force are the last file's (alice can connect,
// 200 002 users loaded last), and bob, in every file, stays connected.
func TestHostileReloadStormEndsWithTheLastFile(t *testing.T) {
	e := newEnv(t)
	e.writeFiller(200_000, "alice", "bob")
	e.broker.Reload()
	e.logLine("loaded 200002 users")
	orig, err := os.ReadFile(e.passwd)
	require.NoError(t, err)

	bob, code := e.dial(as("127.0.46.2", "dev-bob", "bob", "bob-pw"))
	require.EqualValues(t, accepted, code)
	e.writeFiller(200_000, "bob") // alice removed
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// bob PINGs throughout the storm; worst is the longest wait for an answer.
	var worst time.Duration
	stop := make(chan struct{})
	pinged := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				pinged <- nil
				return
			default:
			}
			start := time.Now()
			if err := bob.Ping(ctx); err != nil {
				pinged <- err
				return
			}
			if d := time.Since(start); d > worst {
				worst = d
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	for i := 0; i < 10; i++ {
		if i == 5 {
			require.NoError(t, os.WriteFile(e.passwd+".new", orig, 0o600))
			require.NoError(t, os.Rename(e.passwd+".new", e.passwd))
		}
		e.broker.Reload()
		time.Sleep(100 * time.Millisecond)
	}
	close(stop)
	require.NoError(t, <-pinged)
	t.Logf("10 SIGHUPs in 1 s: worst PING %v", worst.Round(time.Millisecond))
	assert.Less(t, worst, 600*time.Millisecond)

	// Settled: the last "loaded" line names the last file, and alice is let in.
	eventually(t, 30*time.Second, func() bool {
		out := e.broker.Output()
		i := strings.LastIndex(out, "mosquitto-guard: loaded ")
		return i >= 0 && strings.HasPrefix(out[i:], "mosquitto-guard: loaded 200002 users") &&
			strings.Count(out, "mosquitto-guard: loaded ") >= 3 && e.connect(as("127.0.46.1", "dev-alice", "alice", "alice-pw")) == accepted
	}, "the users in force are not the last file's:\n%s", e.broker.Output())
	time.Sleep(3 * time.Second) // any read still queued ends
	i := strings.LastIndex(e.broker.Output(), "mosquitto-guard: loaded ")
	assert.True(t, strings.HasPrefix(e.broker.Output()[i:], "mosquitto-guard: loaded 200002 users"))
	require.EqualValues(t, accepted, e.connect(as("127.0.46.1", "dev-alice", "alice", "alice-pw")))
	require.NoError(t, bob.Ping(ctx), "bob, in every file, was disconnected")
	assert.NotContains(t, e.broker.Output(), `client_id="dev-bob"`+" rule=user-changed")
}

// TestHostileReloadSIGTERMDuringARead: the broker stopped while a SIGHUP's
// read of a large password file is under way exits at once; it waited for
// the read (closeBound, 1.5 s) and warned of background work on redis.
func TestHostileReloadSIGTERMDuringARead(t *testing.T) {
	e := newEnv(t)
	e.writeFiller(600_000, "alice", "bob") // about 3 s to read
	e.reloaded()
	e.logLine("not read within")
	start := time.Now()
	require.NoError(t, e.broker.Signal(syscall.SIGTERM))
	_, ok := e.broker.Wait(10 * time.Second)
	took := time.Since(start)
	require.True(t, ok, "the broker did not exit")
	t.Logf("SIGTERM during a password file read: exited after %v", took.Round(time.Millisecond))
	assert.Less(t, took, time.Second)
	assert.NotContains(t, e.broker.Output(), "background work on redis")
}
