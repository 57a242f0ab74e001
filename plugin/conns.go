package plugin

import (
	"net/netip"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/mosquitto-guard/mosquitto-guard/conflicts"
	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// liveConn is one connection this guard let through, or, once it has ended,
// the offline persistent session it left (offline). It takes 80 bytes
// (TestLiveConnBytes; 112 before issue 12's last round): its
// conflict-tracking connection is kept as its number and start, and
// rebuilt when the tracker is told (connOf); its IP as 16 bytes (ipAddr: a
// netip.Addr takes 24); its username as a length (setIDs); what few clients
// have (a certificate, an address that is not a plain IP) is in a record
// of its own; what a deferred one waits with is in g.pending, and the
// connection it took over in g.displaced. A record that ended is reused by
// a later admit, once nothing can still hold it (records.go): a CONNECT
// allocates none.
type liveConn struct {
	handle      uintptr
	clientID    string   // its bytes are followed by the username's, in one object (setIDs)
	*connRare            // certID, certSubject, addr: never nil (noRare when none)
	ip16        [16]byte // the IP, 16-byte form (packIP), unless connRare's ownIP
	seq         uint64   // its tracking connection's number (conflicts.Conn.Seq); 0 without tracking
	sinceMs     int64    // admitted at, unix ms; its tracking connection's ConnectedMs
	userLen     uint32   // the username's length (username)
	visited     uint32   // the reload whose re-authentication walk visited it (its low 32 bits)
	hasUsername bool
	pending     bool // deferred to a later check: confirmed after confirmDelay without DISCONNECT (with tracking: in g.pending until then, offline or not)
	flagged     bool // banned while connected: its kick is on the way
	offline     bool // the connection ended; the broker keeps its session
}

// displacedBy is the connection lc took over (g.displaced), nil if none;
// g.mu held.
func (g *Guard) displacedBy(lc *liveConn) *liveConn {
	if len(g.displaced) == 0 {
		return nil
	}
	return g.displaced[lc]
}

// setDisplaced records that lc took over d (nil: none, or no longer);
// g.mu held.
func (g *Guard) setDisplaced(lc, d *liveConn) {
	switch {
	case d != nil:
		if g.displaced == nil {
			g.displaced = map[*liveConn]*liveConn{}
		}
		g.displaced[lc] = d
	case len(g.displaced) > 0:
		delete(g.displaced, lc)
	}
}

// setIDs sets lc's client ID and username from ids, the two end to end in
// one string (idsOf), the client ID its first n bytes. The record keeps
// the client ID and the username's length, not a second string header
// (issue 12: 80 bytes, Go's size class 80, where 88 was class 96).
func (lc *liveConn) setIDs(ids string, n int) {
	lc.clientID, lc.userLen = ids[:n], uint32(len(ids)-n)
}

// username is lc's username ("" when it has none: hasUsername): the
// userLen bytes after the client ID's, in the object that holds both
// (setIDs), which the client ID keeps alive. A record whose clientID was
// set otherwise has userLen 0.
func (lc *liveConn) username() string {
	if lc.userLen == 0 {
		return ""
	}
	return unsafe.String((*byte)(unsafe.Add(unsafe.Pointer(unsafe.StringData(lc.clientID)), len(lc.clientID))), lc.userLen)
}

// connRare is what few connections have. It is never written after admit.
type connRare struct {
	certID      string     // the client certificate's ID, "" without one
	certSubject string     // its subject, for kick lines (logval.Max bytes of it)
	addr        string     // the broker's address text, when not an IP (conflict tracking records it)
	ip          netip.Addr // the IP when ownIP: none (the address is addr), or one packIP cannot keep
	ownIP       bool       // ip is the connection's IP, not liveConn's ip16
	sighted     bool       // admitted at its first sight (FirstSight): no password of it was checked
}

// packIP returns ip's 16 bytes for liveConn's ip16, and false when they
// would not give ip back (invalid, with a zone, or IPv4-mapped IPv6: the
// guard's addresses are none of these, keys.NormalizeIP): that ip is kept
// in connRare.
func packIP(ip netip.Addr) ([16]byte, bool) {
	if !ip.IsValid() || ip.Zone() != "" || ip.Is4In6() {
		return [16]byte{}, false
	}
	return ip.As16(), true
}

// ipAddr is lc's IP; invalid when its address is not one (connRare's addr).
func (lc *liveConn) ipAddr() netip.Addr {
	if lc.ownIP {
		return lc.connRare.ip
	}
	return netip.AddrFrom16(lc.ip16).Unmap()
}

// noRare is the connRare of a connection without any; never written.
var noRare = &connRare{}

// confirmDelay: a client this plugin deferred and a later check refused is
// disconnected within the same broker loop; one still there after this
// was let in.
const confirmDelay = 500 * time.Millisecond

// offlineMax bounds the offline persistent sessions a guard remembers. They
// are only needed to recognise the broker's re-authentication of a session
// after a reload where no TICK tells the walk's end (per_listener_settings on
// 2.0.11-2.0.14); past the bound, sessions that end are forgotten at once. An
// entry costs about 130 bytes (its 80-byte record, its slot in g.conns, its
// client ID and username): 100 000 of them about 13 MB.
const offlineMax = 100000

// Disconnected forgets a connection (MOSQ_EVT_DISCONNECT) whose session
// ends with it, or the offline session the broker is now dropping (the
// second DISCONNECT of a pointer when the client ID connects again).
func (g *Guard) Disconnected(handle uintptr) { g.disconnected(handle, false) }

// DisconnectedKeepSession is Disconnected for a client that asked for a
// persistent session (clean session false): its entry stays, offline, so
// that the broker's re-authentication of that session after a reload is
// recognised as one (never counted, never admitted). The broker frees an
// expired session without telling plugins: the entry then stays until a new
// client gets its pointer (see reauth) or offlineMax is reached.
func (g *Guard) DisconnectedKeepSession(handle uintptr) { g.disconnected(handle, true) }

func (g *Guard) disconnected(handle uintptr, keep bool) {
	g.mu.Lock()
	lc := g.conns.get(handle)
	if lc == nil {
		g.mu.Unlock()
		return
	}
	if lc.offline { // the session itself ends now
		g.dropLocked(lc)
		g.mu.Unlock()
		return
	}
	recorded := !lc.pending
	flagged := lc.flagged
	// holder: the client ID's entry once lc is out of it, for
	// releaseHolderLocked (no second lookup of the client ID).
	holder, at := g.byID.lookup(lc.clientID)
	if holder == lc {
		g.byID.delAt(at)
		holder = nil
		// A newer connection refused by a later check: the one it would
		// have taken over is still here, and still names the client ID (a
		// kick queued for it, or a client-ID ban, must still find it).
		if d := g.displacedBy(lc); d != nil && g.conns.get(d.handle) == d && !d.offline {
			g.byID.set(d) // d's client ID is lc's
			holder = d
		}
	}
	g.setDisplaced(lc, nil)
	// What the tracker is told is read now: once g.mu is released, the
	// record may be reused.
	clientID, idsLen, tracked := lc.clientID, len(lc.clientID)+int(lc.userLen), recorded && g.tracker != nil
	var conn conflicts.Conn
	if tracked {
		conn = g.connOf(lc)
	}
	if keep && g.offline < offlineMax {
		// pending stays: a deferred record stays in g.pending until
		// confirmDue passes it, and is not reused before (records.go).
		lc.offline, lc.flagged = true, false
		g.offline++
	} else {
		g.conns.del(handle)
		g.releaseHolderLocked(lc, holder)
	}
	g.mu.Unlock()
	if flagged {
		g.out.Flagged(-1)
	}
	if tracked {
		g.tracker.Disconnected(ownTracked(idsLen, clientID), conn)
	}
}

// dropLocked removes an offline entry; g.mu held.
func (g *Guard) dropLocked(lc *liveConn) {
	g.conns.del(lc.handle)
	g.offline--
	if lc.flagged { // flagged by a scan that did not skip offline entries
		lc.flagged = false
		g.out.Flagged(-1)
	}
	g.releaseLocked(lc)
}

// reauth reports whether handle is a live connection this guard let
// through: the broker calls BASIC_AUTH for a connected client only to
// re-check it after a reload, so a refusal then is not an attack, nor a
// success a new connection. An offline session's entry at the pointer of a
// BASIC_AUTH outside a reload's walk is stale (the broker freed the session
// without a DISCONNECT and reused its memory): it is removed, and the client
// is new.
func (g *Guard) reauth(handle uintptr) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	lc := g.conns.get(handle)
	if lc != nil && lc.offline {
		g.dropLocked(lc)
		return false
	}
	return lc != nil
}

