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
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/plugin"
)

// The broker's listen backlog (listen_backlog, backlog.c). Each instance's
// plugin_init records its ceiling; once Mosquitto's listeners exist
// (signals.c) C finds them, and from then on a goroutine sizes their queue
// so that a device waits at most about backlogWait: the broker's CONNECTs
// per second (wall clock) over the last window, times half of it, between
// Mosquitto's own 100 and the ceiling. Half: Mosquitto accepts the whole
// queue at once, then reads the CONNECTs of what it accepted, so a device
// waits up to two queues' worth. A queue longer than what the broker
// takes before the devices' connect timeout holds them past it: a broker
// whose every CONNECT costs a slow hash (auth_cache 0, a fleet of
// first-time users with costly hashes) then spends its time on CONNECTs
// whose devices have given up and dialled again (a hostile tester's run:
// 397 of 1 500 devices with a 4 s timeout connected in 12 s with a fixed
// 4096, 1 433 with Mosquitto's 100). The wall clock, not the broker
// thread's CPU time: a broker that shares its core drains its queue only
// as fast as it runs. An idle broker's rate is low: its queue is then
// Mosquitto's 100, and a burst raises it within one window (10 ms, 20
// CONNECTs).
const (
	backlogWait     = time.Second // a device's wait, at most about
	backlogMin      = 100         // Mosquitto's own: never less
	backlogMinCount = 20          // CONNECTs that close a window
	backlogMaxSpan  = time.Second // a window closes after this whatever its count
	backlogFast     = 10 * time.Millisecond
	backlogFastFor  = time.Minute // after the listeners open: a storm comes first
	backlogSlow     = 100 * time.Millisecond
)

// configureBacklog records an instance's listen_backlog.
func configureBacklog(n int) { C.guard_backlog_configure(C.int(n)) }

// backlogLevel is what the queue should hold for a broker that took n
// CONNECTs in span: backlogWait/2 of them, within [backlogMin, ceiling].
func backlogLevel(n uint64, span time.Duration, ceiling int) int {
	if ceiling < backlogMin {
		return ceiling
	}
	if span <= 0 {
		return ceiling
	}
	l := float64(n) * float64(backlogWait/2) / float64(span)
	return int(max(min(l, float64(ceiling)), backlogMin))
}

// backlogSizer turns readings of the CONNECT count into levels: a window
// closes at backlogMinCount CONNECTs or after backlogMaxSpan, and a new
// level is given when it moved by a quarter or more.
type backlogSizer struct {
	ceiling  int
	level    int     // the level given; 0: none yet
	rate     float64 // CONNECTs per second over the last window
	connects uint64
	since    time.Time
	started  bool
}

// sample takes one reading; it returns the new level and true when the
// listeners should get it.
func (s *backlogSizer) sample(connects uint64, now time.Time) (int, bool) {
	if !s.started || connects < s.connects {
		s.connects, s.since, s.started = connects, now, true
		return 0, false
	}
	n, span := connects-s.connects, now.Sub(s.since)
	if n < backlogMinCount && span < backlogMaxSpan {
		return 0, false
	}
	s.connects, s.since = connects, now
	s.rate = float64(n) / span.Seconds()
	l := backlogLevel(n, span, s.ceiling)
	if s.level != 0 && l*4 < s.level*5 && l*5 > s.level*4 {
		return 0, false // within a quarter of the level given
	}
	if s.level == 0 && l == backlogMin {
		s.level = l
		return 0, false // the listeners have Mosquitto's 100 already
	}
	s.level = l
	return l, true
}

var backlogOnce sync.Once

// runBacklog starts the sizing goroutine, once per process, when the
// listeners have been found (the signal watcher calls it).
func runBacklog() {
	backlogOnce.Do(func() {
		r := C.guard_backlog_result()
		if r.want == 0 {
			return
		}
		go func() {
			defer func() { _ = recover() }() // never the broker's end
			s := backlogSizer{ceiling: int(r.want)}
			start := time.Now()
			for {
				logBacklog()
				if l, ok := s.sample(uint64(C.guard_backlog_connects()), time.Now()); ok {
					C.guard_backlog_apply(C.int(l))
					// Debug only (log_type debug or all): it moves with the load.
					enqueueLog(plugin.LevelDebug, fmt.Sprintf("mosquitto-guard: listen backlog %d (%.0f CONNECTs/s)", l, s.rate))
				}
				if time.Since(start) < backlogFastFor {
					time.Sleep(backlogFast)
				} else {
					time.Sleep(backlogSlow)
				}
			}
		}()
	})
}

