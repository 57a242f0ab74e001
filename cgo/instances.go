package main

/*
#include "guard.h"
*/
import "C"

import (
	"sync"
	"sync/atomic"

	"github.com/mosquitto-guard/mosquitto-guard/plugin"
)

// instance is one plugin_init: with per_listener_settings true the broker
// initialises the plugin once per listener in the same process.
type instance struct {
	id    *C.mosquitto_plugin_id_t
	guard *plugin.Guard
}

// registry maps the handle given to the broker as userdata to its instance:
// the broker gets an integer, never a Go pointer. Every callback looks its
// instance up, so get reads a copy made at each change (instances come and
// go at start, reload and stop only) without a lock: one atomic load and a
// scan of as many entries as the broker initialised the plugin (one, or one
// per listener), where the lock, its deferred unlock and a map lookup cost
// about 80 instructions per callback.
type registry struct {
	mu   sync.Mutex // serialises add and remove
	next uintptr
	all  atomic.Pointer[[]registered] // replaced, never changed
}

type registered struct {
	h  uintptr
	in *instance
}

var instances = &registry{}

func (r *registry) add(in *instance) uintptr {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.next++
	var all []registered
	if cur := r.all.Load(); cur != nil {
		all = append(all, *cur...)
	}
	all = append(all, registered{r.next, in})
	r.all.Store(&all)
	return r.next
}

func (r *registry) get(h uintptr) *instance {
	if all := r.all.Load(); all != nil {
		for _, e := range *all {
			if e.h == h {
				return e.in
			}
		}
	}
	return nil
}

// each calls fn for every instance registered.
func (r *registry) each(fn func(*instance)) {
	if all := r.all.Load(); all != nil {
		for _, e := range *all {
			fn(e.in)
		}
	}
}

func (r *registry) remove(h uintptr) *instance {
	r.mu.Lock()
	defer r.mu.Unlock()
	cur := r.all.Load()
	if cur == nil {
		return nil
	}
	var in *instance
	all := make([]registered, 0, len(*cur))
	for _, e := range *cur {
		if e.h == h {
			in = e.in
			continue
		}
		all = append(all, e)
	}
	r.all.Store(&all)
	return in
}
