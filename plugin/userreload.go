package plugin

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/backends/files"
)

// reloadWait bounds how long a SIGHUP holds the broker thread for the
// password file. Reading and parsing it takes about 3 µs a user for 10 000
// users (33 ms) and more per user as it grows: 1 s for 200 000, 17 s for two
// million (the 256 MiB bound), every one of them a stall of every client when
// it ran on the broker thread. A file read within reloadWait is applied
// before the broker re-checks its clients, as before; a longer one is read
// on, applied at the first CONNECT or TICK after it, and the clients whose
// user it removed or rehashed are then disconnected (kickChangedUsers).
const reloadWait = 100 * time.Millisecond

// userReloads hands password files read off the broker thread (reloadLoop)
// to the broker thread (applyUsers). At most one read waits to be applied:
// the next read starts once it is applied and its kicks are done, so that
// SIGHUPs in a burst cost one read each at most, one at a time.
type userReloads struct {
	req     chan chan struct{}          // reads asked for, each with the channel closed when it ends
	next    atomic.Pointer[files.Store] // a password file read, not applied yet
	reading atomic.Bool                 // a read is under way (reloadLoop)
	applied chan appliedUsers           // next was applied (at most one: cap 1)
	// kicking is the apply (outside a reload) whose kicks are under way,
	// from the apply until they are done; fresh, the connections admitted
	// meanwhile as a user it changed: checked against the users applied,
	// kickChangedUsers leaves them (its scan walks g.conns while CONNECTs
	// add to it). g.mu guards both.
	kicking *appliedUsers
	fresh   map[*liveConn]struct{}
	// slow, when set (tests), is added to each read: a read that must be
	// late is late on a fast machine too.
	slow time.Duration
}

// appliedUsers is a read applied in place of prev; walk: the broker's
// re-check of every client (the walk after a reload) followed it, so nobody
// needs kicking.
type appliedUsers struct {
	users, prev *files.Store
	walk        bool
}

// reloadsQueued bounds the reads asked for and not started: SIGHUPs past it
// are served by a read queued already, which starts after them.
const reloadsQueued = 16

func newUserReloads() *userReloads {
	return &userReloads{req: make(chan chan struct{}, reloadsQueued), applied: make(chan appliedUsers, 1)}
}

// reloadUsers is Reload for the files backend, on the broker thread: the
// file is read off it, and applied here if read within reloadWait.
func (g *Guard) reloadUsers() {
	r := g.reloads
	g.applyUsers(true) // a read done since: the re-check that follows sees it
	// A read under way began before this SIGHUP: the one this SIGHUP asks
	// for starts once that one is applied, on this thread, after Reload
	// returns: waiting for it would stall every client for nothing.
	busy := r.reading.Load()
	done := make(chan struct{})
	select {
	case r.req <- done:
	default:
		return // a read queued already starts after this SIGHUP
	}
	if busy {
		g.log(LevelWarning, fmt.Sprintf("mosquitto-guard: password_file %s: a read is under way; the file is read again once it is in force, and the broker re-checks its clients against the users loaded before",
			g.creds.passwordFile))
		return
	}
	t := time.NewTimer(reloadWait)
	defer t.Stop()
	select {
	case <-done:
		g.applyUsers(true)
	case <-t.C:
		g.log(LevelWarning, fmt.Sprintf("mosquitto-guard: password_file %s: not read within %v; the broker re-checks its clients against the users loaded before, and once it is read, clients whose user it removes or changes are disconnected",
			g.creds.passwordFile, reloadWait))
	}
}

// applyUsers makes a password file read off the broker thread the users
// checked (broker thread only: no CONNECT is being checked meanwhile). walk:
// the broker re-checks every client right after (a reload); otherwise the
// clients whose user the read removed or rehashed are disconnected
// (reloadLoop, kickChangedUsers). One atomic load when there is none.
func (g *Guard) applyUsers(walk bool) {
	r := g.reloads
	if r == nil {
		return
	}
	users := r.next.Swap(nil)
	if users == nil {
		return
	}
	a := appliedUsers{users: users, prev: g.creds.users.Load(), walk: walk}
	g.creds.apply(users)
	if !walk {
		g.mu.Lock()
		r.kicking, r.fresh = &a, nil
		g.mu.Unlock()
	}
	select {
	case r.applied <- a:
	default: // cannot happen: one read is applied at a time
	}
}

// Tick is the broker's periodic call (MOSQ_EVT_TICK): a password file read
// since the last CONNECT is applied now.
func (g *Guard) Tick() { g.applyUsers(false) }

