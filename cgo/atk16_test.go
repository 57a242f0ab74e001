package main

import (
	"fmt"
	"hash/maphash"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
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

// What a refused over-long CONNECT allocates on the Go heap. The bound was
// checked after cgo copied the client ID and username (connectStrings), so
// clientid_max_bytes 256 left a 65 535-byte client ID's CONNECT allocating
// about 74 KB, and 57 such CONNECTs a second were a burst to the heap's
// release (atk16). guardBasicAuth now copies only what the refusal line
// quotes (logline.Kept) of a CONNECT over a bound: under 4 KB, with its
// other strings long too (a 65 535-byte username and password beside an
// over-long client ID, a password beside an over-long username: atk17).
func TestTooLongRefusalCopiesLittle(t *testing.T) {
	testenv.Need(t, "redis-server", "mosquitto_passwd")
	redis := testenv.StartRedis(t)
	dir := t.TempDir()
	hash := passwdHash(t, dir)
	pw := filepath.Join(dir, "passwd")
	require.NoError(t, os.WriteFile(pw, []byte(benchUser(0)+":"+hash+"\n"), 0o600))
	ab := newAuthBenchWith(t, redis, map[string]string{"password_file": pw, "clientid_max_bytes": "256",
		"username_max_bytes": "256", "fail_limit": "1000000"}, benchUser)
	perConnect := func(id, user, pass string, n int) float64 {
		var m0, m1 runtime.MemStats
		cs := make([]authClient, n)
		for i := range cs {
			cs[i] = ab.client(0, id)
			cs[i].username, cs[i].password = cChars(user), cChars(pass)
			cs[i].handle += _Ctype_uintptr_t(i * 0x400)
		}
		runtime.ReadMemStats(&m0)
		for _, c := range cs {
			basicAuth(ab.h, c.handle, c.id, c.addr, c.username, c.password)
		}
		runtime.ReadMemStats(&m1)
		for _, c := range cs {
			ab.disconnect(c)
		}
		return float64(m1.TotalAlloc-m0.TotalAlloc) / float64(n)
	}
	big := strings.Repeat("B", 65535)
	for _, c := range []struct{ name, id, user, pass string }{
		{"a 65 535-byte client ID", big, benchUser(0), "bench-pw"},
		{"client ID, username and password of 65 535 bytes", big, big, big},
		{"username and password of 65 535 bytes", "dev", big, big},
	} {
		a := perConnect(c.id, c.user, c.pass, 100)
		t.Logf("%s, refused: %.0f bytes allocated a CONNECT", c.name, a)
		assert.Less(t, a, 4096.0, "%s: an over-long CONNECT's strings copied whole", c.name)
	}
}
