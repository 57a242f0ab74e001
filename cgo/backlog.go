package main

/*
#include "guard.h"
*/
import "C"

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/mosquitto-guard/mosquitto-guard/plugin"
)

// The broker's listen backlog (listen_backlog, backlog.c): configured at the
// end of each plugin_init, raised by C once Mosquitto's listeners exist
// (signals.c), and logged once by the first of the signal watcher and a TICK
// into Go to see it done.

// configureBacklog records an instance's listen_backlog.
func configureBacklog(n int) { C.guard_backlog_configure(C.int(n)) }

var backlogLogged atomic.Bool

// logBacklog writes the raise's log line, once, when it has been done.
func logBacklog() {
	if backlogLogged.Load() {
		return
	}
	r := C.guard_backlog_result()
	if r.raised < 0 && r.failed >= 0 {
		return // not yet
	}
	if !backlogLogged.CompareAndSwap(false, true) {
		return
	}
	if line, level := backlogLine(int(r.want), int(r.raised), int(r.failed), syscall.Errno(r.err), somaxconn()); line != "" {
		enqueueLog(level, line)
	}
}

// backlogLine is the log line of a raise: asked, raised and failed as
// guard_backlog_result gives them, max the kernel's net.core.somaxconn (0:
// unknown).
func backlogLine(want, raised, failed int, err syscall.Errno, max int) (string, plugin.Level) {
	switch {
	case want == 0:
		return "", plugin.LevelNotice
	case failed < 0:
		return fmt.Sprintf("mosquitto-guard: listen_backlog %d: the broker's listeners could not be listed (/proc/self/fd: %v); their backlog stays Mosquitto's (100)", want, err), plugin.LevelWarning
	case failed > 0:
		return fmt.Sprintf("mosquitto-guard: listen_backlog %d: given to %d of %d listeners; listen() failed on %d (%v)", want, raised, raised+failed, failed, err), plugin.LevelWarning
	case raised == 0:
		return fmt.Sprintf("mosquitto-guard: listen_backlog %d: the broker has no TCP listener to give it to", want), plugin.LevelWarning
	case max > 0 && max < want:
		return fmt.Sprintf("mosquitto-guard: listen_backlog %d: the kernel caps it at net.core.somaxconn %d on %d listeners (Mosquitto's own: 100); raise that sysctl for the rest", want, max, raised), plugin.LevelWarning
	}
	return fmt.Sprintf("mosquitto-guard: listen_backlog %d on %d listeners (Mosquitto's own: 100)", want, raised), plugin.LevelNotice
}

// somaxconn is the kernel's cap on a listen backlog, 0 if unknown.
func somaxconn() int {
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err != nil {
		return 0
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0
	}
	return n
}

// Test helpers (cgo is not allowed in _test.go files).
func backlogRaise()     { C.guard_backlog_raise() }
func backlogTestReset() { C.guard_backlog_test_reset(); backlogLogged.Store(false) }
func backlogResult() (want, raised, failed int) {
	r := C.guard_backlog_result()
	return int(r.want), int(r.raised), int(r.failed)
}
