package replica

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// A subscription whose connection goes silent (no FIN, no reset: a NAT's
// state expired) is taken as lost within subSilentMax, and the session
// starts over: a change made meanwhile reaches the replica, and InStep
// says false until it does. Before, the read blocked forever: an
// operator's DEL (here a SET) reached the replica at its next reload only
// (replica_resync, an hour here), while InStep said true (atk98).
func TestSilentSubscriptionIsTakenAsLost(t *testing.T) {
	srv := testenv.StartRedis(t)
	addr, silence := testenv.SilencingProxy(t, srv.Addr, "psubscribe")
	r, s, lost := silentSync(t, addr)
	direct := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { direct.Close() })
	client := q("dev", "198.51.100.9", "bob")
	require.NoError(t, direct.Set(context.Background(), "guard:block:ip:198.51.100.9", "operator", 0).Err())
	eventuallyBlocked(t, r, client, true) // control: the subscription carries changes

	silence()
	time.Sleep(100 * time.Millisecond)
	require.NoError(t, direct.Del(context.Background(), "guard:block:ip:198.51.100.9").Err())
	start := time.Now()
	require.Eventually(t, func() bool { return r.Lookup(client, time.Now()).Block == nil }, 5*time.Second, 5*time.Millisecond,
		"the DEL reaches the replica")
	t.Logf("the DEL reached the replica %s after it was made", time.Since(start))
	require.Eventually(t, s.InStep, 5*time.Second, 5*time.Millisecond, "in step again")
	assert.Contains(t, lost(), "subscription lost", "the loss is reported")
}

// silentSync runs a Sync on addr with subPingEvery 100 ms and subSilentMax
// 500 ms (restored once it has stopped), until the test ends; lost returns
// what OnLost was given, joined.
func silentSync(t *testing.T, addr string) (r *Replica, s *Sync, lost func() string) {
	t.Helper()
	wasPing, wasSilent := subPingEvery, subSilentMax
	subPingEvery, subSilentMax = 100*time.Millisecond, 500*time.Millisecond
	t.Cleanup(func() { subPingEvery, subSilentMax = wasPing, wasSilent }) // after the Sync's, which stops it
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { rdb.Close() })
	r = New(kb)
	var mu sync.Mutex
	var reported []string
	s = NewSync(r, rdb, Options{ResyncEvery: time.Hour, OnLost: func(err error) {
		mu.Lock()
		reported = append(reported, err.Error())
		mu.Unlock()
	}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	require.Eventually(t, s.InStep, 5*time.Second, 5*time.Millisecond)
	return r, s, func() string {
		mu.Lock()
		defer mu.Unlock()
		return strings.Join(reported, "; ")
	}
}

// An idle subscription is kept by its pings: no change for three times
// subSilentMax is no loss, and a ping refused (BUSY, while a script runs
// past busy-reply-threshold) is an answer, not silence (a review of
// 2392d1c: the read's deadline alone would start an idle subscription
// over every 15 s, and a BUSY ended it).
func TestIdleSubscriptionIsKept(t *testing.T) {
	srv := testenv.StartRedis(t, "--lua-time-limit", "100") // busy-reply-threshold since Redis 7
	_, s, lost := silentSync(t, srv.Addr)
	time.Sleep(1500 * time.Millisecond)
	assert.Empty(t, lost(), "an idle subscription kept")
	assert.True(t, s.InStep())

	// A script busy for 1.2 s: the pings meanwhile are refused with BUSY.
	direct := redis.NewClient(&redis.Options{Addr: srv.Addr, ReadTimeout: 5 * time.Second})
	t.Cleanup(func() { direct.Close() })
	busy := `local t = redis.call('TIME') local e = tonumber(t[1]) + tonumber(t[2]) / 1e6 + 1.2
while true do t = redis.call('TIME') if tonumber(t[1]) + tonumber(t[2]) / 1e6 > e then break end end return 1`
	ran := make(chan error, 1)
	go func() { ran <- direct.Eval(context.Background(), busy, nil).Err() }()
	time.Sleep(300 * time.Millisecond)
	other := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { other.Close() })
	err := other.Get(context.Background(), "guard:epoch").Err()
	require.ErrorContains(t, err, "BUSY", "control: Redis busy")
	// Wrapped as subscribe and mark wrap it: still transient, not taken
	// for an ACL's refusal of the channels (a review of 4a934c4).
	assert.True(t, transient(fmt.Errorf("subscribe: %w", err)), "a wrapped BUSY is transient")
	require.NoError(t, <-ran)
	time.Sleep(300 * time.Millisecond)
	assert.Empty(t, lost(), "pings refused with BUSY are answers")
	assert.True(t, s.InStep())
}

// A reply to the ping that is a refusal (here an ACL changed to refuse
// PING) ends the subscription, as would a refusal of the PSUBSCRIBE
// go-redis sends again after its own reconnect: only a busy Redis's
// reply is an answer that keeps it (a review of 4a934c4: every reply was
// skipped, and a refusal met at each read kept a subscription that was
// gone).
func TestRefusedPingEndsTheSubscription(t *testing.T) {
	srv := testenv.StartRedis(t)
	_, _, lost := silentSync(t, srv.Addr)
	srv.CLI("ACL", "SETUSER", "default", "-ping")
	t.Cleanup(func() { srv.CLI("ACL", "SETUSER", "default", "+ping") })
	require.Eventually(t, func() bool { return strings.Contains(lost(), "subscription lost") }, 3*time.Second, 10*time.Millisecond,
		"the refusal ends the subscription")
	assert.Contains(t, lost(), "NOPERM")
}
