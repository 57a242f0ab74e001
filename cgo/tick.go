package main

/*
#include "guard.h"

static void guard_tick_from(uintptr_t h) { guard_on_tick(MOSQ_EVT_TICK, NULL, (void *)h); }
static void guard_reload_from(uintptr_t h) { guard_on_reload(MOSQ_EVT_RELOAD, NULL, (void *)h); }
*/
import "C"

// The broker's TICK and RELOAD callbacks (plugin.c) from Go, for their
// tests: the broker calls them from C.

func tickFromBroker(h uintptr) { C.guard_tick_from(C.uintptr_t(h)) }

func reloadFromBroker(h uintptr) { C.guard_reload_from(C.uintptr_t(h)) }

func holdDisconnect(h, client uintptr, persistent bool) bool {
	p := C.int(0)
	if persistent {
		p = 1
	}
	return C.guard_disconnect_hold(C.uintptr_t(h), C.uintptr_t(client), p) != 0
}
