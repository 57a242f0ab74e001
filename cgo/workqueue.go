package main

/*
#include <stdlib.h>
#include "guard.h"
*/
import "C"

import (
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/mosquitto-guard/mosquitto-guard/plugin"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// logQueue is the broker-thread work queue: log lines, MQTT publishes and
// kicks made by goroutines wait in it until a callback drains them on the
// broker thread, since no broker function is thread-safe. Log lines and
// publishes are bounded; work beyond the bound is counted and the count is
// logged instead. Kicks are never dropped for want of room: there is at most
// one per connection banned while connected (a connection is flagged once).
type logQueue struct {
	mu      sync.Mutex
	lines   []logLine
	dropped int
	kicks   atomic.Int64  // kicks among lines, written under mu (wake.go reads it without)
	taken   atomic.Uint64 // kicks run (or dropped) by drains so far, not those put back
}

// resetQueue empties the queue (tests).
func resetQueue() {
	logs.mu.Lock()
	defer logs.mu.Unlock()
	logs.lines, logs.dropped = nil, 0
	logs.kicks.Store(0)
}

type logLine struct {
	level   plugin.Level
	msg     string
	topic   string // set for a publish: msg is then the payload
	publish bool
	kick    bool    // msg is the client ID to disconnect
	inst    uintptr // the instance whose connection it was queued for
	handle  uintptr // that connection (the broker's client pointer)
}

const (
	logQueueMax = 10000 // lines kept while no callback runs
	drainMax    = 1000  // lines written per callback, to bound its time
)

var logs logQueue

// tickWork tells the broker's next TICK to come into Go: the queue holds
// work (plugin.c's guard_on_tick skips Go while the flag is clear).
func tickWork() { atomic.StoreInt32((*int32)(unsafe.Pointer(&C.guard_tick_work)), 1) }

// enqueueLog is the plugin.Logger handed to the core; safe from any goroutine.
func enqueueLog(level plugin.Level, msg string) {
	msg = store.RedactArgsInLine(msg) // no line carries Redis's echo of a password
	logs.mu.Lock()
	defer logs.mu.Unlock()
	tickWork()
	if len(logs.lines) >= logQueueMax {
		logs.dropped++
		return
	}
	logs.lines = append(logs.lines, logLine{level: level, msg: msg})
}

// enqueuePublish is the plugin.Publisher handed to the core; safe from any goroutine.
func enqueuePublish(topic string, payload []byte) {
	logs.mu.Lock()
	defer logs.mu.Unlock()
	tickWork()
	if len(logs.lines) >= logQueueMax {
		logs.dropped++
		return
	}
	logs.lines = append(logs.lines, logLine{topic: topic, msg: string(payload), publish: true})
}

// enqueueKick queues the disconnection, without its will, of instance
// inst's connection of clientID, banned while connected; safe from any goroutine.
func enqueueKick(inst, handle uintptr, clientID string) {
	logs.mu.Lock()
	defer logs.mu.Unlock()
	// Kicks enforce bans: they are never dropped for want of room.
	tickWork()
	logs.lines = append(logs.lines, logLine{kick: true, inst: inst, handle: handle, msg: clientID})
	logs.kicks.Add(1)
	wakeBroker(true) // the TICK that runs it now, not after the broker's idle wait (wake.go)
}

// kicksQueued is the number of kicks waiting in the queue.
func kicksQueued() int64 { return logs.kicks.Load() }

// kicksTaken is the number of kicks drains have run or dropped so far.
func kicksTaken() uint64 { return logs.taken.Load() }

// drainLogs writes queued log lines, and only them; call only on the broker
// thread. Every callback may: mosquitto_log_printf touches no client, and the
// broker itself logs from inside its own walks over the clients.
func drainLogs() { drain(false, 0) }

// drainAll also runs the queued publishes and kicks. Call it only at a safe
// point: TICK, or the BASIC_AUTH of a new connection outside a reload (see
// plugin.ReloadWalk). Never from a DISCONNECT or an ACL check (the broker may be
// working on, or walking, the very clients a kick would free), nor from the
// re-authentication of every client that follows a reload (a kick there frees
// the client the broker is about to disconnect itself: a double free).
// current is the client whose BASIC_AUTH is running, 0 in TICK: a kick for it
// waits, since the broker has not yet put it under its client ID (a kick by
// ID now would hit the connection it is about to take over).
func drainAll(current uintptr) { drain(true, current) }

func drain(all bool, current uintptr) {
	logs.mu.Lock()
	if len(logs.lines) == 0 && logs.dropped == 0 {
		logs.mu.Unlock()
		return
	}
	var batch, kept []logLine
	for _, l := range logs.lines {
		if len(batch) < drainMax && (all || (!l.kick && !l.publish)) {
			batch = append(batch, l)
			if l.kick {
				logs.kicks.Add(-1)
			}
		} else {
			kept = append(kept, l)
		}
	}
	logs.lines = append(logs.lines[:0], kept...)
	if len(kept) > 0 {
		tickWork() // what this callback may not run waits for the next TICK
	}
	dropped := logs.dropped
	logs.dropped = 0
	logs.mu.Unlock()
	if dropped > 0 {
		batch = append(batch, logLine{level: plugin.LevelWarning, msg: fmt.Sprintf("mosquitto-guard: %d log lines dropped: the broker-thread queue was full", dropped)})
	}
	var later []logLine
	for _, l := range batch {
		switch {
		case l.publish:
			publish(l.topic, l.msg)
		case l.kick:
			if kick(l.inst, l.handle, l.msg, current) {
				logs.taken.Add(1) // run or dropped; not one put back below
			} else {
				later = append(later, l)
			}
		default:
			cs := C.CString(l.msg)
			C.guard_log(mosqLevel(l.level), cs)
			C.free(unsafe.Pointer(cs))
		}
	}
	if len(later) > 0 {
		logs.mu.Lock()
		logs.lines = append(logs.lines, later...)
		logs.kicks.Add(int64(len(later)))
		tickWork()
		logs.mu.Unlock()
		wakeBroker(false) // the waker runs, but these are not new: its back-off holds
	}
}

// kick disconnects inst's connection of clientID if it is still the one
// banned while connected (plugin.Guard.KickDue): a kick whose connection
// ended is dropped, and never reaches a newer connection or an offline
// session with the same client ID. It reports false, to be kept for the next
// safe point, when that connection is current, the client whose BASIC_AUTH
// is running: the broker has not yet put it under its client ID, and a kick
// by ID now would hit the connection it is about to take over. The broker's
// DISCONNECT for the kicked client comes back, nested, and is held in C
// (plugin.c); it is handled before this returns.
func kick(inst, handle uintptr, clientID string, current uintptr) bool {
	in := instances.get(inst)
	if in == nil {
		return true
	}
	due, wait := in.guard.KickDue(handle, clientID)
	if wait {
		return false
	}
	if !due {
		return true
	}
	if handle == current {
		return false
	}
	cs := C.CString(clientID)
	C.guard_kick(cs)
	C.free(unsafe.Pointer(cs))
	handleHeld() // the kicked client's DISCONNECT, held while it came back: handled now, as the kick's
	return true
}

// publish sends a QoS 0 message to every subscriber of topic; the broker copies the payload.
func publish(topic, payload string) {
	ct := C.CString(topic)
	cp := C.CBytes([]byte(payload))
	rc := C.mosquitto_broker_publish_copy(nil, ct, C.int(len(payload)), cp, 0, false, nil)
	C.free(unsafe.Pointer(ct))
	C.free(cp)
	if rc != C.MOSQ_ERR_SUCCESS {
		cs := C.CString(fmt.Sprintf("mosquitto-guard: cannot publish on %q: error %d", topic, int(rc)))
		C.guard_log(C.MOSQ_LOG_WARNING, cs)
		C.free(unsafe.Pointer(cs))
	}
}

func mosqLevel(l plugin.Level) C.int {
	switch l {
	case plugin.LevelInfo:
		return C.MOSQ_LOG_INFO
	case plugin.LevelNotice:
		return C.MOSQ_LOG_NOTICE
	case plugin.LevelWarning:
		return C.MOSQ_LOG_WARNING
	case plugin.LevelDebug:
		return C.MOSQ_LOG_DEBUG
	}
	return C.MOSQ_LOG_ERR
}
