package main

import (
	"strings"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
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
