package replica

import (
	"context"
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
	wasPing, wasSilent := subPingEvery, subSilentMax
	subPingEvery, subSilentMax = 100*time.Millisecond, 500*time.Millisecond
	defer func() { subPingEvery, subSilentMax = wasPing, wasSilent }()

	srv := testenv.StartRedis(t)
	addr, silence := testenv.SilencingProxy(t, srv.Addr, "psubscribe")
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { rdb.Close() })
	direct := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { direct.Close() })
	r := New(kb)
	var mu sync.Mutex
	var logged []string
	s := NewSync(r, rdb, Options{ResyncEvery: time.Hour, OnLost: func(err error) {
		mu.Lock()
		logged = append(logged, err.Error())
		mu.Unlock()
	}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	require.Eventually(t, s.InStep, 5*time.Second, 5*time.Millisecond)
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
	mu.Lock()
	defer mu.Unlock()
	assert.True(t, func() bool {
		for _, l := range logged {
			if strings.Contains(l, "subscription lost") {
				return true
			}
		}
		return false
	}(), "the loss is reported: %q", logged)
}
