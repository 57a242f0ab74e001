package main

import (
	"fmt"
	"hash/maphash"
	"testing"

	"github.com/stretchr/testify/assert"
)

// A slot's hash only tells slots apart: a slot whose hash equals another
// CONNECT's (a 64-bit collision, forced here by writing the slot) but
// whose strings are another device's never gives that device's strings
// out. Nor do the zero slot, an absent username against an empty one, or
// the same bytes split otherwise between client ID, username and address.
func TestAtk16InternSlotHashCollision(t *testing.T) {
	cs := &connectStrings{seed: maphash.MakeSeed()}
	sumOf := func(id, user, addr string) uint64 { return maphash.Bytes(cs.seed, []byte(id+user+addr)) }
	// Victim B's slot holds attacker A's strings under B's hash, with
	// every other field equal (same lengths, username present).
	type triple struct{ id, user, addr string }
	pairs := []struct{ a, b triple }{
		{triple{"dev-A", "alice", "192.0.2.1"}, triple{"dev-B", "alice", "192.0.2.1"}},
		{triple{"dev-A", "alice", "192.0.2.1"}, triple{"dev-A", "alicf", "192.0.2.1"}},
		{triple{"dev-A", "alice", "192.0.2.1"}, triple{"dev-A", "alice", "192.0.2.2"}},
		{triple{"ab", "c", "d"}, triple{"a", "bc", "d"}},
		{triple{"a", "b", "cd"}, triple{"a", "bc", "d"}},
	}
	for i, p := range pairs {
		sb := sumOf(p.b.id, p.b.user, p.b.addr)
		cs.slots[sb%internSlots] = internSlot{s: p.a.id + p.a.user, addr: p.a.addr, sum: sb,
			idLen: uint32(len(p.b.id)), hasUsername: true}
		id, addr, user, ids := cs.get([]byte(p.b.id), []byte(p.b.addr), []byte(p.b.user), true)
		assert.Equal(t, [4]string{p.b.id, p.b.addr, p.b.user, p.b.id + p.b.user}, [4]string{id, addr, user, ids}, "pair %d: another device's strings given out", i)
	}
	// Absent against empty username, same hash.
	sb := sumOf("dev", "", "192.0.2.9")
	cs.slots[sb%internSlots] = internSlot{s: "dev", addr: "192.0.2.9", sum: sb, idLen: 3, hasUsername: true}
	cs.get([]byte("dev"), []byte("192.0.2.9"), nil, false)
	assert.False(t, cs.slots[sb%internSlots].hasUsername, "an absent username must not reuse an empty one's slot")
	// Many devices through few slots: each gets its own strings back.
	for round := 0; round < 3; round++ {
		for d := 0; d < 5000; d++ {
			id, user, addr := fmt.Sprintf("d%d", d), fmt.Sprintf("u%d", d%7), fmt.Sprintf("10.0.%d.%d", d/250, d%250)
			gi, ga, gu, _ := cs.get([]byte(id), []byte(addr), []byte(user), true)
			if gi != id || ga != addr || gu != user {
				t.Fatalf("device %d got %q %q %q", d, gi, ga, gu)
			}
		}
	}
}
