package main

import (
	"runtime"
	"sync"
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

// A kick's wake ends the broker thread's wait in C (Mosquitto's epoll_wait
// or poll) with EINTR at once, not at its timeout: Go's runtime has a
// SIGURG handler in this process, as in the broker's.
func TestWakeEndsTheWaitInC(t *testing.T) {
	require.True(t, sigurgHandled(), "Go's runtime handles SIGURG")
	wakeAsThisThread(t)
	tickWork()
	tickFromBroker(0) // TICK is delivered; its entry into Go clears pending
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(20 * time.Millisecond)
		wakeBroker()
	}()
	start := time.Now()
	err := waitInC(2000)
	took := time.Since(start)
	<-done
	require.Equal(t, syscall.EINTR, err, "the wait was not interrupted (%v)", took)
	require.Less(t, took, time.Second, "the wait ran to its timeout")
	t.Logf("a 2 s wait in C ended after %v", took)
}

// One signal per TICK however many kicks are queued meanwhile (a ban of a
// whole range queues one per connection), and none before a TICK was ever
// seen.
func TestWakeOncePerTick(t *testing.T) {
	wakeAsThisThread(t)
	tickWork()
	tickFromBroker(0)
	n := wake.sent.Load()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				wakeBroker()
			}
		}()
	}
	wg.Wait()
	require.Equal(t, n+1, wake.sent.Load(), "800 kicks before the TICK: one signal")
	tickWork()
	tickFromBroker(0) // the TICK comes into Go: the next kick signals again
	wakeBroker()
	require.Equal(t, n+2, wake.sent.Load())
	// Without a TICK ever seen (per_listener_settings true on 2.0.11 to
	// 2.0.14) nothing would run the kick: no signal.
	seen := tickSeen()
	setTickSeen(false)
	t.Cleanup(func() { setTickSeen(seen) })
	wakeDone()
	wakeBroker()
	require.Equal(t, n+2, wake.sent.Load(), "a signal though no TICK would run the kick")
}
