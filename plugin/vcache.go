package plugin

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"sync"
	"sync/atomic"
)

// verifyCache remembers recent successful password verifications, so a
// reconnect storm of legitimate devices does not spend the broker thread on
// bcrypt, argon2 or PBKDF2 again. An entry is keyed by an HMAC of the
// username and password under a secret made at start and never stored, so
// the cache holds no password and nothing that can be checked offline
// without that secret. It holds the hash it was verified against: a changed
// password (file reload, new guard:user value) no longer matches it, so the
// cache is kept across reloads, when Mosquitto re-authenticates every client
// at once. The cache is bounded (least recently used out).
//
// The entries live in one slice, linked by index into a list from most to
// least recently used, and are found through an open-addressing table of
// their indexes (linear probing from the MAC's first bytes, which are
// uniform and no client can aim, at most half full): no allocation per
// entry, one pointer (its hash) for the collector to follow, about 60 bytes
// (TestVerifyCacheEntryBytes). An entry keeps the first 128 bits of the
// HMAC: a password other than the one verified matches it only if its HMAC
// shares them, without the secret a chance of 2⁻¹²⁸ a try, and each try is a
// CONNECT.
type verifyCache struct {
	secret [32]byte
	max    int

	mu         sync.Mutex
	macs       *macState    // the keyed HMAC, made once (c.mu held to use it)
	table      []int32      // entry index + 1 (0: empty slot); a power of two long, at least twice the entries
	entries    []cacheEntry // all in use: a full cache reuses its least recently used
	head, tail int32        // most and least recently used; none: -1

	hits, misses atomic.Uint64 // for the metrics
}

type cacheEntry struct {
	mac        [16]byte // the first half of the HMAC-SHA256 (128 bits, as in RFC 4868's truncation)
	hash       string
	prev, next int32 // toward head, toward tail; none: -1
}

func newVerifyCache(max int) *verifyCache {
	c := &verifyCache{max: max, head: -1, tail: -1}
	_, _ = rand.Read(c.secret[:])
	c.macs = &macState{h: newMAC(c.secret[:])}
	return c
}

// newMAC keys an HMAC-SHA256 (a variable: tests count the calls). It is
// called once per cache: crypto/hmac saves the hash states after the keyed
// pads at the first Reset and restores them at each use after, so a MAC
// costs two SHA-256 blocks (username and password up to 47 bytes together),
// where keying it anew costs four. The one state is used under c.mu: the
// cache serves the broker thread, one CONNECT at a time, where a sync.Pool
// cost more than the lock and lost its states at every collection.
var newMAC = func(key []byte) hash.Hash { return hmac.New(sha256.New, key) }

// macState is a keyed HMAC with buffers of its own: bytes handed to the
// hash.Hash interface escape to the heap, so the input is copied into buf
// and the sum written to sum, both reused, and a cache hit allocates
// nothing.
type macState struct {
	h   hash.Hash
	buf []byte
	sum []byte
}

// mac returns the HMAC of username and password.
func (c *verifyCache) mac(username string, password []byte) [32]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.macLocked(username, password)
}

// macLocked is mac with c.mu held.
func (c *verifyCache) macLocked(username string, password []byte) [32]byte {
	m := c.macs
	m.h.Reset()
	m.buf = binary.BigEndian.AppendUint64(m.buf[:0], uint64(len(username)))
	m.buf = append(m.buf, username...)
	m.buf = append(m.buf, password...)
	m.h.Write(m.buf)
	clear(m.buf) // the password is not kept past the call
	m.sum = m.h.Sum(m.sum[:0])
	var out [32]byte
	copy(out[:], m.sum)
	return out
}

// keyLocked is what an entry keeps of the MAC of username and password
// (c.mu held).
func (c *verifyCache) keyLocked(username string, password []byte) [16]byte {
	m := c.macLocked(username, password)
	return [16]byte(m[:16])
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

// hitKey is hit for the key k (c.mu held).
func (c *verifyCache) hitKey(k [16]byte, hash string) bool {
	_, i, ok := c.find(k)
	if !ok || c.entries[i].hash != hash {
		return false
	}
	c.toFront(i)
	return true
}

// addKey is add for the key k (c.mu held).
func (c *verifyCache) addKey(k [16]byte, hash string) {
	slot, i, ok := c.find(k)
	if ok {
		c.entries[i].hash = hash
		c.toFront(i)
		return
	}
	if len(c.entries) < c.max {
		if 2*(len(c.entries)+1) > len(c.table) {
			c.grow()
			slot, _, _ = c.find(k)
		}
		i = int32(len(c.entries))
		c.entries = append(c.entries, cacheEntry{prev: -1, next: -1})
	} else { // full: the least recently used entry's place is taken
		i = c.tail
		c.unlink(i)
		c.remove(i)
		slot, _, _ = c.find(k) // the removal moved slots
	}
	c.entries[i].mac, c.entries[i].hash = k, hash
	c.table[slot] = i + 1
	c.pushFront(i)
}

// len returns the number of entries.
func (c *verifyCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// home is the slot the probe for k starts at.
func (c *verifyCache) home(k [16]byte) int {
	return int(binary.LittleEndian.Uint64(k[:8]) & uint64(len(c.table)-1))
}

// find returns the slot of k and its entry, or the empty slot where k
// would go (c.mu held; the table is never full).
func (c *verifyCache) find(k [16]byte) (slot int, entry int32, ok bool) {
	if len(c.table) == 0 {
		return 0, 0, false
	}
	mask := len(c.table) - 1
	for s := c.home(k); ; s = (s + 1) & mask {
		v := c.table[s]
		if v == 0 {
			return s, 0, false
		}
		if c.entries[v-1].mac == k {
			return s, v - 1, true
		}
	}
}

// grow doubles the table (at least 16 slots) and places every entry again.
func (c *verifyCache) grow() {
	c.table = make([]int32, max(16, 2*len(c.table)))
	for i := range c.entries {
		s, _, _ := c.find(c.entries[i].mac)
		c.table[s] = int32(i) + 1
	}
}

// remove takes entry i out of the table, moving back the entries after it
// in its run that may no longer be found past the hole (c.mu held).
func (c *verifyCache) remove(i int32) {
	hole, _, _ := c.find(c.entries[i].mac)
	mask := len(c.table) - 1
	for s := (hole + 1) & mask; c.table[s] != 0; s = (s + 1) & mask {
		h := c.home(c.entries[c.table[s]-1].mac)
		// The entry at s stays if its home lies cyclically in (hole, s].
		if (hole < s && hole < h && h <= s) || (s < hole && (hole < h || h <= s)) {
			continue
		}
		c.table[hole] = c.table[s]
		hole = s
	}
	c.table[hole] = 0
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
	e := &c.entries[i]
	if e.prev >= 0 {
		c.entries[e.prev].next = e.next
	} else {
		c.head = e.next
	}
	if e.next >= 0 {
		c.entries[e.next].prev = e.prev
	} else {
		c.tail = e.prev
	}
	e.prev, e.next = -1, -1
}

func (c *verifyCache) pushFront(i int32) {
	e := &c.entries[i]
	e.prev, e.next = -1, c.head
	if c.head >= 0 {
		c.entries[c.head].prev = i
	} else {
		c.tail = i
	}
	c.head = i
}
