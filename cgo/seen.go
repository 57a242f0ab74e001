package main

/*
#include "guard.h"
*/
import "C"

// The seen set (seen.c) from Go, for its tests: the broker-facing calls
// are made from C (plugin.c) and from guardBasicAuth.

// basicAuth is plugin.c's guard_basic_auth, as on_basic_auth calls it: the
// certificate read, guardBasicAuth, and a new CONNECT entered in the seen
// set.
func basicAuth(h, client C.uintptr_t, id, addr, username, password *C.char) C.int {
	return C.guard_basic_auth(h, client, id, addr, username, password)
}

func seenAdd(p uintptr) bool { return C.guard_seen_add(C.uintptr_t(p)) != 0 }
func seenHas(p uintptr) bool { return C.guard_seen_has(C.uintptr_t(p)) != 0 }
func seenDel(p uintptr)      { C.guard_seen_del(C.uintptr_t(p)) }

// seenSize returns the set's live entries and its slots.
func seenSize() (live, slots int) { return int(C.guard_seen_len()), int(C.guard_seen_cap()) }

func deniedAdd(p uintptr) bool  { return C.guard_denied_add(C.uintptr_t(p)) != 0 }
func deniedTake(p uintptr) bool { return C.guard_denied_take(C.uintptr_t(p)) != 0 }
