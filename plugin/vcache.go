package plugin

import (
	"container/list"
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
type verifyCache struct {
	secret [32]byte
	max    int
	macs   sync.Pool // keyed HMAC states: keying one costs more than using it

	mu    sync.Mutex
	items map[[32]byte]*list.Element
	order *list.List // front: most recent

	hits, misses atomic.Uint64 // for the metrics
}

type cacheItem struct {
	mac  [32]byte
	hash string
}

func newVerifyCache(max int) *verifyCache {
	c := &verifyCache{max: max, items: map[[32]byte]*list.Element{}, order: list.New()}
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

// hit reports whether username and password verified against hash before.
func (c *verifyCache) hit(username string, password []byte, hash string) bool {
	if c.max == 0 {
		return false
	}
	k := c.mac(username, password)
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.items[k]
	if !ok || e.Value.(*cacheItem).hash != hash {
		c.misses.Add(1)
		return false
	}
	c.order.MoveToFront(e)
	c.hits.Add(1)
	return true
}

// add remembers a successful verification.
func (c *verifyCache) add(username string, password []byte, hash string) {
	if c.max == 0 {
		return
	}
	k := c.mac(username, password)
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[k]; ok {
		e.Value.(*cacheItem).hash = hash
		c.order.MoveToFront(e)
		return
	}
	c.items[k] = c.order.PushFront(&cacheItem{mac: k, hash: hash})
	for c.order.Len() > c.max {
		old := c.order.Back()
		c.order.Remove(old)
		delete(c.items, old.Value.(*cacheItem).mac)
	}
}
