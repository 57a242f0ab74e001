package main

import (
	"fmt"
	"hash/maphash"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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

// The slow wait is judged on ticks counted, the old one on time: when the
// release's ticks come late (its goroutine starved: a CPU-throttled
// container, a loaded machine; time.Ticker drops the ticks it could not
// deliver), each tick carries more than releaseTick's allocation. A
// stranger's 2.2 MB a second (0.3 and 1.9 MB a tick, alternately, ticks
// every 500 ms), under the README's 4 MB a second, then holds the release
// for as long as it went on (the wait before the window judged time: it
// came 10.5 s after the trickle began); judged on the time the window
// spans, it does again.
func TestAtk16SlowWaitLateTicks(t *testing.T) {
	f := &fakeHeap{at: time.Unix(1e9, 0), took: 2 * time.Millisecond}
	f.s = heapSample{allocs: 100 << 20, free: 1 << 20, inUse: 30 << 20, live: 10 << 20}
	r := f.release()
	f.at = f.at.Add(releaseBackoffMax)
	for i := 0; i < 4; i++ {
		require.False(t, f.tick(r, 4<<20), "a release during the devices' burst")
	}
	start := f.at
	for i := 0; ; i++ {
		f.at = f.at.Add(releaseTick) // every other tick dropped: 500 ms apart
		d := uint64(300 << 10)
		if i%2 == 1 {
			d = 1900 << 10
		}
		if f.tick(r, d) {
			break
		}
		if f.at.Sub(start) > time.Minute {
			t.Fatal("no release in a minute of 2.2 MB a second, under the README's 4 MB a second, with ticks 500 ms apart")
		}
	}
	t.Logf("release %v after the trickle began", f.at.Sub(start))
	assert.LessOrEqual(t, f.at.Sub(start), releaseSlowFor+time.Second)
}
