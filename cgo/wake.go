package main

/*
#include <errno.h>
#include <poll.h>
#include "guard.h"

// guard_wait_test is Mosquitto's idle wait, for tests: poll on no file for
// ms, -errno if it was interrupted (cgo is not allowed in _test.go files).
static int guard_wait_test(int ms) { return poll(NULL, 0, ms) < 0 ? -errno : 0; }
*/
import "C"

import (
	"sync/atomic"
	"syscall"
	"unsafe"
)

// A kick waits for the broker's next TICK, the end of its loop iteration.
// An idle broker sits in epoll_wait for up to 100 ms between iterations,
// and a banned connection's packet that wakes it first is handled before
// that TICK: a PUBREL among them releases a QoS 2 message the client sent
// before its ban, which Mosquitto delivers with no ACL check (atk78;
// TestAtk78QoS2ReleasedAfterTheBan: 8 of 8 released 40 ms after the ban's
// SET, the kick 90 ms after it). So the goroutine that
// queues a kick wakes the broker thread at once: a SIGURG sent to it ends
// its epoll_wait with EINTR, which Mosquitto takes as an empty wait (its
// mux_epoll.c and mux_poll.c alike), and the iteration's TICK runs the
// kick. SIGURG is Go's own preemption signal: the runtime has a handler for
// it in a c-shared library too, sends it to this thread already when it
// preempts a callback, and ignores it on a thread running C
// (runtime.sigtrampgo). Handlers are installed with SA_RESTART, so the
// broker's reads and writes go on; epoll_wait and poll are never restarted.
//
// One signal per TICK at most: pending is set by the signal and cleared
// when the TICK comes into Go. Without a TICK (per_listener_settings true
// on 2.0.11-2.0.14) a kick waits for the next CONNECT, and no signal is
// sent.
var wake struct {
	pid, tid atomic.Int32 // the broker thread, recorded by wakeInit
	on       atomic.Bool  // SIGURG has a handler: a signal interrupts the wait
	pending  atomic.Bool  // signalled, its TICK not yet come into Go
	sent     atomic.Uint64
}

// wakeInit records the calling thread, plugin_init's (the broker's main
// thread), as the one to wake; the first instance's call counts.
func wakeInit() {
	if wake.tid.Load() != 0 {
		return
	}
	wake.on.Store(C.guard_sigurg_handled() != 0)
	wake.pid.Store(int32(syscall.Getpid()))
	wake.tid.Store(int32(syscall.Gettid()))
}

// tickSeen reports whether the broker delivers TICK (plugin.c).
func tickSeen() bool {
	return atomic.LoadInt32((*int32)(unsafe.Pointer(&C.guard_tick_seen))) != 0
}

// wakeBroker interrupts the broker thread's wait, unless a signal is
// already on its way or TICK never comes; safe from any goroutine.
func wakeBroker() {
	tid := wake.tid.Load()
	if tid == 0 || !wake.on.Load() || !tickSeen() || wake.pending.Swap(true) {
		return
	}
	wake.sent.Add(1)
	_ = syscall.Tgkill(int(wake.pid.Load()), int(tid), syscall.SIGURG) // ESRCH: no thread to wake
}

// wakeDone is called by each TICK that comes into Go: a kick queued from
// now on signals again.
func wakeDone() { wake.pending.Store(false) }

// Test helpers (cgo is not allowed in _test.go files).
func sigurgHandled() bool { return C.guard_sigurg_handled() != 0 }

func setTickSeen(seen bool) {
	v := int32(0)
	if seen {
		v = 1
	}
	atomic.StoreInt32((*int32)(unsafe.Pointer(&C.guard_tick_seen)), v)
}

func waitInC(ms int) syscall.Errno {
	if rc := C.guard_wait_test(C.int(ms)); rc < 0 {
		return syscall.Errno(-rc)
	}
	return 0
}
