package plugin

import (
	"fmt"
	"os"
	"path/filepath"
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
	assert.LessOrEqual(t, c.order.Len(), 3)
	off := newVerifyCache(0)
	off.add("a", pw, "$h")
	assert.False(t, off.hit("a", pw, "$h"))
}

func TestVerifyCacheHoldsNoPassword(t *testing.T) {
	c := newVerifyCache(10)
	c.add("alice", []byte("hunter2"), "$h")
	for k, e := range c.items {
		assert.NotContains(t, string(k[:]), "hunter2")
		assert.Equal(t, "$h", e.Value.(*cacheItem).hash)
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
	assert.Equal(t, 1, g.creds.cache.order.Len())
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
