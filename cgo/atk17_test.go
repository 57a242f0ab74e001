package main

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// An over-long CONNECT whose other strings are long too (a 65 535-byte
// username and password beside a client ID over clientid_max_bytes, or a
// password beside a username over username_max_bytes): the README says
// the plugin copies only the 201 bytes of each string its refusal line
// quotes, so none of them is copied whole.
func TestAtk17TooLongWithLongOthersCopiesLittle(t *testing.T) {
	testenv.Need(t, "redis-server", "mosquitto_passwd")
	redis := testenv.StartRedis(t)
	dir := t.TempDir()
	hash := passwdHash(t, dir)
	pw := filepath.Join(dir, "passwd")
	require.NoError(t, os.WriteFile(pw, []byte(benchUser(0)+":"+hash+"\n"), 0o600))
	ab := newAuthBenchWith(t, redis, map[string]string{"password_file": pw, "clientid_max_bytes": "256",
		"username_max_bytes": "256", "fail_limit": "1000000"}, benchUser)
	big := strings.Repeat("B", 65535)
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
	a := perConnect(big, big, big, 100)
	t.Logf("client ID, username and password of 65 535 bytes: %.0f bytes a refused CONNECT", a)
	assert.Less(t, a, 4096.0, "an over-long client ID's long username or password copied whole")
	b := perConnect("dev", big, big, 100)
	t.Logf("username and password of 65 535 bytes: %.0f bytes a refused CONNECT", b)
	assert.Less(t, b, 4096.0, "an over-long username's long password copied whole")
}
