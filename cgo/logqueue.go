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

// logQueue holds lines for Mosquitto's log until a callback drains them on
// the broker thread: mosquitto_log_printf is not thread-safe. It is bounded;
// lines beyond the bound are counted and the count is logged instead.
type logQueue struct {
	mu      sync.Mutex
	lines   []logLine
	dropped int
}

type logLine struct {
	level plugin.Level
	msg   string
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
	logs.lines = append(logs.lines, logLine{level, msg})
}

// drainLogs writes queued lines; call only on the broker thread.
func drainLogs() {
	logs.mu.Lock()
	if len(logs.lines) == 0 && logs.dropped == 0 {
		logs.mu.Unlock()
		return
	}
	n := min(len(logs.lines), drainMax)
	batch := make([]logLine, n)
	copy(batch, logs.lines[:n])
	logs.lines = append(logs.lines[:0], logs.lines[n:]...)
	dropped := logs.dropped
	logs.dropped = 0
	logs.mu.Unlock()
	if dropped > 0 {
		batch = append(batch, logLine{plugin.LevelWarning, fmt.Sprintf("mosquitto-guard: %d log lines dropped: the log queue was full", dropped)})
	}
	for _, l := range batch {
		cs := C.CString(l.msg)
		C.guard_log(mosqLevel(l.level), cs)
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
