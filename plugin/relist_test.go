package plugin

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/mosquitto-guard/mosquitto-guard/config"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// After Redis lost this broker's live entries (a FLUSHALL here), a relist
// records each connection it holds again, while half of them disconnect
// at the same time: every one still held is live in Redis and listed in
// the brokerconns set, and none that ended is (its relist is queued
// before its end, under the lock its disconnect takes). Real Redis,
// clientid_conflict deny.
func TestRelistRacesDisconnects(t *testing.T) {
	r := testenv.StartRedis(t)
	st := store.New(store.Options{Addrs: []string{r.Addr}, Timeout: time.Second}, keys.Builder{Prefix: "guard:"})
	t.Cleanup(func() { st.Close() })
	g, _ := denyBroker(t, st, "broker-a")
	tracking(t, g, st, 100000, "warm-up")
	const n = 600
	for i := 1; i <= n; i++ {
		require.Equal(t, Allow, g.Authenticate(cl(uintptr(i), "192.0.2.1", fmt.Sprintf("dev-%d", i), "alice", "alice-pw")).Result)
	}
	ctx := context.Background()
	require.Eventually(t, func() bool {
		live, err := st.LiveConns(ctx, fmt.Sprintf("dev-%d", n))
		return err == nil && len(live) == 1
	}, 5*time.Second, 10*time.Millisecond)
	r.CLI("FLUSHALL")

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 1; i <= n; i += 2 {
			g.Disconnected(uintptr(i))
		}
	}()
	held, complete := g.relistConns()
	wg.Wait()
	require.True(t, complete)
	assert.GreaterOrEqual(t, held, n/2, "at least the connections that stay")

	kb := keys.Builder{Prefix: "guard:"}
	g.mu.Lock()
	inst := g.tracker.StoreConn(g.connOf(g.conns.get(2))).Instance
	g.mu.Unlock()
	// One pipelined read of the 600 client IDs' state (a redis-cli per key
	// took over the 5 s on a loaded CI machine: the one scan made saw the
	// worker's first batches under way, and failed).
	rdb := st.Client()
	wrong := func() []string {
		pipe := rdb.Pipeline()
		hlen := make([]*redis.IntCmd, n+1)
		member := make([]*redis.BoolCmd, n+1)
		for i := 1; i <= n; i++ {
			id := fmt.Sprintf("dev-%d", i)
			hlen[i] = pipe.HLen(ctx, kb.Conn(id))
			member[i] = pipe.SIsMember(ctx, kb.BrokerConns(inst), id)
		}
		_, err := pipe.Exec(ctx)
		require.NoError(t, err)
		var out []string
		for i := 1; i <= n; i++ {
			held := i%2 == 0 // held: live again, listed; else ended: neither
			if (hlen[i].Val() == 1) != held || member[i].Val() != held || hlen[i].Val() > 1 {
				out = append(out, fmt.Sprintf("dev-%d", i))
			}
		}
		return out
	}
	var bad []string
	deadline := time.Now().Add(20 * time.Second)
	for bad = wrong(); len(bad) > 0 && time.Now().Before(deadline); bad = wrong() {
		time.Sleep(50 * time.Millisecond)
	}
	assert.Empty(t, bad, "client IDs whose live entry or listing is not what this broker holds")
}

// gatedWrites is a conflict store whose worker writes wait, while shut,
// until their bound (Redis not answering).
type gatedWrites struct {
	failingClaims
	shut *atomic.Bool
}

func (s gatedWrites) WriteConns(ctx context.Context, ws []store.ConnWrite, w time.Duration) ([]store.State, error) {
	if s.shut.Load() {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return s.failingClaims.WriteConns(ctx, ws, w)
}

// A relist while Redis does not answer fills the tracker's queue no
// further than leaves room for the broker thread's events (at least
// 3 × kickScan), and gives up after relistRoomWait: 70 000 held
// connections, more than the queue holds.
func TestRelistBoundedWhileTheWorkerIsStuck(t *testing.T) {
	cfg, st := aliceFlagStore(t)
	var shut atomic.Bool
	g, err := NewWith(cfg, Output{Log: func(Level, string) {}}, Deps{Store: st, Counter: &fakeCounter{}, Conflicts: gatedWrites{shut: &shut}})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	const n = 70000
	for i := 1; i <= n; i++ {
		require.Equal(t, Allow, g.Authenticate(cl(uintptr(i), "192.0.2.1", fmt.Sprintf("dev-%d", i), "alice", "alice-pw")).Result)
	}
	require.Eventually(t, func() bool { return g.tracker.Room() == 65536 }, 10*time.Second, 10*time.Millisecond, "the connects written")
	shut.Store(true)
	defer func(d time.Duration) { relistRoomWait = d }(relistRoomWait)
	relistRoomWait = 300 * time.Millisecond

	start := time.Now()
	held, complete := g.relistConns()
	took := time.Since(start)
	assert.False(t, complete, "the queue cannot take 70 000")
	assert.Less(t, held, n)
	assert.GreaterOrEqual(t, g.tracker.Room(), 3*kickScan, "room left for the broker thread")
	assert.Less(t, took, 3*time.Second, "given up after relistRoomWait")
	t.Logf("relisted %d of %d in %v; room %d", held, n, took, g.tracker.Room())
	// The broker thread's events still go in.
	g.Disconnected(1)
	assert.Equal(t, Allow, g.Authenticate(cl(n+1, "192.0.2.1", "dev-new", "alice", "alice-pw")).Result)
}

// aliceFlagStore is the options of a broker under clientid_conflict flag
// with the redis backend, and a fake store holding alice (alice-pw), for
// the relist tests' guards.
func aliceFlagStore(t *testing.T) (config.Options, *fakeStore) {
	t.Helper()
	cfg, err := config.Parse(map[string]string{"backend": "redis", "clientid_conflict": "flag"})
	require.NoError(t, err)
	st := newFakeStore()
	h, err := bcrypt.GenerateFromPassword([]byte("alice-pw"), bcrypt.MinCost)
	require.NoError(t, err)
	st.set("guard:user:alice", string(h))
	return cfg, st
}
