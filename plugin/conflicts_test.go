package plugin

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/conflicts"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// denyBroker is one guard in clientid_conflict deny mode with the redis
// backend (alice and bob), tracking client IDs in cs.
func denyBroker(t *testing.T, cs conflicts.Store, name string) (*Guard, *logSink) {
	t.Helper()
	cfg, err := config.Parse(map[string]string{"backend": "redis", "clientid_conflict": "deny", "broker_name": name})
	require.NoError(t, err)
	st, ls := newFakeStore(), &logSink{}
	for u, p := range map[string]string{"alice": "alice-pw", "bob": "bob-pw"} {
		h, err := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
		require.NoError(t, err)
		st.set("guard:user:"+u, string(h))
	}
	g, err := NewWith(cfg, Output{Log: ls.log}, Deps{Store: st, Counter: &fakeCounter{}, Conflicts: cs})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	return g, ls
}

// tracking waits until g's conflict worker runs, and so has renewed its
// lease and learnt the brokers whose lease ran before: the worker handles
// events only after its first renewal, and records a connection's use (its
// seen entry) only there. A warm-up connection of its own (client ID id,
// handle h) says so.
func tracking(t *testing.T, g *Guard, st *store.Store, h uintptr, id string) {
	t.Helper()
	require.Equal(t, Allow, g.Authenticate(cl(h, "192.0.2.200", id, "alice", "alice-pw")).Result)
	require.Eventually(t, func() bool {
		n, err := st.Client().Exists(context.Background(), st.Keys().Seen(id)).Result()
		return err == nil && n == 1
	}, 5*time.Second, 10*time.Millisecond, "the conflict worker of %s runs", id)
}

// In deny mode a client this plugin admits claims its client ID in the step
// that looks for a holder, and the connection claimed is the one recorded
// and later removed: the admitted connection's own. On a real Redis: the
// claim is store's atomic script.
func TestDenyClaimsTheClientID(t *testing.T) {
	r := testenv.StartRedis(t)
	st := store.New(store.Options{Addrs: []string{r.Addr}, Timeout: time.Second}, keys.Builder{Prefix: "guard:"})
	t.Cleanup(func() { st.Close() }) // after the guards' Close (cleanups run last first)
	ctx := context.Background()
	a, _ := denyBroker(t, st, "broker-a")
	tracking(t, a, st, 100, "warm-up-a")
	b, logs := denyBroker(t, st, "broker-b")
	tracking(t, b, st, 101, "warm-up-b") // b knows a's lease

	require.Equal(t, Allow, a.Authenticate(cl(1, "192.0.2.1", "door", "alice", "alice-pw")).Result)
	live, err := st.LiveConns(ctx, "door")
	require.NoError(t, err)
	require.Len(t, live, 1, "claimed on the broker thread, before the worker runs")
	a.mu.Lock()
	admitted := a.tracker.StoreConn(a.connOf(a.conns.get(1)))
	a.mu.Unlock()
	assert.Equal(t, admitted, live[0], "admit records the claimed connection")

	d := b.Authenticate(cl(2, "192.0.2.2", "door", "bob", "bob-pw"))
	assert.Equal(t, Deny, d.Result)
	assert.Equal(t, RuleClientIDConflict, d.Rule)
	assert.Contains(t, logs.all(), `rule=clientid-conflict holder_ip=192.0.2.1 client_id="door"`)
	assert.Contains(t, logs.all(), `holder_principal="alice" holder_broker="broker-a"`)
	b.mu.Lock()
	assert.Nil(t, b.conns.get(2), "the refused client is not admitted")
	b.mu.Unlock()

	// The same principal on another broker is a reconnect.
	assert.Equal(t, Allow, b.Authenticate(cl(3, "192.0.2.3", "door", "alice", "alice-pw")).Result)
	// Once alice's connections are gone (their disconnects processed), bob may use the ID.
	a.Disconnected(1)
	b.Disconnected(3)
	assert.Eventually(t, func() bool {
		live, err := st.LiveConns(ctx, "door")
		return err == nil && len(live) == 0
	}, 2*time.Second, 10*time.Millisecond, "alice's live entries removed")
	assert.Equal(t, Allow, b.Authenticate(cl(4, "192.0.2.2", "door", "bob", "bob-pw")).Result)
}

// failingClaims is a conflict store whose claims fail, as when Redis does
// not answer within redis_timeout; the worker's calls find nothing.
type failingClaims struct{}

func (failingClaims) Claim(context.Context, string, store.Conn, store.Brokers) (*store.Conn, error) {
	return nil, errors.New("i/o timeout")
}
func (failingClaims) WriteConns(_ context.Context, ws []store.ConnWrite, _ time.Duration) ([]store.State, error) {
	return make([]store.State, len(ws)), nil
}
func (failingClaims) CountTakeovers(_ context.Context, ts []store.Takeover, _ time.Duration, _ int) ([]int64, error) {
	return make([]int64, len(ts)), nil
}
func (failingClaims) RenewLease(context.Context, string, time.Duration) (store.Lease, error) {
	return store.Lease{Live: map[string]bool{}}, nil
}
func (failingClaims) ReapCount(context.Context, string, int64, time.Duration, time.Duration) (int, error) {
	return 0, nil
}
func (failingClaims) LeaseEnds(context.Context, []string) (map[string]int64, error) {
	return map[string]int64{}, nil
}
func (failingClaims) AddFinding(context.Context, *store.Finding, time.Duration, time.Duration, int64) (bool, error) {
	return false, nil
}

// A claim Redis does not answer lets the client in (to be flagged later if
// it conflicts), as when Redis is down, and marks Redis down so that the
// next CONNECTs do not wait for it too.
func TestDenyClaimFailureLetsIn(t *testing.T) {
	a, _ := denyBroker(t, failingClaims{}, "broker-a")
	assert.Equal(t, Allow, a.Authenticate(cl(1, "192.0.2.1", "door", "alice", "alice-pw")).Result)
	assert.False(t, a.health.up())
}
