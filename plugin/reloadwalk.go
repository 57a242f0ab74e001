package plugin

import "sync"

// ReloadWalk tells, for each BASIC_AUTH, whether it is part of the walk that
// follows a reload. On SIGHUP Mosquitto fires MOSQ_EVT_RELOAD, then, in the
// same loop iteration, calls BASIC_AUTH for every client it holds (connected
// ones and offline persistent sessions: mosquitto_security_apply_default
// walks contexts_by_id), disconnects the refused ones itself, and then fires
// TICK. New CONNECTs are read only in a later iteration.
//
// Inside the walk nothing may run that could disconnect or free a client (a
// kick there makes the broker free that client a second time), no refusal is
// counted and no success admitted (see Guard.Reauthenticate).
//
// Where TICK is delivered (every 2.0.x without per_listener_settings, and
// with it from 2.0.15 on), the first TICK after a RELOAD ends the walk
// exactly, and every BASIC_AUTH in between is in it. Where it is not
// (per_listener_settings on 2.0.11-2.0.14), the walk is over at the first
// BASIC_AUTH that cannot be part of it: a client that is neither a
// connection nor an offline session the instance knows (nor one with
// subscriptions, which a new CONNECT never has at BASIC_AUTH), or one the
// walk already visited. An ACL check ends it too (the walk makes none).
//
// One ReloadWalk serves every instance of the process: the walk covers the
// clients of every listener. The zero value is ready.
type ReloadWalk struct {
	mu    sync.Mutex // the broker thread is the only caller; this keeps tests honest
	open  bool       // a RELOAD was seen and its walk may not be over
	n     uint64     // reloads so far: the current walk's number
	ticks bool       // TICK is delivered
}

// Reloaded records MOSQ_EVT_RELOAD (once per instance; the walk follows them all).
func (w *ReloadWalk) Reloaded() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.open = true
	w.n++
}

// Tick records MOSQ_EVT_TICK, fired at the end of each broker loop iteration.
func (w *ReloadWalk) Tick() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ticks = true
	w.open = false
}

// End records a callback the walk never makes (an ACL check).
func (w *ReloadWalk) End() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.open = false
}

// InWalk classifies a BASIC_AUTH. known(n) says whether the instance knows
// the client as a connection or an offline session not yet visited by walk
// n, and marks it visited (Guard.ReloadVisit); subs gives the client's
// subscription count; noAddr says the client has no address (a session
// restored from persistence, never connected since). Neither func is called
// when no walk may be under way.
//
// Even with TICK, a client that is none of these is a new CONNECT: in 2.0.x
// loop.c serves the websocket listeners (lws_service) after the walk and
// before the TICK, so a new websocket client can be authenticated inside the
// window; it is counted and admitted as any other (the walk is over by then,
// so its queue may run too). The window stays open for the walk's clients.
func (w *ReloadWalk) InWalk(known func(n uint64) bool, subs func() int, noAddr bool) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case !w.open:
		return false
	case noAddr || known(w.n) || subs() > 0:
		return true
	case w.ticks:
		return false
	}
	w.open = false
	return false
}