// ReloadVisit reports whether c's BASIC_AUTH, during the reload whose number
// is reload, is the broker re-checking a client this guard knows: a live
// connection, or an offline session with the same client ID, address and
// username, not visited yet by this reload's walk (the walk visits each
// client once). False means it cannot be part of that walk as far as this
// guard knows.
//
// An offline entry may be stale: the broker frees a session without a
// DISCONNECT (its expiry; an MQTT 5 client with clean start 0 and session
// expiry 0, which the plugin cannot tell from a kept session), and a new
// client may get its memory. Such a client, its CONNECT read while a walk
// is open (per_listener_settings on 2.0.11 to 2.0.14, which send no TICK),
// was taken for a re-check with a matching client ID alone: let in while
// Redis was down under deny, past automatic bans, and never admitted, so no
// later ban kicked it (atk54). The broker keeps an offline session's
// address and username, so the walk's call carries the ones the entry
// recorded; a new client's address is where it connects from, which it
// cannot choose: from elsewhere it is not the session.
func (g *Guard) ReloadVisit(c *Client, reload uint64) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	lc := g.conns.get(c.Handle)
	if lc == nil || lc.visited == uint32(reload) {
		return false
	}
	if lc.offline && (lc.clientID != c.ClientID || lc.ipAddr() != c.ip().Unmap() ||
		lc.hasUsername != c.HasUsername || lc.username() != c.Username) {
		return false
	}
	lc.visited = uint32(reload)
	return true
}

