package main

/*
#include "guard.h"
*/
import "C"

import (
	"fmt"

	"github.com/mosquitto-guard/mosquitto-guard/plugin"
)

// heldBuf receives the DISCONNECTs plugin.c held (guard_disconnect_hold):
// broker thread only, and free again before anything can call back in.
var heldBuf [C.GUARD_PENDING_MAX]C.struct_guard_pending

// handleHeld handles, in their order, the DISCONNECTs held in C since the
// last callback into Go. Every callback into Go calls it first, so no
// decision sees a connection whose DISCONNECT came before it; a panic in
// one is logged and the others are still handled.
func handleHeld() {
	if C.guard_npending == 0 { // read, not called: no cgo transition when none is held
		return
	}
	n := int(C.guard_pending_take(&heldBuf[0]))
	for i := 0; i < n; i++ {
		p := heldBuf[i]
		disconnectHeld(uintptr(p.handle), uintptr(p.client), p.persistent != 0)
	}
}

func disconnectHeld(h, client uintptr, persistent bool) {
	defer func() {
		if r := recover(); r != nil {
			enqueueLog(plugin.LevelError, fmt.Sprintf("mosquitto-guard: internal error in disconnect: %v", r))
		}
	}()
	if in := instances.get(h); in != nil {
		if persistent {
			in.guard.DisconnectedKeepSession(client)
		} else {
			in.guard.Disconnected(client)
		}
	}
}
