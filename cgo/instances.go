package main

/*
#include "guard.h"
*/
import "C"

import (
	"sync"

	"github.com/mosquitto-guard/mosquitto-guard/plugin"
)

// instance is one plugin_init: with per_listener_settings true the broker
// initialises the plugin once per listener in the same process.
type instance struct {
	id    *C.mosquitto_plugin_id_t
	guard *plugin.Guard
}

// registry maps the handle given to the broker as userdata to its instance:
// the broker gets an integer, never a Go pointer.
type registry struct {
	mu   sync.Mutex
	next uintptr
	m    map[uintptr]*instance
}

var instances = &registry{m: map[uintptr]*instance{}}

func (r *registry) add(in *instance) uintptr {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.next++
	r.m[r.next] = in
	return r.next
}

func (r *registry) get(h uintptr) *instance {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.m[h]
}

func (r *registry) remove(h uintptr) *instance {
	r.mu.Lock()
	defer r.mu.Unlock()
	in := r.m[h]
	delete(r.m, h)
	return in
}
