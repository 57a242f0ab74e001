package main

/*
#include <stdlib.h>
#include "guard.h"
*/
import "C"

import (
	"fmt"
	"sync"
	"unsafe"

	"github.com/mosquitto-guard/mosquitto-guard/plugin"
)

// logQueue is the broker-thread work queue: log lines and MQTT publishes
// made by goroutines wait in it until a callback drains them on the broker
// thread, since no broker function is thread-safe. It is bounded; work
// beyond the bound is counted and the count is logged instead.
type logQueue struct {
	mu      sync.Mutex
	lines   []logLine
	dropped int
}

type logLine struct {
	level   plugin.Level
	msg     string
	topic   string // set for a publish: msg is then the payload
	publish bool
	kick    bool // msg is the client ID to disconnect
}

const (
	logQueueMax = 10000 // lines kept while no callback runs
	drainMax    = 1000  // lines written per callback, to bound its time
)

var logs logQueue

// enqueueLog is the plugin.Logger handed to the core; safe from any goroutine.
func enqueueLog(level plugin.Level, msg string) {
	logs.mu.Lock()
	defer logs.mu.Unlock()
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
	if len(logs.lines) >= logQueueMax {
		logs.dropped++
		return
	}
	logs.lines = append(logs.lines, logLine{topic: topic, msg: string(payload), publish: true})
}

// enqueueKick queues the disconnection of a client, without its will.
func enqueueKick(clientID string) {
	logs.mu.Lock()
	defer logs.mu.Unlock()
	// Kicks enforce bans: they are never dropped for want of room.
	logs.lines = append(logs.lines, logLine{msg: clientID, kick: true})
}

// drainLogs writes queued lines and publishes; call only on the broker thread.
func drainLogs() { drain(false) }

// drainAll also runs queued kicks. Only TICK and BASIC_AUTH call it: a kick
// from inside a DISCONNECT or an ACL check could disconnect the very client
// the broker is working on.
func drainAll() { drain(true) }

func drain(kicks bool) {
	logs.mu.Lock()
	if len(logs.lines) == 0 && logs.dropped == 0 {
		logs.mu.Unlock()
		return
	}
	var batch, kept []logLine
	for _, l := range logs.lines {
		if len(batch) < drainMax && (kicks || !l.kick) {
			batch = append(batch, l)
		} else {
			kept = append(kept, l)
		}
	}
	logs.lines = append(logs.lines[:0], kept...)
	dropped := logs.dropped
	logs.dropped = 0
	logs.mu.Unlock()
	if dropped > 0 {
		batch = append(batch, logLine{level: plugin.LevelWarning, msg: fmt.Sprintf("mosquitto-guard: %d log lines dropped: the broker-thread queue was full", dropped)})
	}
	for _, l := range batch {
		if l.publish {
			publish(l.topic, l.msg)
			continue
		}
		if l.kick {
			cs := C.CString(l.msg)
			C.guard_kick(cs)
			C.free(unsafe.Pointer(cs))
			continue
		}
		cs := C.CString(l.msg)
		C.guard_log(mosqLevel(l.level), cs)
		C.free(unsafe.Pointer(cs))
	}
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
	}
	return C.MOSQ_LOG_ERR
}
