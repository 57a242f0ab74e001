package plugin

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"
)

func TestVerifyCache(t *testing.T) {
	c := newVerifyCache(3)
	pw := []byte("secret")
	assert.False(t, c.hit("alice", pw, "$h1"))
	c.add("alice", pw, "$h1")
	assert.True(t, c.hit("alice", pw, "$h1"))
	assert.False(t, c.hit("alice", []byte("Secret"), "$h1"), "another password")
	assert.False(t, c.hit("alice", pw, "$h2"), "the stored hash changed: the password changed")
	assert.False(t, c.hit("alicesecret", []byte(""), "$h1"), "username and password are not merely concatenated")
	for i := 0; i < 3; i++ {
		c.add(fmt.Sprint("u", i), pw, "$h")
	}
	assert.False(t, c.hit("alice", pw, "$h1"), "least recently used out when full")
	assert.Equal(t, 3, c.len())
	off := newVerifyCache(0)
	off.add("a", pw, "$h")
	assert.False(t, off.hit("a", pw, "$h"))
}

func TestVerifyCacheHoldsNoPassword(t *testing.T) {
	c := newVerifyCache(10)
	c.add("alice", []byte("hunter2"), "$h")
	require.Len(t, c.entries.S, 1)
	for _, e := range c.entries.S {
		assert.NotContains(t, string(e.mac[:]), "hunter2")
		assert.Equal(t, c.hashSum("$h"), e.hash)
		assert.NotEqual(t, c.hashSum("$h2"), e.hash)
	}
	d := newVerifyCache(10)
	assert.NotEqual(t, c.mac("alice", []byte("hunter2")), d.mac("alice", []byte("hunter2")), "a secret per process")
}

// Issue 12: the MAC is keyed once per cache, not per CONNECT nor after each
// collection (a sync.Pool of keyed states lost them at every GC, and each
// new one cost two SHA-256 blocks more for the pads). Its result is the
// same MAC before and after the collections.
func TestVerifyCacheKeysItsMACOnce(t *testing.T) {
	var keyed atomic.Int32
	orig := newMAC
	newMAC = func(key []byte) *cmac { keyed.Add(1); return orig(key) }
	defer func() { newMAC = orig }()
	c := newVerifyCache(10)
	pw := []byte("alice-pw")
	want := c.mac("alice", pw)
	c.add("alice", pw, "$h")
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ { // concurrent users share the one state safely (go test -race)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				if i%10 == 0 {
					runtime.GC()
				}
				assert.True(t, c.hit("alice", pw, "$h"))
				assert.False(t, c.hit("alice", []byte("alice-pW"), "$h"))
			}
		}()
	}
	wg.Wait()
	assert.Equal(t, int32(1), keyed.Load(), "MAC keyings")
	assert.Equal(t, want, c.mac("alice", pw))
}

// A reconnect storm of one bcrypt user verifies once; a password change
// (file reload) is seen at once.
func TestGuardUsesCache(t *testing.T) {
	h, err := bcrypt.GenerateFromPassword([]byte("pw1"), 12)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "passwd")
	require.NoError(t, os.WriteFile(path, []byte("dev:"+string(h)+"\n"), 0o600))
	g, _, _, _ := newGuard(t, map[string]string{"backend": "files", "password_file": path})
	require.Equal(t, Allow, g.Authenticate(cl(1, "192.0.2.1", "d", "dev", "pw1")).Result)
	assert.Equal(t, 1, g.creds.cache.len())
	require.Equal(t, Allow, g.Authenticate(cl(2, "192.0.2.1", "d", "dev", "pw1")).Result)
	assert.Equal(t, Deny, g.Authenticate(cl(3, "192.0.2.1", "d", "dev", "pw2")).Result)

	h2, err := bcrypt.GenerateFromPassword([]byte("pw2"), 4)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, []byte("dev:"+string(h2)+"\n"), 0o600))
	g.Reload()
	assert.Equal(t, Deny, g.Authenticate(cl(4, "192.0.2.1", "d", "dev", "pw1")).Result, "the old password no longer works")
	assert.Equal(t, Allow, g.Authenticate(cl(5, "192.0.2.1", "d", "dev", "pw2")).Result)
}

