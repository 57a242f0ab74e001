package main

/*
#include <string.h>
*/
import "C"

import (
	"hash/maphash"
	"net/netip"
	"sync"
	"unsafe"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// cBytes views a NUL-terminated C string's bytes, valid only while the
// callback runs (the broker frees them after): copy what is kept. The
// length is found in Go: a call to C's strlen costs a cgo transition (a
// few hundred instructions) for what is a few dozen bytes.
func cBytes(s *C.char) []byte {
	if s == nil {
		return nil
	}
	p := unsafe.Pointer(s)
	n := 0
	for *(*byte)(unsafe.Add(p, n)) != 0 {
		n++
	}
	return unsafe.Slice((*byte)(p), n)
}

// connectStrings makes the Go strings of a CONNECT's client ID, address and
// username: one allocation holds the client ID and the username, another
// the address, and a client that connected recently with the same three
// gets the strings made then, without any. A reconnect storm of the same
// devices then copies nothing from C. A live connection keeps its client ID
// and username (one object), not its address: the address is its own
// allocation, so that the record's strings do not pin it (issue 12: at
// 8 000 held connections, 18-byte client IDs, 8-byte usernames and IPv4
// addresses, the kept object went from 48 bytes to 32).
//
// The strings made are kept in internSlots slots, a slot chosen by a hash
// of the bytes (keyed per process): a new CONNECT takes the slot's place.
// Only strings of at most internMax bytes are kept, so the slots hold at
// most internSlots*internMax bytes (256 KiB) beside their own 48 KiB. A
// string is never changed once made: sharing one is safe wherever it goes.
type connectStrings struct {
	seed maphash.Seed

	mu    sync.Mutex
	buf   []byte
	slots [internSlots]internSlot
}

type internSlot struct {
	s           string // client ID and username end to end
	addr        string
	ip          netip.Addr // addr parsed (keys.NormalizeIP; invalid: not an IP)
	sum         uint64     // the bytes' hash, which chose the slot
	idLen       uint32
	hasUsername bool
}

const (
	internSlots = 1024
	internMax   = 256
)

// connStrings serves guardBasicAuth, on the broker thread.
var connStrings = &connectStrings{seed: maphash.MakeSeed()}

// get returns id, addr and username (absent: hasUsername false) as Go
// strings, and ids: the client ID and username end to end, of which
// clientID and user are slices (plugin.Client's IDs).
func (t *connectStrings) get(id, addr, username []byte, hasUsername bool) (clientID, address, user, ids string) {
	clientID, address, user, ids, _ = t.getIP(id, addr, username, hasUsername)
	return clientID, address, user, ids
}

// getIP is get, and the address parsed as the plugin reads it
// (keys.NormalizeIP; invalid when it is not an IP), kept in the slot with
// the strings: a device reconnecting from the same address is not parsed
// again (issue 12: netip's parse was 0.3 k of the broker thread's
// instructions on a cache hit).
func (t *connectStrings) getIP(id, addr, username []byte, hasUsername bool) (clientID, address, user, ids string, ip netip.Addr) {
	idLen, n := uint32(len(id)), len(id)+len(username)
	if n+len(addr) > internMax {
		// Not kept: made in one copy, straight from C's bytes. Through the
		// buffer (grown by append, its bytes then copied into the strings,
		// and dropped), a 60 000-byte client ID and username allocated
		// 320 KB a CONNECT, where the strings are 120 KB: a stranger's
		// refused CONNECTs, at 5 a second, were a burst to the heap's
		// release (heaprelease.go, releaseSlow).
		var s string
		if n > 0 {
			b := make([]byte, n)
			copy(b[copy(b, id):], username)
			s = unsafe.String(unsafe.SliceData(b), n) // b is never written again
		}
		a := string(addr)
		return s[:idLen], a, s[idLen:], s, parseIP(a)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(append(append(t.buf[:0], id...), username...), addr...)
	sum := maphash.Bytes(t.seed, t.buf)
	slot := &t.slots[sum%internSlots]
	// The slot's own fields first: a fleet of more devices than slots
	// mostly finds another device's strings there, and telling them apart
	// by its hash reads no string bytes, a cache line away and cold at a
	// fleet's CONNECT (BenchmarkBasicAuth/fleethit). Equal hashes still
	// compare the bytes.
	if slot.sum != sum || slot.idLen != idLen || slot.hasUsername != hasUsername || slot.s != string(t.buf[:n]) || slot.addr != string(t.buf[n:]) {
		a := string(t.buf[n:])
		*slot = internSlot{s: string(t.buf[:n]), addr: a, ip: parseIP(a), sum: sum, idLen: idLen, hasUsername: hasUsername}
	}
	return slot.s[:idLen], slot.addr, slot.s[idLen:], slot.s, slot.ip
}

// parseIP is addr as the plugin reads a client's address: keys.NormalizeIP,
// the zero Addr when it is not an IP.
func parseIP(addr string) netip.Addr {
	ip, _ := normalizeIP(addr)
	return ip
}

// normalizeIP is keys.NormalizeIP; a test counts its calls.
var normalizeIP = keys.NormalizeIP

// passwordBuf holds a CONNECT's password while it is checked; cleared
// after, and reused (passwords).
type passwordBuf struct{ b []byte }

// passwords keeps one cleared password buffer for the next CONNECT: a
// password is not kept past its check, so its copy need not be a new
// allocation. BASIC_AUTH runs on the broker thread, one at a time, so one
// spare buffer serves every CONNECT; a lock and a pointer cost less than a
// sync.Pool, which also dropped its buffers at every collection.
var passwords struct {
	mu    sync.Mutex
	spare *passwordBuf
}

// passwordMaxKept: a buffer grown past this by a long password is dropped,
// not kept for the next. 64 KiB, an MQTT string's most (65 535 bytes): a
// stranger's refused CONNECTs with 60 000-byte passwords, every 50 ms,
// allocated 1.2 MB a second and kept the heap's release away
// (heaprelease.go); now the spare, grown once, serves them. At most 64 KiB
// kept for the process's life.
const passwordMaxKept = 64 << 10

// copyPassword copies a C password into the spare buffer, or a new one.
func copyPassword(p *C.char) *passwordBuf {
	passwords.mu.Lock()
	pb := passwords.spare
	passwords.spare = nil
	passwords.mu.Unlock()
	if pb == nil {
		pb = new(passwordBuf)
	}
	b := cBytes(p)
	if len(b) > cap(pb.b) {
		// Grown here, not by append: append's growth took a 40 960-byte
		// buffer to 81 920 bytes for a 65 535-byte password, over
		// passwordMaxKept, and release dropped it (a stranger alternating
		// 40 000- and 65 535-byte passwords allocated both at every pair).
		// Doubling up to passwordMaxKept, an MQTT password's most, keeps it.
		pb.b = make([]byte, 0, max(len(b), min(2*cap(pb.b), passwordMaxKept)))
	}
	pb.b = append(pb.b[:0], b...)
	return pb
}

// release clears the password and keeps its buffer as the spare.
func (pb *passwordBuf) release() {
	clear(pb.b)
	if cap(pb.b) > passwordMaxKept {
		return
	}
	passwords.mu.Lock()
	if passwords.spare == nil {
		passwords.spare = pb
	}
	passwords.mu.Unlock()
}
