package plugin

import (
	"crypto/rand"
	"encoding/binary"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/mosquitto-guard/mosquitto-guard/internal/offheap"
)

// verifyCache remembers recent successful password verifications, so a
// reconnect storm of legitimate devices does not spend the broker thread on
// bcrypt, argon2 or PBKDF2 again. An entry is keyed by a MAC (AES-CMAC,
// cmac.go) of the username and password under a secret made at start and
// never stored, so
// the cache holds no password and nothing that can be checked offline
// without that secret. It holds the hash it was verified against: a changed
// password (file reload, new guard:user value) no longer matches it, so the
// cache is kept across reloads, when Mosquitto re-authenticates every client
// at once. The cache is bounded (least recently used out).
//
// The entries live in one array, linked by index into a list from most to
// least recently used, and are found through an open-addressing table of
// their indexes (linear probing from the MAC's first bytes, which are
// uniform and no client can aim, at most half full): no allocation per
// entry. Both are mapped off the Go heap (offheap.Slice, issue 12), where
// they held about 53 bytes of live heap per entry, which the collector's
// headroom about doubles in RSS: an entry is 40 bytes and its 2 to 4 table
// slots 8 to 16 (TestVerifyCacheEntryBytes), none of it the collector's.
// An entry keeps the 128-bit MAC: a password other than the one verified
// matches it only if its MAC is the same, without the secret
// a chance of 2⁻¹²⁸ a try, and each try is a CONNECT. For the same reason it
// keeps 128 bits of a keyed hash of the password hash it was verified
// against (hashSum), not the string: a changed hash matches the old one's
// sum with a chance of 2⁻¹²⁸, and no one can aim at it without the seeds.
type verifyCache struct {
	secret [32]byte
	max    int

	hashSeeds [2]maphash.Seed // hashSum's

	mu sync.Mutex
	// Both mapped off the Go heap, at most max entries and 4 max table
	// slots (grown as entries come); unmapped by free (the plugin's cleanup).
	macs       *macState                  // the keyed MAC, made once (c.mu held to use it)
	table      *offheap.Slice[int32]      // entry index + 1 (0: empty slot); a power of two long, at least twice the entries
	entries    *offheap.Slice[cacheEntry] // all in use: a full cache reuses its least recently used
	head, tail int32                      // most and least recently used; none: -1
	sums       [sumMemoSlots]sumMemo      // hashSum's recent answers (sumLocked)

	hits, misses atomic.Uint64 // for the metrics
}

type cacheEntry struct {
	mac        [16]byte  // the AES-CMAC of username and password (all its 128 bits)
	hash       [2]uint64 // hashSum of the hash verified against
	prev, next int32     // toward head, toward tail; none: -1
}

func newVerifyCache(max int) *verifyCache {
	c := &verifyCache{max: max, head: -1, tail: -1, hashSeeds: [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()},
		table: offheap.NewSlice[int32](), entries: offheap.NewSlice[cacheEntry]()}
	_, _ = rand.Read(c.secret[:])
	c.macs = &macState{m: newMAC(c.secret[:])}
	return c
}

// newMAC keys the cache's MAC, AES-CMAC (cmac.go), under the secret (a
// variable: tests count the calls). It is called once per cache: the key
// schedule and CMAC's two subkeys are made once and used under c.mu. The
// cache serves the broker thread, one CONNECT at a time, where a sync.Pool
// cost more than the lock and lost its states at every collection.
var newMAC = func(key []byte) *cmac { return newCMAC(key) }

// macState is the keyed MAC with a buffer of its own: the input is copied
// into buf, reused, and a cache hit allocates nothing.
type macState struct {
	m   *cmac
	buf []byte
}

// mac returns the MAC of username and password.
func (c *verifyCache) mac(username string, password []byte) [16]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.keyLocked(username, password)
}

// keyLocked is what an entry keeps of username and password: their
// AES-CMAC, all 128 bits of it (c.mu held). The username goes in with its
// length, so that no username and password run into another pair's.
func (c *verifyCache) keyLocked(username string, password []byte) [16]byte {
	m := c.macs
	m.buf = binary.BigEndian.AppendUint64(m.buf[:0], uint64(len(username)))
	m.buf = append(m.buf, username...)
	m.buf = append(m.buf, password...)
	out := m.m.sum(m.buf)
	clear(m.buf) // the password is not kept past the call
	return out
}

