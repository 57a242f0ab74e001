package main

import (
	"net/netip"
	"strings"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// A CONNECT's three strings come back as sent, whatever their split; the
// same three again are the strings made the first time, at no allocation;
// a username absent is told from an empty one; long ones are not kept.
func TestConnectStrings(t *testing.T) {
	cs := &connectStrings{seed: connStrings.seed}
	get := func(id, addr, user string, has bool) [3]string {
		a, b, c, ids := cs.get([]byte(id), []byte(addr), []byte(user), has)
		assert.Equal(t, a+c, ids)
		if ids != "" {
			assert.Same(t, unsafe.StringData(a), unsafe.StringData(ids), "ids is the string of which both are slices")
		}
		return [3]string{a, b, c}
	}
	assert.Equal(t, [3]string{"ab", "c", "d"}, get("ab", "c", "d", true))
	assert.Equal(t, [3]string{"a", "bc", "d"}, get("a", "bc", "d", true), "same bytes, another split")
	assert.Equal(t, [3]string{"", "", ""}, get("", "", "", false))
	first := get("dev-1", "192.0.2.1", "alice", true)
	again := get("dev-1", "192.0.2.1", "alice", true)
	assert.Equal(t, first, again)
	assert.Same(t, unsafe.StringData(first[0]), unsafe.StringData(again[0]), "reused")
	// The client ID and the username are one object, which a live
	// connection keeps; the address is not in it (issue 12).
	idStart := uintptr(unsafe.Pointer(unsafe.StringData(first[0])))
	assert.Equal(t, idStart+uintptr(len(first[0])), uintptr(unsafe.Pointer(unsafe.StringData(first[2]))), "username right after the client ID")
	if a := uintptr(unsafe.Pointer(unsafe.StringData(first[1]))); a >= idStart && a < idStart+uintptr(len(first[0])+len(first[2])+1) {
		t.Errorf("the address shares the client ID's allocation")
	}
	id, addr, user := []byte("dev-1"), []byte("192.0.2.1"), []byte("alice")
	if !raceEnabled {
		assert.Zero(t, testing.AllocsPerRun(100, func() { cs.get(id, addr, user, true) }))
	}
	// The slot's bytes are a string of their own: the caller's buffer is
	// not kept.
	id[0] = 'X'
	assert.Equal(t, "dev-1", first[0])
	long := strings.Repeat("x", internMax)
	l1 := get(long, "192.0.2.1", "alice", true)
	l2 := get(long, "192.0.2.1", "alice", true)
	assert.Equal(t, [3]string{long, "192.0.2.1", "alice"}, l1)
	assert.NotSame(t, unsafe.StringData(l1[0]), unsafe.StringData(l2[0]), "over internMax: not kept")
	for _, s := range cs.slots {
		assert.LessOrEqual(t, len(s.s), internMax)
	}
}

// A password's buffer is cleared when it is released.
func TestPasswordBufCleared(t *testing.T) {
	pb := &passwordBuf{b: append([]byte(nil), "hunter2"...)}
	b := pb.b
	pb.release()
	assert.Equal(t, make([]byte, 7), b)
}

// Issue 12: the address comes back parsed as the plugin reads it
// (keys.NormalizeIP: IPv4-mapped as IPv4, no zone; the zero Addr when it
// is not an IP), kept in the slot with the strings: a device reconnecting
// from the same address is not parsed again, one from another address is,
// and over internMax every CONNECT is.
func TestConnectStringsIPParsedOnce(t *testing.T) {
	cs := &connectStrings{seed: connStrings.seed}
	parses := 0
	defer func(f func(string) (netip.Addr, error)) { normalizeIP = f }(normalizeIP)
	normalizeIP = func(s string) (netip.Addr, error) { parses++; return keys.NormalizeIP(s) }
	for _, addr := range []string{"192.0.2.1", "::ffff:192.0.2.1", "2001:DB8::1", "fe80::1%eth0", "/run/mosquitto.sock", "", "not-an-ip", "300.1.1.1"} {
		for _, id := range []string{"dev-1", strings.Repeat("x", internMax)} {
			want, _ := keys.NormalizeIP(addr)
			before := parses
			_, a, _, _, ip := cs.getIP([]byte(id), []byte(addr), []byte("alice"), true)
			assert.Equal(t, addr, a)
			assert.Equal(t, want, ip, "%q", addr)
			assert.Equal(t, before+1, parses, "%q: parsed once", addr)
			_, _, _, _, ip = cs.getIP([]byte(id), []byte(addr), []byte("alice"), true)
			assert.Equal(t, want, ip, "%q, again", addr)
			if len(id) < internMax {
				assert.Equal(t, before+1, parses, "%q: the same client again is not parsed again", addr)
			} else {
				assert.Equal(t, before+2, parses, "%q: over internMax, not kept", addr)
			}
		}
	}
}