// backlogLogged is the last line logged ("" none yet): a reload finds the
// listeners again, and says so only when the line changes (somaxconn
// raised meanwhile, a listener that failed now taken).
var backlogLogged struct {
	sync.Mutex
	line   string
	raises int // the raises the line was made after
}

// logBacklog writes the last raise's log line, when it has been done and
// differs from the line logged before; it makes the line only once after
// each raise (the sizer calls it every round). Any goroutine.
func logBacklog() {
	r := C.guard_backlog_result()
	if r.raised < 0 && r.failed >= 0 {
		return // not yet
	}
	backlogLogged.Lock()
	defer backlogLogged.Unlock()
	if int(r.raises) == backlogLogged.raises {
		return
	}
	backlogLogged.raises = int(r.raises)
	line, level := backlogLine(int(r.want), int(r.raised), int(r.kept), int(r.failed), syscall.Errno(r.err), somaxconn())
	if line == "" || line == backlogLogged.line {
		return
	}
	backlogLogged.line = line
	enqueueLog(level, line)
}

// reraiseBacklog gives the listeners found the level again (a reload: a
// listener the kernel capped gets the rest once net.core.somaxconn is
// raised), if they have been found. One listen() per listener, on the
// broker thread: no look at the process's descriptors.
func reraiseBacklog() {
	if r := C.guard_backlog_result(); r.raised >= 0 {
		C.guard_backlog_reapply()
		logBacklog()
	}
}

// backlogLine is the log line of a raise: the ceiling, the listeners below
// it (raised), those with a backlog as large of their own (kept), and
// failed as guard_backlog_result gives them; max the kernel's
// net.core.somaxconn (0: unknown).
func backlogLine(want, raised, kept, failed int, err syscall.Errno, max int) (string, plugin.Level) {
	keptText := ""
	if kept > 0 {
		keptText = fmt.Sprintf("; %d kept a larger backlog of their own", kept)
	}
	sized := fmt.Sprintf("the queue held to what the broker takes in %s at its measured rate of CONNECTs, from Mosquitto's own 100 up to %d", backlogWait/2, want)
	switch {
	case want == 0:
		return "", plugin.LevelNotice
	case failed < 0:
		return fmt.Sprintf("mosquitto-guard: listen_backlog %d: the broker's listeners could not be listed (/proc/self/fd: %v); their backlog stays Mosquitto's (100)", want, err), plugin.LevelWarning
	case failed > 0:
		return fmt.Sprintf("mosquitto-guard: listen_backlog %d: listen() failed on %d of %d listening sockets (%v)%s", want, failed, raised, err, keptText), plugin.LevelWarning
	case raised == 0 && kept == 0:
		return fmt.Sprintf("mosquitto-guard: listen_backlog %d: the broker has no TCP listener to give it to", want), plugin.LevelWarning
	case raised > 0 && max > 0 && max < want:
		return fmt.Sprintf("mosquitto-guard: listen_backlog %d on %d listening sockets: %s%s; the kernel caps it at net.core.somaxconn %d: raise that sysctl, then reload (SIGHUP) or restart the broker, for the rest", want, raised, sized, keptText, max), plugin.LevelWarning
	}
	return fmt.Sprintf("mosquitto-guard: listen_backlog %d on %d listening sockets: %s%s", want, raised, sized, keptText), plugin.LevelNotice
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
func backlogRaise()              { C.guard_backlog_raise() }
func backlogApply(level int) int { return int(C.guard_backlog_apply(C.int(level))) }
func backlogTestReset() {
	C.guard_backlog_test_reset()
	backlogLogged.Lock()
	backlogLogged.line, backlogLogged.raises = "", 0
	backlogLogged.Unlock()
}
func backlogResult() (want, raised, kept, failed int) {
	r := C.guard_backlog_result()
	return int(r.want), int(r.raised), int(r.kept), int(r.failed)
}
func backlogOf(fd int) int { return int(C.guard_backlog_of(C.int(fd))) }
