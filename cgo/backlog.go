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
	"sync"
	"syscall"

	"github.com/mosquitto-guard/mosquitto-guard/plugin"
)

// The broker's listen backlog (listen_backlog, backlog.c): configured at the
// end of each plugin_init, raised by C once Mosquitto's listeners exist
// (signals.c), and logged once by the first of the signal watcher and a TICK
// into Go to see it done.

// configureBacklog records an instance's listen_backlog.
func configureBacklog(n int) { C.guard_backlog_configure(C.int(n)) }

// backlogLogged is the last line logged ("" none yet): a reload gives the
// backlog again, and says so only when the line changes (somaxconn raised
// meanwhile, a listener that failed now taken).
var backlogLogged struct {
	sync.Mutex
	line string
}

// logBacklog writes the last raise's log line, when it has been done and
// differs from the line logged before.
func logBacklog() {
	r := C.guard_backlog_result()
	if r.raised < 0 && r.failed >= 0 {
		return // not yet
	}
	line, level := backlogLine(int(r.want), int(r.raised), int(r.kept), int(r.failed), syscall.Errno(r.err), somaxconn())
	backlogLogged.Lock()
	defer backlogLogged.Unlock()
	if line == "" || line == backlogLogged.line {
		return
	}
	backlogLogged.line = line
	enqueueLog(level, line)
}

// reraiseBacklog gives the listeners listen_backlog again (a reload: a
// listener the kernel capped gets the rest once net.core.somaxconn is
// raised), if the first raise has been done.
func reraiseBacklog() {
	if r := C.guard_backlog_result(); r.raised >= 0 || r.failed != 0 {
		C.guard_backlog_raise()
		logBacklog()
	}
}

// backlogLine is the log line of a raise: asked, raised, kept (as large
// already) and failed as guard_backlog_result gives them, max the kernel's
// net.core.somaxconn (0: unknown).
func backlogLine(want, raised, kept, failed int, err syscall.Errno, max int) (string, plugin.Level) {
	keptText := ""
	if kept > 0 {
		keptText = fmt.Sprintf("; %d kept a larger backlog of their own", kept)
	}
	switch {
	case want == 0:
		return "", plugin.LevelNotice
	case failed < 0:
		return fmt.Sprintf("mosquitto-guard: listen_backlog %d: the broker's listeners could not be listed (/proc/self/fd: %v); their backlog stays Mosquitto's (100)", want, err), plugin.LevelWarning
	case failed > 0:
		return fmt.Sprintf("mosquitto-guard: listen_backlog %d: given to %d of %d listeners; listen() failed on %d (%v)%s", want, raised, raised+failed, failed, err, keptText), plugin.LevelWarning
	case raised == 0 && kept == 0:
		return fmt.Sprintf("mosquitto-guard: listen_backlog %d: the broker has no TCP listener to give it to", want), plugin.LevelWarning
	case raised > 0 && max > 0 && max < want:
		return fmt.Sprintf("mosquitto-guard: listen_backlog %d: the kernel caps it at net.core.somaxconn %d on %d listeners (Mosquitto's own: 100)%s; raise that sysctl, then reload (SIGHUP) or restart the broker, for the rest", want, max, raised, keptText), plugin.LevelWarning
	}
	return fmt.Sprintf("mosquitto-guard: listen_backlog %d on %d listeners (Mosquitto's own: 100)%s", want, raised, keptText), plugin.LevelNotice
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
func backlogRaise() { C.guard_backlog_raise() }
func backlogTestReset() {
	C.guard_backlog_test_reset()
	backlogLogged.Lock()
	backlogLogged.line = ""
	backlogLogged.Unlock()
}
func backlogResult() (want, raised, kept, failed int) {
	r := C.guard_backlog_result()
	return int(r.want), int(r.raised), int(r.kept), int(r.failed)
}
func backlogOf(fd int) int { return int(C.guard_backlog_of(C.int(fd))) }
