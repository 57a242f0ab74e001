package main

import (
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// wakeAsThisThread makes the calling goroutine's thread, locked to it, the
// one wakeBroker signals, as plugin_init makes the broker's; undone at the
// test's end.
func wakeAsThisThread(t *testing.T) {
	runtime.LockOSThread()
	pid, tid, on := wake.pid.Load(), wake.tid.Load(), wake.on.Load()
	wake.pid.Store(int32(syscall.Getpid()))
	wake.tid.Store(int32(syscall.Gettid()))
	wake.on.Store(sigurgHandled())
	t.Cleanup(func() {
		wake.pid.Store(pid)
		wake.tid.Store(tid)
		wake.on.Store(on)
		runtime.UnlockOSThread()
	})
}

// A queued kick's wake ends the broker thread's wait in C (Mosquitto's
// epoll_wait) with EINTR at once, not at its timeout: Go's runtime has a
// SIGURG handler in this process, as in the broker's.
func TestWakeEndsTheWaitInC(t *testing.T) {
	require.True(t, sigurgHandled(), "Go's runtime handles SIGURG")
	wakeAsThisThread(t)
	withTickSeen(t, true)
	t.Cleanup(func() { drainAll(0) })
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(20 * time.Millisecond)
		enqueueKick(0, 1, "wake-test") // no such instance: dropped when drained
	}()
	start := time.Now()
	err := waitInC(2000)
	took := time.Since(start)
	<-done
	require.Equal(t, syscall.EINTR, err, "the wait was not interrupted (%v)", took)
	require.Less(t, took, time.Second, "the wait ran to its timeout")
	t.Logf("a 2 s wait in C ended after %v", took)
}

// The wake is level-triggered: while a kick stays queued (its TICK lost the
// signal, or the kick waits) the waker signals again every millisecond,
// every 100 ms once no TICK has taken a kick for 200 ms; it stops once the
// queue holds no kick, and never signals where no TICK would run one.
func TestWakeWhileKicksQueued(t *testing.T) {
	wakeAsThisThread(t)
	withTickSeen(t, true)
	t.Cleanup(func() { drainAll(0) })
	n := wake.sent.Load()
	for i := range 100 {
		enqueueKick(0, uintptr(i+1), "wake-test") // one waker, however many kicks
	}
	require.Eventually(t, func() bool { return wake.sent.Load()-n >= 20 }, time.Second, time.Millisecond,
		"a kick left queued is signalled again")
	time.Sleep(300 * time.Millisecond) // no TICK took one for 200 ms: every 100 ms
	m := wake.sent.Load()
	time.Sleep(250 * time.Millisecond)
	require.LessOrEqual(t, wake.sent.Load()-m, uint64(3), "the waker backs off once no TICK takes a kick")
	t.Logf("%d signals in the first 300 ms with a kick left queued, %d in the next 250", m-n, wake.sent.Load()-m)
	// A new kick meanwhile is signalled at once, not at the slow rate.
	m = wake.sent.Load()
	enqueueKick(0, 1000, "wake-test")
	require.Eventually(t, func() bool { return wake.sent.Load() > m }, 20*time.Millisecond, 100*time.Microsecond,
		"a new kick waited for the slow rate")
	drainAll(0)
	require.Zero(t, kicksQueued())
	require.Eventually(t, func() bool { return !wake.running.Load() }, time.Second, time.Millisecond, "the waker stops")
	n = wake.sent.Load()
	time.Sleep(20 * time.Millisecond)
	require.Equal(t, n, wake.sent.Load(), "no signal once no kick is queued")

	// After the plugin's cleanup (the broker stopping, no TICK to come) the
	// waker exits and sends nothing.
	enqueueKick(0, 1, "wake-test")
	wakeStop()
	require.Eventually(t, func() bool { return !wake.running.Load() }, time.Second, time.Millisecond, "the waker stops at cleanup")
	n = wake.sent.Load()
	enqueueKick(0, 2, "wake-test")
	time.Sleep(10 * time.Millisecond)
	require.Equal(t, n, wake.sent.Load(), "a signal after the cleanup")
	drainAll(0)
	wake.on.Store(sigurgHandled())

	// Without a TICK ever seen (per_listener_settings true on 2.0.11 to
	// 2.0.14) nothing would run the kick: no signal.
	setTickSeen(false)
	enqueueKick(0, 1, "wake-test")
	time.Sleep(10 * time.Millisecond)
	require.Equal(t, n, wake.sent.Load(), "a signal though no TICK would run the kick")
	require.False(t, wake.running.Load())
}

// withTickSeen sets whether TICK is delivered, for the test.
func withTickSeen(t *testing.T, seen bool) {
	was := tickSeen()
	setTickSeen(seen)
	t.Cleanup(func() { setTickSeen(was) })
}