// admit records a connection let through; pending when a later check
// decides; sighted when it is admitted at its first sight (FirstSight), with
// no password checked. Conflict tracking hears of it now, or of a pending
// one once confirmLoop finds it still there.
func (g *Guard) admit(c *Client, ip netip.Addr, pending, sighted bool) {
	g.admitAt(c, ip, pending, sighted, g.now())
}

// admitAt is admit with the time now read.
func (g *Guard) admitAt(c *Client, ip netip.Addr, pending, sighted bool, now time.Time) {
	ip16, packed := packIP(ip)
	rec := liveConn{handle: c.Handle, hasUsername: c.HasUsername,
		connRare: noRare, ip16: ip16, pending: pending, sinceMs: now.UnixMilli()}
	rec.setIDs(idsOf(c), len(c.ClientID))
	if c.CertID != "" || c.CertSubject != "" || !packed || sighted {
		rec.connRare = &connRare{certID: c.CertID, certSubject: subjectKept(c.CertSubject), sighted: sighted}
		if !packed {
			rec.ip, rec.ownIP = ip, true
		}
		if !ip.IsValid() {
			rec.addr = c.Address
		}
	}
	var conn conflicts.Conn
	if g.tracker != nil {
		text, addr := connAddr(c, ip)
		conn = g.tracker.NewConnAddr(principalOf(c), text, addr, now)
		rec.seq, rec.sinceMs = conn.Seq, conn.ConnectedMs
	}
	var other *conflicts.Conn
	g.mu.Lock()
	lc := g.newRecLocked() // a record that ended, if any (records.go)
	*lc = rec
	if old := g.conns.get(c.Handle); old != nil && old.offline {
		g.dropLocked(old) // stale: the pointer was freed and reused
	}
	prev, at := g.byID.lookup(c.ClientID) // nothing changes the index until putAt
	if prev != nil && prev.handle != c.Handle {
		if g.tracker != nil {
			o := g.connOf(prev)
			other = &o
		}
		// If lc is refused after all (a later check), prev names its
		// client ID again. One level only: prev forgets its own.
		g.setDisplaced(lc, prev)
		g.setDisplaced(prev, nil)
	}
	g.conns.put(lc)
	g.byID.putAt(at, lc)  // lc's client ID is c.ClientID
	g.noteAdmitLocked(lc) // a password file's kicks under way leave it (userreload.go)
	if pending && g.tracker != nil {
		g.pending = append(g.pending, pendingConn{lc, other})
	}
	g.mu.Unlock()
	if !pending && g.tracker != nil {
		g.tracker.Connected(ownTracked(len(c.ClientID)+len(c.Username), c.ClientID), conn, other)
	}
}

// idsOf is c's client ID and username end to end: c.IDs when it is that
// (cgo makes it so: a connection then copies nothing), else a copy made
// now.
func idsOf(c *Client) string {
	n := len(c.ClientID)
	if len(c.IDs) == n+len(c.Username) && c.IDs[:n] == c.ClientID && c.IDs[n:] == c.Username {
		return c.IDs
	}
	if c.Username == "" {
		return c.ClientID
	}
	return c.ClientID + c.Username
}

