package main

/*
#cgo CFLAGS: -O2 -Wall
// Broker symbols resolve from the mosquitto executable when it loads the
// plugin; this lets `go build ./...` link the package as a program too.
#cgo LDFLAGS: -Wl,--unresolved-symbols=ignore-in-object-files -ldl
#include <stdlib.h>
#include <string.h>
#include "guard.h"

int guard_client_persistent(uintptr_t client);
int guard_client_subs(uintptr_t client);
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
	"github.com/mosquitto-guard/mosquitto-guard/plugin"
)

func main() {}

// reload tells the re-authentication walk after a reload from new CONNECTs.
var reload plugin.ReloadWalk

// timed counts the instances with a CONNECT histogram (metrics_addr): while
// there is none, BASIC_AUTH does not read the clock.
var timed atomic.Int32

//export guardInit
func guardInit(id *C.mosquitto_plugin_id_t, opts *C.struct_mosquitto_opt, n C.int, out *C.uintptr_t) (rc C.int) {
	defer drainLogs()
	defer recoverTo(&rc, C.MOSQ_ERR_UNKNOWN, "plugin_init")
	raiseProcs(os.Getenv)
	setYield()
	startHeapRelease()
	watchSignals()
	wakeInit()
	options := map[string]string{}
	for i := 0; i < int(n); i++ {
		key := goString(C.guard_opt_key(opts, C.int(i)))
		options[key] = goString(C.guard_opt_value(opts, C.int(i)))
	}
	cfg, err := config.Parse(options)
	if err != nil {
		// One line per problem, all before the broker stops: a config is
		// fixed in one restart, not one per option.
		var errs config.Errors
		if !errors.As(err, &errs) {
			errs = config.Errors{err}
		}
		for _, e := range errs {
			enqueueLog(plugin.LevelError, "mosquitto-guard: "+e.Error())
		}
		return C.MOSQ_ERR_INVAL
	}
	var self atomic.Uintptr // this instance's handle, known once it is registered
	g, err := plugin.New(cfg, plugin.Output{
		Log: enqueueLog, Publish: enqueuePublish,
		Kick:    func(handle uintptr, clientID string) { enqueueKick(self.Load(), handle, clientID) },
		Flagged: func(delta int) { C.guard_flagged_add(C.int(delta)) },
		Wake:    tickWork,
	})
	if err != nil {
		enqueueLog(plugin.LevelError, "mosquitto-guard: "+err.Error())
		return C.MOSQ_ERR_INVAL
	}
	h := instances.add(&instance{id: id, guard: g})
	self.Store(h)
	if rc := C.guard_register(id, C.uintptr_t(h)); rc != C.MOSQ_ERR_SUCCESS {
		instances.remove(h)
		g.Close()
		enqueueLog(plugin.LevelError, fmt.Sprintf("mosquitto-guard: cannot register callbacks (error %d)", int(rc)))
		return rc
	}
	mode, why := config.ResolveACLMode(cfg.ACLCheck, isSelf, nextACLInstance())
	enqueueLog(plugin.LevelNotice, fmt.Sprintf("mosquitto-guard: acl_check %s: %s", mode, why))
	if mode != config.ACLOff {
		fallback := C.int(C.MOSQ_ERR_PLUGIN_DEFER)
		if mode == config.ACLAllow {
			fallback = C.MOSQ_ERR_SUCCESS
		}
		if rc := C.guard_register_acl(id, C.uintptr_t(h), fallback); rc != C.MOSQ_ERR_SUCCESS {
			C.guard_unregister(id)
			instances.remove(h)
			g.Close()
			enqueueLog(plugin.LevelError, fmt.Sprintf("mosquitto-guard: cannot register the ACL check (error %d)", int(rc)))
			return rc
		}
	}
	*out = C.uintptr_t(h)
	// After plugin.New: its metrics endpoint is a listener of its own, not
	// the broker's, and keeps its backlog.
	configureBacklog(cfg.ListenBacklog)
	if g.Timed() {
		timed.Add(1)
	}
	if cfg.Backend == config.BackendDefer && config.BrokerChecksPasswords() {
		enqueueLog(plugin.LevelWarning, "mosquitto-guard: backend defer: passwords are left to Mosquitto's own password_file, which answers a username it does not have at once, without hashing: timing tells which usernames exist, and failures are not counted; set auth_opt_password_file to the same file (backend files) instead")
	}
	enqueueLog(plugin.LevelNotice, fmt.Sprintf("mosquitto-guard: ready (backend %s, key_prefix %q, fail_limit %d per %s on %v, clientid_conflict %s)",
		cfg.Backend, cfg.KeyPrefix, cfg.Policy.Limit, cfg.Policy.Window, cfg.FailScopes, cfg.Conflicts.Mode))
	return C.MOSQ_ERR_SUCCESS
}

//export guardCleanup
func guardCleanup(h C.uintptr_t) (rc C.int) {
	defer drainLogs()
	defer recoverTo(&rc, C.MOSQ_ERR_SUCCESS, "plugin_cleanup")
	handleHeld() // the DISCONNECTs held since the last callback come first
	wakeStop()   // no TICK will run a queued kick: no signal into the broker's exit
	closeAll()   // every instance's background work stopped at once, on the first cleanup
	in := instances.remove(uintptr(h))
	if in == nil {
		return C.MOSQ_ERR_SUCCESS
	}
	C.guard_unregister(in.id)
	if in.guard.Timed() {
		timed.Add(-1)
	}
	in.guard.Close() // done by closeAll: its metrics endpoint closed, the port free again
	return C.MOSQ_ERR_SUCCESS
}

// closeAll closes every instance's guard at once, on the first cleanup:
// the broker cleans its instances up (one per listener with
// per_listener_settings) one after the other, only at exit, and each
// waiting its own plugin.CloseBound in turn made the stop last that many
// times as long (atk54: three listeners, Redis hung, 4.5 s), while one
// deadline for all let one instance whose Redis was down use it up, and the
// others, their Redis up, skipped removing their live entries (atk56). So
// each gets its whole bound, side by side: the stop takes CloseBound at
// most. Broker thread only (the goroutines only run Close).
func closeAll() {
	if closedAll {
		return
	}
	closedAll = true
	var wg sync.WaitGroup
	instances.each(func(in *instance) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				if r := recover(); r != nil { // a panic here would kill the broker
					enqueueLog(plugin.LevelError, fmt.Sprintf("mosquitto-guard: internal error in plugin_cleanup: %v", r))
				}
			}()
			in.guard.Close()
		}()
	})
	wg.Wait()
}

var closedAll bool

// der and derLen are the client's certificate as guard_client_cert read it
// (plugin.c's guard_basic_auth frees it after); fresh is set for a new
// CONNECT, which guard_basic_auth then enters in the seen set.
//
//export guardBasicAuth
func guardBasicAuth(h, client C.uintptr_t, id, addr, username, password *C.char, der *C.uchar, derLen C.int, fresh *C.int) (rc C.int) {
	yieldSometimes() // Go's scheduler on this P now and then: see yield.go
	// The CONNECT histogram: from here to the return, the queue's drain
	// included (this defer runs last); a new CONNECT's only, not the walk's.
	var start time.Time
	var observe *plugin.Guard
	if timed.Load() > 0 {
		start = time.Now()
		defer func() {
			if observe != nil {
				observe.ObserveConnect(time.Since(start))
			}
		}()
	}
	safe := false // a new CONNECT outside a reload: the queue's broker calls may run
	defer func() {
		if safe {
			drainAll(uintptr(client))
		} else {
			drainLogs()
		}
	}()
	// Fail closed: a client whose check blew up is not let in.
	defer recoverTo(&rc, C.MOSQ_ERR_AUTH, "basic_auth")
	handleHeld() // the DISCONNECTs held since the last callback come first
	in := instances.get(uintptr(h))
	if in == nil {
		return C.MOSQ_ERR_PLUGIN_DEFER
	}
	c := plugin.Client{Handle: uintptr(client), HasUsername: username != nil}
	idb, ub := cBytes(id), cBytes(username)
	if maxID, maxUser := in.guard.Bounds(); (maxID > 0 && len(idb) > maxID) || (maxUser > 0 && len(ub) > maxUser) {
		// Over clientid_max_bytes or username_max_bytes: refused before
		// anything reads the strings (Guard.tooLong), so only what the
		// refusal line quotes of them is copied, not up to 128 KB a
		// stranger's CONNECT (TestTooLongRefusalCopiesLittle).
		c.ClientIDBytes, c.UsernameBytes = len(idb), len(ub)
		idb, ub = idb[:min(len(idb), logval.Max+1)], ub[:min(len(ub), logval.Max+1)] // logline.Kept
	}
	c.ClientID, c.Address, c.Username, c.IDs, c.IP = connStrings.getIP(idb, cBytes(addr), ub, c.HasUsername)
	c.IPParsed = true
	if password != nil {
		pb := copyPassword(password)
		defer pb.release() // cleared, even after a panic
		c.Password = pb.b
	}
	walk := reload.InWalk(
		func(n uint64) bool { return in.guard.ReloadVisit(&c, n) },
		func() int { return int(C.guard_client_subs(client)) },
		c.Address == "")
	// The certificate the TLS handshake verified (require_certificate
	// true), in a new CONNECT and in the re-check after a reload alike.
	var d plugin.Decision
	c.CertID, c.CertSubject = certFrom(der, derLen)
	if walk {
		d = in.guard.Reauthenticate(c)
	} else {
		safe = true
		// Seen: its ACL checks need no first sight (seen.c). Only a new
		// CONNECT enters the set, never the walk, which also visits offline
		// sessions the broker may free without a DISCONNECT.
		// And a new client at a freed pointer is not the banned one the
		// denied set may name. Done in C when this returns
		// (guard_basic_auth): a call into C from here is a cgo transition.
		*fresh = 1
		if !start.IsZero() && in.guard.Timed() {
			observe = in.guard
		}
		d = in.guard.Authenticate(c)
	}
	return basicAuthRC(d)
}

// basicAuthRC is BASIC_AUTH's return code for d. It is a function of its
// own so that guardBasicAuth keeps two return statements: with its four
// defers, more would make the compiler run them through the runtime's defer
// records instead of inline (open-coded: at most 15 returns times defers),
// about 300 instructions more per CONNECT
// (go build -gcflags=-d=defer ./cgo says which).
func basicAuthRC(d plugin.Decision) C.int {
	switch d.Result {
	case plugin.Allow:
		return C.MOSQ_ERR_SUCCESS
	case plugin.Defer:
		return C.MOSQ_ERR_PLUGIN_DEFER
	}
	return C.MOSQ_ERR_AUTH
}

//export guardReload
func guardReload(h C.uintptr_t) (rc C.int) {
	defer drainLogs()
	defer recoverTo(&rc, C.MOSQ_ERR_PLUGIN_DEFER, "reload")
	handleHeld()      // the DISCONNECTs held since the last callback come first
	reload.Reloaded() // every client is re-authenticated next: see plugin.ReloadWalk
	if in := instances.get(uintptr(h)); in != nil {
		in.guard.Reload()
	}
	reraiseBacklog() // a listener capped at net.core.somaxconn gets the rest once it is raised
	// Anything but DEFER would stop the broker re-registering its own checks.
	return C.MOSQ_ERR_PLUGIN_DEFER
}

//export guardTick
func guardTick(h C.uintptr_t) (rc C.int) {
	defer drainAll(0)
	defer recoverTo(&rc, C.MOSQ_ERR_SUCCESS, "tick")
	handleHeld() // the DISCONNECTs held since the last callback come first
	reload.Tick()
	// A password_file read since the last CONNECT, of any instance: the
	// flag that lets a TICK into Go is the process's, and the first
	// instance's TICK clears it for the others (plugin.c).
	instances.each(func(in *instance) { in.guard.Tick() })
	logBacklog()
	return C.MOSQ_ERR_SUCCESS
}

//export guardFlagged
func guardFlagged(h, client C.uintptr_t) (flagged C.int) {
	defer drainLogs() // log lines only: never a kick from inside an ACL check
	// Fail closed while a ban is being enforced: a panic here refuses.
	defer recoverTo(&flagged, 1, "acl_check")
	handleHeld() // the DISCONNECTs held since the last callback come first
	reload.End() // the walk after a reload makes no ACL check
	in := instances.get(uintptr(h))
	if in != nil && in.guard.Flagged(uintptr(client)) {
		return 1
	}
	return 0
}

//export guardFirstSight
func guardFirstSight(h, client C.uintptr_t) (rc C.int) {
	defer drainLogs() // log lines only: the kick waits for a safe point
	// Fail closed, and unseen: this check is refused, the next looks again.
	defer recoverTo(&rc, C.GUARD_FIRST_ERROR, "acl_check (first sight)")
	handleHeld() // the DISCONNECTs held since the last callback come first
	reload.End() // the walk after a reload makes no ACL check
	in := instances.get(uintptr(h))
	if in == nil {
		return C.GUARD_FIRST_NONE
	}
	c := identityOf(client)
	if c.CertID == "" {
		return C.GUARD_FIRST_NONE // not connected after all: nothing to see
	}
	if in.guard.FirstSight(c).Result == plugin.Deny {
		return C.GUARD_FIRST_DENY
	}
	return C.GUARD_FIRST_ALLOW
}

// identityOf reads what the broker knows of a client that no BASIC_AUTH
// announced: its ID, address, username (the certificate's identity on a
// use_identity_as_username listener) and certificate.
func identityOf(client C.uintptr_t) plugin.Client {
	c := plugin.Client{
		Handle:   uintptr(client),
		ClientID: goString(C.guard_client_id(client)),
		Address:  goString(C.guard_client_address(client)),
	}
	if u := C.guard_client_username(client); u != nil {
		c.Username, c.HasUsername = C.GoString(u), true
	}
	c.CertID, c.CertSubject = clientCert(client)
	return c
}

//export guardDisconnect
func guardDisconnect(h, client C.uintptr_t, unseen C.int) (rc C.int) {
	defer drainLogs()
	defer recoverTo(&rc, C.MOSQ_ERR_SUCCESS, "disconnect")
	handleHeld() // the DISCONNECTs held since the last callback come first
	if in := instances.get(uintptr(h)); in != nil {
		// A client with a certificate leaving before any ACL check: if the
		// lists ban it, the will the broker sends next is refused.
		if unseen != 0 {
			if c := identityOf(client); c.CertID != "" && in.guard.LeftUnseen(c) {
				C.guard_denied_add(client)
			}
		}
		// A connection banned while connected whose kick has not run: its
		// messages are refused until it is gone, and the will the broker
		// sends next (a dropped connection) is one of them.
		if in.guard.Flagged(uintptr(client)) {
			C.guard_denied_add(client)
		}
		if C.guard_client_persistent(client) != 0 {
			in.guard.DisconnectedKeepSession(uintptr(client))
		} else {
			in.guard.Disconnected(uintptr(client))
		}
	}
	return C.MOSQ_ERR_SUCCESS
}

func goString(s *C.char) string {
	if s == nil {
		return ""
	}
	return C.GoString(s)
}

// recoverTo turns a panic into a logged error and the fallback return code.
func recoverTo(rc *C.int, fallback C.int, where string) {
	if r := recover(); r != nil {
		enqueueLog(plugin.LevelError, fmt.Sprintf("mosquitto-guard: internal error in %s: %v", where, r))
		*rc = fallback
	}
}
