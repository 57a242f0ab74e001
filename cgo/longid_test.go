package main

import (
	"fmt"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// While Redis does not answer, what the guard queues for it (tracking's
// events, known sources) keeps no client's long client ID or username. cgo
// makes a CONNECT's client ID and username one object (connectStrings), so
// a queued principal, username or client ID, a part of it, kept the whole:
// with Redis stopped, 500 connections with 60 000-byte client IDs, each
// connected and gone, held 33 MB of the heap (68 KB each; 2 000 held 128
// MB in a broker, and the queue's bound, 65 536 events, is about 4 GB).
// Now the queues hold each ID's tracking form (71 bytes for a long one) and
// copies of the short parts they keep. The same for a long username (one
// the password file has) with short client IDs.
func TestHungRedisKeepsNoLongClientID(t *testing.T) {
	testenv.Need(t, "redis-server", "mosquitto_passwd")
	redis := testenv.StartRedis(t)
	const n = 500
	for _, tc := range []struct {
		name string
		id   func(i int) string
		user func(i int) string
	}{
		{"60 000-byte client IDs", func(i int) string { s := fmt.Sprintf("huge-%d-", i); return s + strings.Repeat("y", 60000-len(s)) }, benchUser},
		{"30 000-byte usernames", func(i int) string { return fmt.Sprintf("short-%d", i) }, func(i int) string {
			return benchUser(i) + strings.Repeat("u", 30000)
		}},
	} {
		dir := t.TempDir()
		ab := newAuthBenchOf(t, redis, dir, passwdHash(t, dir), n, "flag", tc.user)
		live := func() int64 {
			runtime.GC()
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			return int64(m.HeapAlloc)
		}
		time.Sleep(200 * time.Millisecond) // the guard's start settled
		before := live()
		require.NoError(t, redis.Signal(syscall.SIGSTOP))
		for i := 0; i < n; i++ {
			c := ab.client(i, tc.id(i))
			ab.connect(t, c)
			ab.disconnect(c)
		}
		time.Sleep(500 * time.Millisecond) // confirmDelay: the deferred records gone
		held := live() - before
		require.NoError(t, redis.Signal(syscall.SIGCONT))
		t.Logf("%s: %d CONNECTs and DISCONNECTs, Redis stopped: live heap +%.1f MB (%.0f bytes a connection)",
			tc.name, n, float64(held)/(1<<20), float64(held)/n)
		// The queues' own growth is 2 to 3.5 KB a connection with 10-byte
		// IDs (the tracker's events, known sources' writes and their
		// buffers).
		assert.Less(t, held, int64(n*8192), "%s: over 8 KB a closed connection kept while Redis does not answer", tc.name)
	}
}