// reloadLoop reads the password file each time a SIGHUP asks (reloadUsers),
// until g.stop: one read for every request queued when it starts, then a wait
// until the broker thread has applied it, then its kicks.
func (g *Guard) reloadLoop() {
	r := g.reloads
	for {
		var dones []chan struct{}
		select {
		case <-g.stop:
			return
		case d := <-r.req:
			dones = append(dones, d)
		}
		for more := true; more; { // each request queued now is served by this read
			select {
			case d := <-r.req:
				dones = append(dones, d)
			default:
				more = false
			}
		}
		// The read is not waited for by Close (spawn): the broker's exit
		// would wait up to CloseBound for a file that takes seconds to
		// parse, and nothing needs it once the guard stops.
		read := make(chan bool, 1)
		r.reading.Store(true)
		go func() { read <- g.readUsers() }()
		var ok bool
		select {
		case <-g.stop:
			return
		case ok = <-read:
		}
		r.reading.Store(false)
		for _, d := range dones {
			close(d)
		}
		if !ok {
			continue
		}
		select {
		case <-g.stop:
			return
		case a := <-r.applied:
			if !a.walk {
				g.kickChangedUsersSafely(a)
			}
		}
	}
}

// readUsers reads the password file into r.next, or logs why it keeps the
// users in force; false when it read none. A panic is logged as an error:
// the loop goes on.
func (g *Guard) readUsers() (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			g.log(LevelError, fmt.Sprintf("mosquitto-guard: internal error in the password_file read: %v", p))
			ok = false
		}
	}()
	if d := g.reloads.slow; d > 0 {
		time.Sleep(d)
	}
	users, err := g.creds.read()
	if err != nil {
		g.log(LevelError, fmt.Sprintf("mosquitto-guard: %v; keeping the %d users loaded before", err, g.creds.users.Load().Len()))
		return false
	}
	g.reloads.next.Store(users)
	if g.out.Wake != nil {
		g.out.Wake() // applied at the next TICK, not only at the next CONNECT
	}
	return true
}

// kickChangedUsers disconnects the live connections whose password this
// guard checked as a user that a.users, put in force in place of a.prev, no
// longer has or has with another hash (changed): the files backend checks
// every client that sends a username, except one admitted at its first
// sight, which sent none of its own (sighted). Every connection admitted
// before a.users was put in force was checked against a.prev: a.prev was in
// force since the apply before, whose kicks (or the broker's re-check, for
// an apply before its walk) left only clients that a.prev lets in. One
// admitted since was checked against a.users: it is left (fresh,
// noteAdmitLocked). Mosquitto would have disconnected the others in its
// re-check after the reload had the file been read in time. Each is logged
// as kicked with rule=user-changed; it may connect again and be checked
// against a.users. Two map lookups per connection, nothing per user.
func (g *Guard) kickChangedUsers(a appliedUsers) {
	r := g.reloads
	defer func() { // whatever happens, the kick window closes: fresh stops growing
		g.mu.Lock()
		r.kicking, r.fresh = nil, nil
		g.mu.Unlock()
	}()
	defer g.scanDone()
	g.scanConns(false, func(lc *liveConn) bool {
		_, fresh := r.fresh[lc]
		return !fresh && a.changed(lc)
	}, func(cands []*liveConn) { g.kick(RuleUserChanged, false, cands) })
}

// kickChangedUsersSafely is kickChangedUsers with a panic logged as an
// error: the reload loop goes on, and later SIGHUPs are still read.
func (g *Guard) kickChangedUsersSafely(a appliedUsers) {
	defer func() {
		if p := recover(); p != nil {
			g.log(LevelError, fmt.Sprintf("mosquitto-guard: internal error in the kicks of users the password file changed: %v", p))
		}
	}()
	g.kickChangedUsers(a)
}

// changed reports whether lc is a connection whose password was checked as
// a user that a.users no longer has, or has with another hash than a.prev.
func (a *appliedUsers) changed(lc *liveConn) bool {
	if !lc.hasUsername || lc.sighted {
		return false
	}
	was, _ := a.prev.Hash(lc.username())
	now, ok := a.users.Hash(lc.username())
	return !ok || now != was
}

// noteAdmitLocked records lc, just admitted, as checked against the users
// applied when it is one of the connections whose kicks are under way
// (kickChangedUsers); g.mu held. One nil check when none are.
func (g *Guard) noteAdmitLocked(lc *liveConn) {
	r := g.reloads
	if r == nil || r.kicking == nil || !r.kicking.changed(lc) {
		return
	}
	if r.fresh == nil {
		r.fresh = map[*liveConn]struct{}{}
	}
	r.fresh[lc] = struct{}{}
}
