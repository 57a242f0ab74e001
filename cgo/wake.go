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
	"time"
	"unsafe"
)

// A kick waits for the broker's next TICK, the end of its loop iteration.
// An idle broker sits in epoll_wait for up to 100 ms between iterations,
// and a banned connection's packet that wakes it first is handled before
// that TICK: a PUBREL among them releases a QoS 2 message the client sent
// before its ban, which Mosquitto delivers with no ACL check (atk78;
// TestAtk78QoS2ReleasedAfterTheBan: 8 of 8 released 40 ms after the ban's
// SET, the kick 90 ms after it). So while kicks are queued the broker
// thread is woken: a SIGURG sent to it ends its epoll_wait with EINTR,
// which Mosquitto's mux_epoll.c (every Linux build) takes as an empty wait,
// and the iteration's TICK runs the kicks. SIGURG is Go's own preemption
// signal: the runtime has a handler for it in a c-shared library too, sends
// it to this thread already when it preempts a callback, and drops it on a
// thread running C (runtime.sigtrampgo; through badsignal, a few system
// calls more, under GODEBUG=asyncpreemptoff=1). Handlers are installed with
// SA_RESTART, so the broker's reads and writes on its sockets and files go
// on; epoll_wait is never restarted. (A build without epoll, mux_poll.c,
// logs each such EINTR as an error line.)
//
// A signal ends a wait only if it comes during one: one sent while the
// thread runs the TICK, or between the TICK and the next wait, is lost, and
// a TICK runs at most drainMax lines (a kick and its log line are two).
// So the signal is level-triggered: a waker goroutine signals while kicks
// are queued, every wakeFirst (a TICK that runs 500 kicks takes some 30 ms,
// and the signals meanwhile are lost: the next after it counts), every
// wakeMax once no TICK has run one for wakeStall (kicks that wait for a
// pending connection, KickDue, are put back and do not count), at once
// and at the fast rate again for a new kick, and stops when none is
// queued: 1 000 signals a second while TICKs run kicks and for 200 ms after
// the last one run or queued, then 10 a second. Without a TICK
// (per_listener_settings true on 2.0.11-2.0.14) nothing would run them: a
// kick waits for the next CONNECT, and no signal is sent; nor after the
// plugin's cleanup (wakeStop).
var wake struct {
	pid, tid atomic.Int32 // the broker thread, recorded by wakeInit
	on       atomic.Bool  // SIGURG has a handler, and the plugin is not cleaned up
	running  atomic.Bool  // the waker goroutine runs
	sent     atomic.Uint64
}

// wakeNudge tells a running waker of a new kick: it signals at once, and
// at its fast rate again.
var wakeNudge = make(chan struct{}, 1)

const (
	wakeFirst = time.Millisecond       // between signals while TICKs take kicks
	wakeStall = 200 * time.Millisecond // none taken for this long: ...
	wakeMax   = 100 * time.Millisecond // ... then between signals
)

// wakeInit records the calling thread, plugin_init's (the broker's main
// thread, after Mosquitto daemonised), as the one to wake; the first
// instance's call counts.
func wakeInit() {
	if wake.tid.Load() != 0 {
		return
	}
	wake.on.Store(C.guard_sigurg_handled() != 0)
	wake.pid.Store(int32(syscall.Getpid()))
	wake.tid.Store(int32(syscall.Gettid()))
}

// wakeStop ends the wake at the plugin's cleanup (the broker is stopping:
// no TICK will run the kicks still queued): the waker exits and no signal
// reaches the broker's exit.
func wakeStop() { wake.on.Store(false) }

// tickSeen reports whether the broker delivers TICK (plugin.c).
func tickSeen() bool {
	return atomic.LoadInt32((*int32)(unsafe.Pointer(&C.guard_tick_seen))) != 0
}

// wakeBroker starts the waker, unless it runs; call it after queuing a
// kick (the waker, once it stops, looks at the queue again). With fresh (a
// new kick, not one put back), a running waker signals at once and goes
// back to its fast rate. Safe from any goroutine.
func wakeBroker(fresh bool) {
	if wake.tid.Load() == 0 || !wake.on.Load() || !tickSeen() {
		return
	}
	if wake.running.CompareAndSwap(false, true) {
		go waker()
	} else if fresh {
		select {
		case wakeNudge <- struct{}{}:
		default: // one is pending already
		}
	}
}

// waker signals the broker thread while kicks are queued (see wake).
func waker() {
	for {
		taken, since := kicksTaken(), time.Now()
		timer := time.NewTimer(0)
		for kicksQueued() > 0 && tickSeen() && wake.on.Load() {
			every := wakeFirst
			if t := kicksTaken(); t != taken {
				taken, since = t, time.Now() // a TICK ran some: the rest soon
			} else if time.Since(since) >= wakeStall {
				every = wakeMax // none run for long: kicks that wait (KickDue)
			}
			wake.sent.Add(1)
			_ = syscall.Tgkill(int(wake.pid.Load()), int(wake.tid.Load()), syscall.SIGURG) // ESRCH: no thread to wake
			timer.Reset(every)
			select {
			case <-timer.C:
			case <-wakeNudge:
				since = time.Now() // a new kick: at once, and the fast rate again
			}
		}
		timer.Stop()
		wake.running.Store(false)
		// A kick queued after the last look, whose wakeBroker found the
		// waker still running.
		if kicksQueued() == 0 || !tickSeen() || !wake.on.Load() || !wake.running.CompareAndSwap(false, true) {
			return
		}
	}
}

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