// connOf is lc's conflict-tracking connection, as NewConn described it at
// admit (g.tracker set): its identity fields never change, so it is read
// with or without g.mu. Its IP goes as its 16 bytes (conflicts.Conn.Addr),
// whose text the tracker's worker writes, the same text admit gave
// (connAddr: the IP's canonical text): a DISCONNECT formatted it here,
// an object on the broker thread (issue 12).
func (g *Guard) connOf(lc *liveConn) conflicts.Conn {
	c := conflicts.Conn{Seq: lc.seq, Principal: ownPart(len(lc.clientID)+int(lc.userLen), conflicts.Principal(lc.certID, lc.hasUsername, lc.username())),
		Addr: lc.ipAddr(), ConnectedMs: lc.sinceMs}
	if !c.Addr.IsValid() {
		c.IP = lc.addr
	}
	return c
}

// pendingConn is a deferred connection in g.pending, with the tracking
// connection of the one it took over (nil: none), for its Connected at its
// confirmation. It is kept here, not in the record: few records wait.
type pendingConn struct {
	lc    *liveConn
	other *conflicts.Conn
}

// confirmBatch bounds the deferred connections confirmed per lock hold.
const confirmBatch = 256

// confirmHashMax bounds the bytes of client IDs (and usernames, the
// principal connOf names) over keys.TrackingMax that one hold of g.mu
// hands the tracker: Connected hashes each (SHA-256, about
// 45 µs for 64 KB here), under g.mu since 08cbca5. 256 deferred 64 KB
// client IDs held the broker thread off g.mu for 11 ms a hold, 22 ms
// waited (a hostile tester: TestConfirmHoldHashesBounded); this bound
// makes a hold hash at most about five of them (0.3 ms).
const confirmHashMax = 256 << 10

// confirmLoop turns deferred connections still there after confirmDelay
// into tracked ones.
func (g *Guard) confirmLoop() { every(g.stop, confirmDelay/5, g.confirmDue) }

// confirmDue confirms the deferred connections older than confirmDelay.
// Each is queued to the tracker under g.mu, in the same hold that clears
// its pending mark: disconnected, which reads that mark under g.mu and
// queues the connection's end only if it is clear, then always queues the
// end after the connect. Queued after the release, as it was, the end of a
// connection that ended in between went first, and the worker wrote the
// connection live after it had ended (unless its pair was folded away): a
// live entry in Redis of a device that was gone, for every broker to see
// (found by a hostile tester; TestConfirmQueuedBeforeItsEnd). Connected
// never waits (a full queue drops the event), and a hold queues at most
// confirmBatch, and hashes at most about confirmHashMax bytes of client IDs
// and usernames (byID's probe, Connected's hash and connOf's principal
// alike): the last connection counted may pass it by its two, 128 KB.
func (g *Guard) confirmDue() {
	cutoff := g.now().Add(-confirmDelay).UnixMilli()
	for more := true; more; {
		g.mu.Lock()
		i, hashed := 0, 0
		for ; i < len(g.pending) && i < confirmBatch && hashed < confirmHashMax && g.pending[i].lc.sinceMs < cutoff; i++ {
			lc := g.pending[i].lc
			if g.conns.get(lc.handle) == lc && !lc.offline {
				// A long client ID is counted before anything hashes it:
				// byID's probe hashes and compares it whole too, and a
				// connection taken over (below) is hashed that way alone.
				if len(lc.clientID) > keys.TrackingMax {
					hashed += len(lc.clientID)
				}
				if h := g.byID.get(lc.clientID); h != nil && h != lc && !h.pending {
					// Taken over by a connection admitted at once, whose
					// connect (other: lc) admitAt has queued or queues now;
					// lc's DISCONNECT follows (the takeover). Queued after
					// the taker's, lc's connect overwrote the taker's live
					// field, and lc's end then cleared it: the taker,
					// connected, was live nowhere in Redis (a hostile
					// tester, TestAtk22ConfirmAfterTakeoverLeavesTakerLive).
					// lc stays unrecorded (pending): its end queues nothing,
					// and, out of g.pending, the garbage collector takes it.
					continue
				}
				// connOf names its principal: a username over
				// keys.TrackingMax (without a certificate) is hashed
				// whole there, under g.mu too, and counted as a long
				// client ID is (a hostile tester: 256 deferred 64 KB
				// usernames took one hold of 11 ms;
				// TestConfirmHoldHashesBounded).
				if lc.certID == "" && lc.hasUsername && int(lc.userLen) > keys.TrackingMax {
					hashed += int(lc.userLen)
				}
				g.tracker.Connected(ownTracked(len(lc.clientID)+int(lc.userLen), lc.clientID), g.connOf(lc), g.pending[i].other)
			}
			// Out of g.pending: an offline one may be reused once it is
			// dropped; one that ended is the garbage collector's.
			lc.pending = false
		}
		more = i == confirmBatch || hashed >= confirmHashMax
		clear(g.pending[:i])
		g.pending = g.pending[i:] // no copy under the lock; append reallocates
		g.mu.Unlock()
		if f := g.confirmHook.Load(); f != nil {
			(*f)()
		}
	}
}

