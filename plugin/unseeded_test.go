package plugin

import (
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
)

// TestRedisBackendChecksNoPasswordUntilTheUsersLoad: the redis backend's
// unknown users cost the class of its most expensive user, taken from the
// replica's first load. Before that load (a broker started while Redis did
// not answer, whose replica loads once Redis is back) an unknown user was
// answered with mosquitto_passwd's default dummy in a millisecond where a
// known bcrypt-11 user took 160 ms (a README-only attacker: 1 281 of 1 664
// probes told apart with 200 000 users). Now no password is checked until
// the users are loaded: known and unknown users are refused alike, as
// while Redis is down, and no failure is counted; a reload's re-check of a
// held client goes on.
func TestRedisBackendChecksNoPasswordUntilTheUsersLoad(t *testing.T) {
	data, err := os.ReadFile(passwdFile(t))
	require.NoError(t, err)
	hash := strings.TrimSpace(strings.SplitN(string(data), ":", 2)[1])

	// The replica's Redis accepts connections and never answers: its first
	// load never completes. Direct lookups go to the fake store.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var mu sync.Mutex
	var held []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	})
	rdb := redis.NewClient(&redis.Options{Addr: ln.Addr().String(), DialTimeout: 200 * time.Millisecond,
		ReadTimeout: 200 * time.Millisecond, WriteTimeout: 200 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })

	cfg, err := config.Parse(map[string]string{"backend": "redis"})
	require.NoError(t, err)
	st, ct, ls := newFakeStore(), &fakeCounter{}, &logSink{}
	st.set("guard:user:carol", hash)
	st.down = true // Redis down at start: the start does not wait for the load
	g, err := NewWith(cfg, Output{Log: ls.log}, Deps{Store: st, Counter: ct, Redis: rdb})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	st.mu.Lock()
	st.down = false
	st.mu.Unlock()
	require.Eventually(t, g.health.up, 3*time.Second, 10*time.Millisecond)
	require.False(t, g.sync.Ready())

	for i, c := range []Client{
		cl(1, "192.0.2.1", "c", "carol", "alice-pw"), // known, right password
		cl(2, "192.0.2.1", "c", "carol", "wrong"),    // known, wrong password
		cl(3, "192.0.2.1", "d", "dave", "wrong"),     // unknown
	} {
		start := time.Now()
		d := g.Authenticate(c)
		assert.Equal(t, Deny, d.Result, "CONNECT %d", i)
		assert.Equal(t, RuleRedisUnavailable, d.Rule, "CONNECT %d", i)
		// Under the replica client's 200 ms timeouts: not held for a new
		// request of its own (a wait on the load's request already in
		// flight could end sooner and is not caught here; the rule is).
		assert.Less(t, time.Since(start), 150*time.Millisecond, "CONNECT %d: not held for the replica's load", i)
	}
	assert.Empty(t, waitCounted(t, ct, 1), "refusals for want of the users' load are not failures")
	assert.Equal(t, 1, strings.Count(ls.all(), "passwords are checked once the replica has loaded"), "one line says why")
	assert.Equal(t, Allow, g.Reauthenticate(cl(4, "192.0.2.1", "c", "carol", "alice-pw")).Result, "a reload's re-check goes on")

	// What the first load does before the replica is ready: from then on
	// passwords are checked.
	g.seedUnknownUsersDummy()
	assert.Equal(t, Allow, g.Authenticate(cl(5, "192.0.2.1", "c", "carol", "alice-pw")).Result)
	assert.Equal(t, RuleUnknownUser, g.Authenticate(cl(6, "192.0.2.1", "d", "dave", "wrong")).Rule)
}