// go test -bench VerifyCache ./plugin/: the cost a cache hit adds to a CONNECT.
func BenchmarkVerifyCacheHit(b *testing.B) {
	c := newVerifyCache(1000)
	pw := []byte("device-secret")
	c.add("sensor-17", pw, "$7$101$x$y")
	for i := 0; i < b.N; i++ {
		if !c.hit("sensor-17", pw, "$7$101$x$y") {
			b.Fatal("miss")
		}
	}
}

// The least recently used entry goes first: a hit or a new add makes an
// entry the most recent; a full cache reuses the oldest entry's place.
func TestVerifyCacheLRUOrder(t *testing.T) {
	c := newVerifyCache(3)
	pw := []byte("pw")
	for _, u := range []string{"a", "b", "c"} {
		c.add(u, pw, "$h")
	}
	require.True(t, c.hit("a", pw, "$h")) // order now a, c, b
	c.add("b", pw, "$h2")                 // an add of a present entry refreshes it: b, a, c
	c.add("d", pw, "$h")                  // c out
	assert.False(t, c.hit("c", pw, "$h"), "least recently used out")
	for _, u := range []string{"a", "d"} {
		assert.True(t, c.hit(u, pw, "$h"), u)
	}
	assert.True(t, c.hit("b", pw, "$h2"), "the newer hash replaced the older")
	assert.False(t, c.hit("b", pw, "$h"))
	c.add("e", pw, "$h") // hits made the order b, d, a: a out
	assert.False(t, c.hit("a", pw, "$h"))
	assert.Equal(t, 3, c.len())
	assert.Len(t, c.entries.S, 3, "no more entries than auth_cache")
	// The list is whole both ways.
	var fwd, back int
	for i := c.head; i >= 0; i = c.entries.S[i].next {
		fwd++
	}
	for i := c.tail; i >= 0; i = c.entries.S[i].prev {
		back++
	}
	assert.Equal(t, []int{3, 3}, []int{fwd, back})
}

// Keys that share their first 8 bytes (one probe start) are told apart by
// the 16 an entry keeps: both stay.
func TestVerifyCacheSameStart(t *testing.T) {
	c := newVerifyCache(10)
	c.mu.Lock()
	defer c.mu.Unlock()
	var a, b [16]byte
	a[15], b[15] = 1, 2
	c.addKey(a, "$a")
	c.addKey(b, "$b")
	assert.True(t, c.hitKey(a, "$a"))
	assert.True(t, c.hitKey(b, "$b"))
	assert.False(t, c.hitKey(a, "$b"))
	assert.Len(t, c.entries.S, 2)
}

