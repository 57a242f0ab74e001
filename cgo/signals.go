package main

/*
#include "guard.h"
#include <signal.h>
*/
import "C"

import (
	"sync"
	"time"
)

// The broker installs its signal handlers after it has loaded the plugin,
// without SA_ONSTACK, which Go requires of every handler in a process that
// runs Go (signals.c says why). Its callbacks into the plugin add it at
// their first call (BASIC_AUTH, TICK); an idle broker may make none for a
// long time, so a goroutine looks every signalsEvery from plugin_init until
// the handlers are there: for signalsFor, then every signalsLate (a broker
// reading a large persistence file starts late). Their arrival also tells
// that the broker's listeners exist (backlog.c): the goroutine then logs
// what listen_backlog did.
const (
	signalsEvery = 10 * time.Millisecond
	signalsFor   = 60 * time.Second
	signalsLate  = time.Second
)

var signalsOnce sync.Once

// watchSignals starts that goroutine, once per process.
func watchSignals() {
	signalsOnce.Do(func() {
		go func() {
			for start := time.Now(); ; {
				if C.guard_signals_onstack() != 0 {
					runBacklog() // the listeners exist: their queue is sized from now on
					return
				}
				if time.Since(start) < signalsFor {
					time.Sleep(signalsEvery)
				} else {
					time.Sleep(signalsLate)
				}
			}
		}()
	})
}

// Test helpers (cgo is not allowed in _test.go files).
func signalFlags(sig C.int) int { return int(C.guard_signal_flags(sig)) }
func signalsOnstack() bool      { return C.guard_signals_onstack() != 0 }
func signalsPlain()             { C.guard_signals_test_plain() }
func signalsRestore()           { C.guard_signals_test_restore() }
func brokerSignals() []C.int    { return []C.int{C.SIGINT, C.SIGTERM, C.SIGHUP, C.SIGUSR1, C.SIGUSR2} }
func saOnstack() int            { return int(C.SA_ONSTACK) }