// hit reports whether username and password verified against hash before.
func (c *verifyCache) hit(username string, password []byte, hash string) bool {
	if c.max == 0 {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.hitKey(c.keyLocked(username, password), hash) {
		c.misses.Add(1)
		return false
	}
	c.hits.Add(1)
	return true
}

// add remembers a successful verification.
func (c *verifyCache) add(username string, password []byte, hash string) {
	if c.max == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.addKey(c.keyLocked(username, password), hash)
}

// hashSum is what an entry keeps of the hash it was verified against: two
// 64-bit keyed hashes of it.
func (c *verifyCache) hashSum(hash string) [2]uint64 {
	return [2]uint64{maphash.String(c.hashSeeds[0], hash), maphash.String(c.hashSeeds[1], hash)}
}

// sumMemo is one of hashSum's answers, for the string s itself.
type sumMemo struct {
	s   string
	sum [2]uint64
}

// sumMemoSlots bounds the memo: at most that many stored hashes (about
// 100 bytes each, most of them held by the users loaded anyway) kept alive
// by it, in 8 KiB of slots.
const sumMemoSlots = 256

// sumLocked is hashSum(hash), remembered by the string's identity (c.mu
// held): two keyed hashes of a 100-byte stored hash cost a cache hit 0.25 k
// instructions, for a string the users loaded hold from one check to the
// next (issue 12). A slot holds the string it answered for, so the string
// stays alive and unchanged (Go strings are immutable) while it is there:
// the same data pointer and length are the same bytes. A slot is chosen by
// the pointer, not the bytes, so nothing is hashed to find it; a string
// with other bytes, or the same bytes elsewhere, is hashed anew.
func (c *verifyCache) sumLocked(hash string) [2]uint64 {
	p := unsafe.StringData(hash)
	m := &c.sums[(uintptr(unsafe.Pointer(p))>>4)&(sumMemoSlots-1)]
	if len(m.s) == len(hash) && unsafe.StringData(m.s) == p && len(hash) > 0 {
		return m.sum
	}
	m.s, m.sum = hash, c.hashSum(hash)
	return m.sum
}

// hitKey is hit for the key k (c.mu held).
func (c *verifyCache) hitKey(k [16]byte, hash string) bool {
	_, i, ok := c.find(k)
	if !ok || c.entries.S[i].hash != c.sumLocked(hash) {
		return false
	}
	c.toFront(i)
	return true
}

// addKey is add for the key k (c.mu held).
func (c *verifyCache) addKey(k [16]byte, hash string) {
	sum := c.sumLocked(hash)
	slot, i, ok := c.find(k)
	if ok {
		c.entries.S[i].hash = sum
		c.toFront(i)
		return
	}
	if n := len(c.entries.S); n < c.max {
		if 2*(n+1) > len(c.table.S) {
			c.grow()
			slot, _, _ = c.find(k)
		}
		if n == cap(c.entries.S) { // mapped anew: an append would move it onto the Go heap
			c.entries.Grow(min(c.max, max(256, 2*n)))
		}
		i = int32(n)
		c.entries.S = append(c.entries.S, cacheEntry{prev: -1, next: -1})
	} else { // full: the least recently used entry's place is taken
		i = c.tail
		c.unlink(i)
		c.remove(i)
		slot, _, _ = c.find(k) // the removal moved slots
	}
	c.entries.S[i].mac, c.entries.S[i].hash = k, sum
	c.table.S[slot] = i + 1
	c.pushFront(i)
}

// len returns the number of entries.
func (c *verifyCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries.S)
}

// free unmaps the entries and the table (the plugin's cleanup): the cache
// is empty after, and maps them again if used.
func (c *verifyCache) free() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries.Free()
	c.table.Free()
	c.head, c.tail = -1, -1
	c.sums = [sumMemoSlots]sumMemo{} // the strings are not kept alive
}

// home is the slot the probe for k starts at.
func (c *verifyCache) home(k [16]byte) int {
	return int(binary.LittleEndian.Uint64(k[:8]) & uint64(len(c.table.S)-1))
}

// find returns the slot of k and its entry, or the empty slot where k
// would go (c.mu held; the table is never full).
func (c *verifyCache) find(k [16]byte) (slot int, entry int32, ok bool) {
	if len(c.table.S) == 0 {
		return 0, 0, false
	}
	mask := len(c.table.S) - 1
	for s := c.home(k); ; s = (s + 1) & mask {
		v := c.table.S[s]
		if v == 0 {
			return s, 0, false
		}
		if c.entries.S[v-1].mac == k {
			return s, v - 1, true
		}
	}
}

// grow doubles the table (at least 1024 slots: a page, and at least twice
// the entries and the one to come) and places every entry again. The new
// table is mapped before the old one is unmapped: a mapping that fails
// (out of memory) panics with the cache as it was, where freeing first
// left the entries with no table, and the next grow, sized from that empty
// table, one too small for them, in which find never met an empty slot.
func (c *verifyCache) grow() {
	n := max(1024, 2*len(c.table.S))
	for n < 2*(len(c.entries.S)+1) {
		n *= 2
	}
	next := offheap.NewSlice[int32]()
	next.Grow(n)
	c.table.Free()
	c.table = next
	c.table.S = c.table.S[:n] // zeroed: all empty
	for i := range c.entries.S {
		s, _, _ := c.find(c.entries.S[i].mac)
		c.table.S[s] = int32(i) + 1
	}
}

// remove takes entry i out of the table, moving back the entries after it
// in its run that may no longer be found past the hole (c.mu held).
func (c *verifyCache) remove(i int32) {
	hole, _, _ := c.find(c.entries.S[i].mac)
	mask := len(c.table.S) - 1
	for s := (hole + 1) & mask; c.table.S[s] != 0; s = (s + 1) & mask {
		h := c.home(c.entries.S[c.table.S[s]-1].mac)
		// The entry at s stays if its home lies cyclically in (hole, s].
		if (hole < s && hole < h && h <= s) || (s < hole && (hole < h || h <= s)) {
			continue
		}
		c.table.S[hole] = c.table.S[s]
		hole = s
	}
	c.table.S[hole] = 0
}

// toFront makes entry i the most recently used (c.mu held).
func (c *verifyCache) toFront(i int32) {
	if c.head == i {
		return
	}
	c.unlink(i)
	c.pushFront(i)
}

func (c *verifyCache) unlink(i int32) {
	e := &c.entries.S[i]
	if e.prev >= 0 {
		c.entries.S[e.prev].next = e.next
	} else {
		c.head = e.next
	}
	if e.next >= 0 {
		c.entries.S[e.next].prev = e.prev
	} else {
		c.tail = e.prev
	}
	e.prev, e.next = -1, -1
}

func (c *verifyCache) pushFront(i int32) {
	e := &c.entries.S[i]
	e.prev, e.next = -1, c.head
	if c.head >= 0 {
		c.entries.S[c.head].prev = i
	} else {
		c.tail = i
	}
	c.head = i
}