// The cache against a model of it (a list, most recent first), through
// random hits and adds of keys that crowd few probe starts, so that
// removals from the middle of runs, and runs that wrap around the table's
// end, happen often: same answers, and the table holds every entry once.
func TestVerifyCacheModel(t *testing.T) {
	const max = 37
	rng := rand.New(rand.NewPCG(1, 2))
	c := newVerifyCache(max)
	var model [][16]byte // most recent first
	hashOf := map[[16]byte]string{}
	find := func(k [16]byte) int {
		for i, m := range model {
			if m == k {
				return i
			}
		}
		return -1
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for step := 0; step < 20000; step++ {
		var k [16]byte
		k[0] = byte(rng.IntN(8)) * 16  // 8 starts (of 128 slots at most), the rest of the table by probing
		k[0] |= byte(rng.IntN(2)) * 15 // some starting at a run's end, to wrap
		k[15] = byte(rng.IntN(120))
		hash := fmt.Sprint("$", rng.IntN(2))
		i := find(k)
		if rng.IntN(2) == 0 {
			want := i >= 0 && hashOf[k] == hash
			require.Equal(t, want, c.hitKey(k, hash), "step %d", step)
			if want {
				model = append(append([][16]byte{k}, model[:i]...), model[i+1:]...)
			}
			continue
		}
		c.addKey(k, hash)
		hashOf[k] = hash
		if i >= 0 {
			model = append(model[:i], model[i+1:]...)
		}
		model = append([][16]byte{k}, model...)
		if len(model) > max {
			model = model[:max]
		}
		if step%97 == 0 {
			checkVerifyCache(t, c, model)
		}
	}
	checkVerifyCache(t, c, model)
}

// checkVerifyCache: the list is the model's order, and the table holds
// each entry once and nothing else (c.mu held).
func checkVerifyCache(t *testing.T, c *verifyCache, model [][16]byte) {
	t.Helper()
	var order [][16]byte
	for i := c.head; i >= 0; i = c.entries.S[i].next {
		order = append(order, c.entries.S[i].mac)
	}
	require.Equal(t, model, order)
	used := 0
	for _, v := range c.table.S {
		if v != 0 {
			used++
		}
	}
	require.Equal(t, len(c.entries.S), used)
	for i := range c.entries.S {
		_, e, ok := c.find(c.entries.S[i].mac)
		require.True(t, ok)
		require.Equal(t, int32(i), e)
	}
	require.LessOrEqual(t, 2*len(c.entries.S), len(c.table.S), "at most half full")
}

// An entry costs no Go heap (at most 1 byte an entry) and at most 72 bytes
// of mapping (20 000 entries: 53.1, the entry's 40 and its table's 13),
// given back by free. In Go slices, with the hash's string
// (shared with the backend): 60 bytes of live heap; before that
// (container/list, an item per entry): 175.
func TestVerifyCacheEntryBytes(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes what the heap holds")
	}
	const n = 20000
	pw := []byte("pw")
	users := make([]string, n)
	for i := range users {
		users[i] = fmt.Sprintf("u%07d", i)
	}
	before := liveHeap()
	c := newVerifyCache(n)
	for _, u := range users {
		c.add(u, pw, "$7$shared-hash")
	}
	per := float64(liveHeap()-before) / n
	runtime.KeepAlive(users)
	mapped := float64(c.entries.Mapped()+c.table.Mapped()) / n
	t.Logf("%.1f bytes of heap and %.1f mapped per entry", per, mapped)
	assert.LessOrEqual(t, per, 1.0)
	assert.LessOrEqual(t, mapped, 72.0)
	require.Equal(t, n, c.len())
	c.free()
	assert.Zero(t, c.entries.Mapped()+c.table.Mapped(), "free left a mapping")
	assert.Zero(t, c.len())
	assert.False(t, c.hit(users[0], pw, "$7$shared-hash"), "an entry outlived free")
	c.add(users[0], pw, "$7$shared-hash") // usable after, mapped again
	assert.True(t, c.hit(users[0], pw, "$7$shared-hash"))
	c.free()
}

// liveHeap returns the heap in use after a collection.
func liveHeap() int64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// The plugin's cleanup (Guard.Close) unmaps the verification cache: no
// entry outlives it, nor its mapping.
func TestCloseFreesVerifyCache(t *testing.T) {
	g, _, _, _ := newGuard(t, nil)
	require.Equal(t, Allow, g.Authenticate(cl(1, "192.0.2.1", "a", "alice", "alice-pw")).Result)
	c := g.creds.cache
	require.Equal(t, 1, c.len(), "the verification cached")
	require.Positive(t, c.entries.Mapped()+c.table.Mapped())
	g.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	assert.Zero(t, c.entries.Mapped()+c.table.Mapped(), "the cache is still mapped")
	assert.Empty(t, c.entries.S)
}

// Issue 12: hashSum's memo answers by the string's identity: the same
// bytes at another address, and other bytes at any address, are hashed
// anew, so a changed stored hash still misses; a string met again gives
// the same sum without hashing.
func TestVerifyCacheSumMemo(t *testing.T) {
	c := newVerifyCache(10)
	pw := []byte("pw")
	h1 := strings.Repeat("$7$101$salt$hash", 6)
	c.add("alice", pw, h1)
	require.True(t, c.hit("alice", pw, h1))
	same := strings.Clone(h1) // the same bytes elsewhere
	require.NotSame(t, unsafe.StringData(h1), unsafe.StringData(same))
	assert.True(t, c.hit("alice", pw, same))
	changed := []byte(h1)
	changed[len(changed)-1] ^= 1
	assert.False(t, c.hit("alice", pw, string(changed)), "a changed hash of the same length")
	assert.False(t, c.hit("alice", pw, h1[:len(h1)-1]), "a prefix of the hash: same pointer, other length")
	assert.True(t, c.hit("alice", pw, h1))
	c.mu.Lock()
	for _, h := range []string{h1, same, string(changed), h1[:5], ""} {
		assert.Equal(t, c.hashSum(h), c.sumLocked(h), "%q", h)
		assert.Equal(t, c.hashSum(h), c.sumLocked(h), "%q, again", h)
	}
	c.mu.Unlock()
	if !raceEnabled {
		assert.Zero(t, testing.AllocsPerRun(100, func() { c.hit("alice", pw, h1) }))
	}
}
