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

// basicAuth's answers (mosquitto.h).
const (
	rcAuth  = 11 // MOSQ_ERR_AUTH: refused
	rcDefer = 17 // MOSQ_ERR_PLUGIN_DEFER: left to a later check
)

// longIDCases are TestHungRedisKeepsNoLongClientID's two shapes: a
// 60 000-byte client ID with a short username, and a short client ID with
// a 30 000-byte username (cgo makes the two one object: a short part of it
// kept keeps the long one).
var longIDCases = []struct {
	name string
	id   func(i int) string
	user func(i int) string
}{
	{"60 000-byte client IDs", func(i int) string { s := fmt.Sprintf("huge-%d-", i); return s + strings.Repeat("y", 60000-len(s)) }, benchUser},
	{"30 000-byte usernames", func(i int) string { return fmt.Sprintf("short-%d", i) }, func(i int) string {
		return benchUser(i) + strings.Repeat("u", 30000)
	}},
}

// liveHeap is the Go heap's live bytes, after a collection.
func liveHeap() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// Under clientid_conflict deny, an intruder refused while Redis does not
// answer (its client ID held here under another principal) keeps nothing
// of its CONNECT's strings past its refusal but their copies and tracking
// forms: the Refused event queued for the stopped worker holds the client
// ID's tracking form, the attempt's principal a copy (principalOf), the
// holder's connection copies of the holder's (connOf). Kept as they came,
// each refusal kept the intruder's whole client ID and username, or its
// holder's once the holder is gone.
func TestDenyRefusedKeepsNoLongClientID(t *testing.T) {
	testenv.Need(t, "redis-server", "mosquitto_passwd")
	redis := testenv.StartRedis(t)
	const n = 300
	for _, tc := range longIDCases {
		dir := t.TempDir()
		// Users 0..n-1 hold the client IDs; users n..2n-1 intrude.
		ab := newAuthBenchOf(t, redis, dir, passwdHash(t, dir), 2*n, "deny", tc.user)
		time.Sleep(200 * time.Millisecond) // the guard's start settled
		before := liveHeap()
		holders := make([]authClient, n)
		for i := range holders {
			holders[i] = ab.client(i, tc.id(i))
			ab.connect(t, holders[i]) // claimed in Redis
		}
		time.Sleep(300 * time.Millisecond) // the holders' events handled
		require.NoError(t, redis.Signal(syscall.SIGSTOP))
		conflicts0 := ab.conflicts.Load()
		for i := 0; i < n; i++ {
			c := ab.client(n+i, tc.id(i)) // the holder's client ID, in a CONNECT of its own
			require.EqualValues(t, rcAuth, basicAuth(ab.h, c.handle, c.id, c.addr, c.username, c.password), "%s: intruder %d", tc.name, i)
			ab.disconnect(c)
		}
		refused := ab.conflicts.Load() - conflicts0
		// The holders go too: the refusals' events name them.
		for _, c := range holders {
			ab.disconnect(c)
		}
		held := liveHeap() - before
		require.NoError(t, redis.Signal(syscall.SIGCONT))
		t.Logf("%s: %d holders, then %d intruders refused (%d conflict lines) and the holders gone, Redis stopped: live heap +%.1f MB (%.0f bytes a refusal)",
			tc.name, n, n, refused, float64(held)/(1<<20), float64(held)/n)
		assert.EqualValues(t, n, refused, "%s: every intruder refused for the conflict", tc.name)
		// As TestHungRedisKeepsNoLongClientID's bound: the queues' own
		// growth, a few KB a refusal and its holder's end.
		assert.Less(t, held, int64(n*8192), "%s: over 8 KB a refused connection kept while Redis does not answer", tc.name)
	}
}

// Under clientid_conflict deny with backend defer, a client let in while
// Redis does not answer waits in g.pending for its confirmation
// (confirmDue), which queues its connect for the stopped worker. Once it
// is gone, nothing of its CONNECT's strings is kept but their copies and
// tracking forms (its live record keeping its client ID while it is
// connected is README's known limit, and not measured: the clients are
// gone when the heap is read). The same for clients gone before their
// confirmation: their ended records leave g.pending when confirmDue passes
// them (its clear: without it, the array's old slots kept them, 65 KB or
// 33 KB a connection).
func TestDenyPendingKeepsNoLongClientID(t *testing.T) {
	testenv.Need(t, "redis-server")
	redis := testenv.StartRedis(t)
	const n = 300
	for _, tc := range longIDCases {
		ab := newAuthBenchWith(t, redis, map[string]string{"backend": "defer", "clientid_conflict": "deny"}, tc.user)
		time.Sleep(200 * time.Millisecond) // the guard's start settled
		before := liveHeap()
		require.NoError(t, redis.Signal(syscall.SIGSTOP))
		clients := make([]authClient, n)
		for i := range clients {
			clients[i] = ab.client(i, tc.id(i))
			require.EqualValues(t, rcDefer, basicAuth(ab.h, clients[i].handle, clients[i].id, clients[i].addr, clients[i].username, clients[i].password), "%s: client %d", tc.name, i)
		}
		// confirmDelay (500 ms) and confirmLoop's period (100 ms) past the
		// last CONNECT: every client confirmed, its connect queued.
		time.Sleep(900 * time.Millisecond)
		for _, c := range clients {
			ab.disconnect(c)
		}
		held := liveHeap() - before
		t.Logf("%s: %d deferred clients confirmed and gone, Redis stopped: live heap +%.1f MB (%.0f bytes a connection)",
			tc.name, n, float64(held)/(1<<20), float64(held)/n)
		assert.Less(t, held, int64(n*8192), "%s: over 8 KB a closed deferred connection kept while Redis does not answer", tc.name)

		// Clients gone before their confirmation: their records, ended,
		// wait in g.pending until confirmDue passes them, and are then the
		// garbage collector's (not reused: nothing of them is cleared).
		before = liveHeap()
		for i := range clients {
			c := ab.client(n+i, tc.id(n+i))
			require.EqualValues(t, rcDefer, basicAuth(ab.h, c.handle, c.id, c.addr, c.username, c.password), "%s: client %d", tc.name, n+i)
			ab.disconnect(c)
		}
		time.Sleep(900 * time.Millisecond) // confirmDue passed them
		held = liveHeap() - before
		require.NoError(t, redis.Signal(syscall.SIGCONT))
		t.Logf("%s: %d deferred clients gone before their confirmation, Redis stopped: live heap +%.1f MB (%.0f bytes a connection)",
			tc.name, n, float64(held)/(1<<20), float64(held)/n)
		assert.Less(t, held, int64(n*8192), "%s: over 8 KB a deferred connection gone before its confirmation kept", tc.name)
	}
}
