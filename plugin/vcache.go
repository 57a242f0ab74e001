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
// least recently used, found through a map from the MAC's first 8 bytes:
// no allocation per entry, and one pointer (its hash) for the collector to
// follow; TestVerifyCacheEntryBytes bounds an entry's bytes.
// Two MACs sharing their first 8 bytes are told apart by the 16 kept in the
// entry: the newer replaces the older, which is then a miss, as if evicted.
// A password other than the one verified matches an entry only if its HMAC
// shares 128 bits with the verified one's: without the secret, a chance of
// 2⁻¹²⁸ a try, and each try is a CONNECT.
type verifyCache struct {
	secret [32]byte
	max    int
	macs   sync.Pool // keyed HMAC states: keying one costs more than using it

	mu         sync.Mutex
	index      map[uint64]int32 // the MAC's first 8 bytes -> its entry
	entries    []cacheEntry
	head, tail int32 // most and least recently used; none: -1

	hits, misses atomic.Uint64 // for the metrics
}

type cacheEntry struct {
	mac        [16]byte // the first half of the HMAC-SHA256 (128 bits, as in RFC 4868's truncation)
	hash       string
	prev, next int32 // toward head, toward tail; none: -1
}

func newVerifyCache(max int) *verifyCache {
	c := &verifyCache{max: max, index: map[uint64]int32{}, head: -1, tail: -1}
	_, _ = rand.Read(c.secret[:])
	c.macs.New = func() any { return &macState{h: hmac.New(sha256.New, c.secret[:])} }
	return c
}

// macState is a keyed HMAC with buffers of its own: bytes handed to the
// hash.Hash interface escape to the heap, so the input is copied into buf
// and the sum written to sum, both reused, and a cache hit allocates
// nothing.
type macState struct {
	h   hash.Hash
	buf []byte
	sum []byte
}

func (c *verifyCache) mac(username string, password []byte) [32]byte {
	m := c.macs.Get().(*macState)
	defer c.macs.Put(m)
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

// key is what an entry keeps of the MAC of username and password.
func (c *verifyCache) key(username string, password []byte) [16]byte {
	m := c.mac(username, password)
	return [16]byte(m[:16])
}

// hit reports whether username and password verified against hash before.
func (c *verifyCache) hit(username string, password []byte, hash string) bool {
	if c.max == 0 {
		return false
	}
	k := c.key(username, password)
	c.mu.Lock()
	defer c.mu.Unlock()
	i, ok := c.find(k)
	if !ok || c.entries[i].hash != hash {
		c.misses.Add(1)
		return false
	}
	c.toFront(i)
	c.hits.Add(1)
	return true
}

// add remembers a successful verification.
func (c *verifyCache) add(username string, password []byte, hash string) {
	if c.max == 0 {
		return
	}
	k := c.key(username, password)
	c.mu.Lock()
	defer c.mu.Unlock()
	if i, ok := c.index[key64(k)]; ok { // the same MAC, or one sharing its index key: replaced
		e := &c.entries[i]
		e.mac, e.hash = k, hash
		c.toFront(i)
		return
	}
	var i int32
	if len(c.entries) < c.max {
		i = int32(len(c.entries))
		c.entries = append(c.entries, cacheEntry{prev: -1, next: -1})
	} else { // full: the least recently used entry is reused
		i = c.tail
		c.unlink(i)
		delete(c.index, key64(c.entries[i].mac))
	}
	c.entries[i].mac, c.entries[i].hash = k, hash
	c.index[key64(k)] = i
	c.pushFront(i)
}

// len returns the number of entries.
func (c *verifyCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.index)
}

// key64 is the index key of a MAC: its first 8 bytes.
func key64(k [16]byte) uint64 { return binary.LittleEndian.Uint64(k[:8]) }

// find returns the entry of MAC k (c.mu held).
func (c *verifyCache) find(k [16]byte) (int32, bool) {
	i, ok := c.index[key64(k)]
	if !ok || c.entries[i].mac != k {
		return 0, false
	}
	return i, true
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
