package main

/*
#include <dlfcn.h>
#include <stdlib.h>
#include "guard.h"

// guard_is_self says whether path, given to dlopen as the broker gives a
// plugin line's path, names the object this plugin was loaded as.
// RTLD_NOLOAD loads nothing: it returns an object already loaded, found as
// dlopen finds one (a name without '/' searched for in LD_LIBRARY_PATH, the
// cache and the default directories; a file matched by device and inode, so
// through any symlink), or NULL. dlerror is cleared for the broker's next
// check of it.
static int guard_is_self(const char *path)
{
	void *self = dlopen(guard_self_path(), RTLD_LAZY | RTLD_NOLOAD);
	void *h = self ? dlopen(path, RTLD_LAZY | RTLD_NOLOAD) : NULL;
	int same = self != NULL && h == self;
	if (h) {
		dlclose(h);
	}
	if (self) {
		dlclose(self);
	}
	dlerror();
	return same;
}
*/
import "C"

import "unsafe"

// aclInstances counts the plugin_init calls that reached the ACL
// registration. With per_listener_settings true the broker initialises the
// plugin once per listener that loads it, in config order (see
// config.ResolveACLMode), and a failed init stops the broker's start: so
// the n-th call is the n-th listener's instance. Broker thread only.
var aclInstances int

// nextACLInstance returns how many instances came before this one.
func nextACLInstance() int {
	n := aclInstances
	aclInstances++
	return n
}

// isSelf says whether a plugin line's path names this plugin, as the
// broker's dlopen resolves it (before: paths were compared as strings after
// EvalSymlinks, so "auth_plugin mosquitto_guard.so", found by the loader's
// search, counted as another plugin).
func isSelf(path string) bool {
	cs := C.CString(path)
	defer C.free(unsafe.Pointer(cs))
	return C.guard_is_self(cs) != 0
}
