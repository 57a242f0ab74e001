package plugin

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

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
	require.Len(t, c.entries, 1)
	for _, e := range c.entries {
		assert.NotContains(t, string(e.mac[:]), "hunter2")
		assert.Equal(t, "$h", e.hash)
	}
	d := newVerifyCache(10)
	assert.NotEqual(t, c.mac("alice", []byte("hunter2")), d.mac("alice", []byte("hunter2")), "a secret per process")
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
	assert.Len(t, c.entries, 3, "no more entries than auth_cache")
	// The list is whole both ways.
	var fwd, back int
	for i := c.head; i >= 0; i = c.entries[i].next {
		fwd++
	}
	for i := c.tail; i >= 0; i = c.entries[i].prev {
		back++
	}
	assert.Equal(t, []int{3, 3}, []int{fwd, back})
}

// Two MACs that share the index's 8 bytes are told apart by the whole MAC:
// the other one misses, and adding it replaces the first.
func TestVerifyCacheIndexCollision(t *testing.T) {
	c := newVerifyCache(10)
	c.add("alice", []byte("pw"), "$h")
	i, ok := c.find(c.key("alice", []byte("pw")))
	require.True(t, ok)
	other := c.entries[i].mac
	other[15] ^= 1 // same first 8 bytes, another MAC
	_, ok = c.find(other)
	assert.False(t, ok)
}

// An entry costs at most 90 bytes of heap beside its hash's string (shared
// with the backend). Before (container/list, an item per entry): about 170.
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
	t.Logf("%.0f bytes per entry", per)
	assert.LessOrEqual(t, per, 90.0)
	require.Equal(t, n, c.len())
}

// liveHeap returns the heap in use after a collection.
func liveHeap() int64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}