// localHolder returns this broker's live connection of clientID if another
// principal holds it.
func (g *Guard) localHolder(clientID, principal string) *store.Conn {
	g.mu.Lock()
	defer g.mu.Unlock()
	if lc := g.byID.get(clientID); lc != nil && conflicts.Principal(lc.certID, lc.hasUsername, lc.username()) != principal {
		o := g.tracker.StoreConn(g.connOf(lc))
		return &o
	}
	return nil
}

// principalOf returns c's principal for conflict detection: its
// certificate when it has one, else its username (conflicts.Principal),
// as ownPart keeps it: tracking's queue and memos keep it past the
// connection.
func principalOf(c *Client) string {
	return ownPart(len(c.ClientID)+len(c.Username), conflicts.Principal(c.CertID, c.HasUsername, c.Username))
}

// ownMax: a CONNECT's client ID and username longer together than this are
// not kept alive by the parts of them kept past the connection (ownPart).
const ownMax = 2 * keys.TrackingMax

// ownPart returns s, a part of a client's client ID or username (or a value
// made from them), to be kept past its connection (queued for Redis, a
// principal): a copy when the client ID and username are longer together
// (idsLen) than ownMax, else s itself (no allocation: a fleet's CONNECTs). The
// broker side makes the two one object (cgo's connectStrings), so a short
// username kept as it is kept a 64 KB client ID with it: with Redis
// stopped, 2 000 closed connections with 60 000-byte client IDs, queued for
// tracking and known sources by their principal and username, held 128 MB.
func ownPart(idsLen int, s string) string {
	if idsLen <= ownMax {
		return s
	}
	return strings.Clone(s)
}

// ownTracked is ownPart for a client ID or username handed to what keeps
// its keys.Tracking form (the tracker, known sources): one over
// keys.TrackingMax is kept as its hash, never whole, so it is handed as it
// is (not copied only to be hashed); a shorter one is copied as ownPart
// says (a short client ID kept as it is kept a long username with it).
func ownTracked(idsLen int, s string) string {
	if len(s) > keys.TrackingMax {
		return s
	}
	return ownPart(idsLen, s)
}

// subjectKept cuts a certificate subject to what a log line quotes of it
// (logval.Max bytes, at a character boundary): a connection keeps no more
// of it than its kick line shows.
func subjectKept(s string) string {
	if len(s) <= logval.Max {
		return s
	}
	cut := logval.Max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// connAddr is c's address as conflict tracking takes it
// (Tracker.NewConnAddr): the broker's text when it is not an IP or is the
// IP's canonical text already, else ip, whose text the tracker's worker
// formats, as it does a DISCONNECT's (connOf). The IP's text made here
// (ip.String()) was an allocation on the broker thread at every CONNECT
// whose address is not in canonical form: every IPv4 client of a
// dual-stack listener (libwebsockets': "::ffff:192.0.2.7"), cache hits
// included (cgo TestAtk24HitAllocsAnyInput).
func connAddr(c *Client, ip netip.Addr) (string, netip.Addr) {
	if !ip.IsValid() || isIPText(ip, c.Address) {
		return c.Address, netip.Addr{}
	}
	return "", ip
}

// isIPText reports, without formatting ip, that addr, the broker's address
// that keys.NormalizeIP turned into ip, is ip's canonical text already: an
// IPv4 address written as a dotted quad, which is the only way netip parses
// one (no leading zeros, no zone; an IPv4-mapped IPv6 address has a ':').
// False says nothing: the caller formats ip (issue 12: formatting the
// address twice a CONNECT cost the broker thread 0.3 k instructions). An
// empty addr (a caller without the broker's text) is never ip's text.
func isIPText(ip netip.Addr, addr string) bool {
	return ip.Is4() && len(addr) >= len("0.0.0.0") && len(addr) <= len("255.255.255.255") && strings.IndexByte(addr, ':') < 0
}

// appendIPText appends ip's canonical text to dst: addr's bytes when
// isIPText says they are that text, else ip formatted.
func appendIPText(dst []byte, ip netip.Addr, addr string) []byte {
	if isIPText(ip, addr) {
		return append(dst, addr...)
	}
	return ip.AppendTo(dst)
}
