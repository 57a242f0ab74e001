package plugin

import (
	"context"
	"errors"
	"github.com/mosquitto-guard/mosquitto-guard/config"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// denyBroker is one guard in clientid_conflict deny mode with the redis
// backend (alice and bob), tracking client IDs in store.
func denyBroker(t *testing.T, store ConflictStore, name string) (*Guard, *logSink) {
	t.Helper()
	cfg, err := config.Parse(map[string]string{"backend": "redis", "clientid_conflict": "deny", "broker_name": name})
	require.NoError(t, err)
	st, ls := newFakeStore(), &logSink{}
	for u, p := range map[string]string{"alice": "alice-pw", "bob": "bob-pw"} {
		h, err := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
		require.NoError(t, err)
		st.set("guard:user:"+u, string(h))
	}
	g, err := NewWith(cfg, Output{Log: ls.log}, Deps{Store: st, Counter: &fakeCounter{}, Conflicts: store})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	return g, ls
}

// seeEachOther renews every guard's lease, then lets each learn the others'.
func seeEachOther(gs ...*Guard) {
	for _, g := range gs {
		g.conflicts.renew()
	}
	for _, g := range gs {
		g.conflicts.renew()
	}
}

// In deny mode a client this plugin admits claims its client ID in the step
// that looks for a holder, and the connection claimed is the one recorded
// and later removed: the admitted connection's own.
func TestDenyClaimsTheClientID(t *testing.T) {
	mem := newMemConflicts()
	a, _ := denyBroker(t, mem, "broker-a")
	b, logs := denyBroker(t, mem, "broker-b")
	seeEachOther(a, b)

	require.Equal(t, Allow, a.Authenticate(cl(1, "192.0.2.1", "door", "alice", "alice-pw")).Result)
	mem.mu.Lock()
	live := append([]store.Conn(nil), mem.states["door"].Live...)
	mem.mu.Unlock()
	require.Len(t, live, 1, "claimed on the broker thread, before the worker runs")
	a.mu.Lock()
	admitted := a.conns[1].conn
	a.mu.Unlock()
	assert.Equal(t, admitted, live[0], "admit records the claimed connection")

	d := b.Authenticate(cl(2, "192.0.2.2", "door", "bob", "bob-pw"))
	assert.Equal(t, Deny, d.Result)
	assert.Equal(t, RuleClientIDConflict, d.Rule)
	assert.Contains(t, logs.all(), `holder_principal="alice" holder_ip=192.0.2.1 holder_broker="broker-a"`)
	b.mu.Lock()
	assert.Empty(t, b.conns, "the refused client is not admitted")
	b.mu.Unlock()

	// The same principal on another broker is a reconnect.
	assert.Equal(t, Allow, b.Authenticate(cl(3, "192.0.2.3", "door", "alice", "alice-pw")).Result)
	// Once alice's connections are gone (their disconnects processed), bob may use the ID.
	a.Disconnected(1)
	b.Disconnected(3)
	assert.Eventually(t, func() bool {
		mem.mu.Lock()
		defer mem.mu.Unlock()
		return len(mem.states["door"].Live) == 0
	}, 2*time.Second, 10*time.Millisecond, "alice's live entries removed")
	assert.Equal(t, Allow, b.Authenticate(cl(4, "192.0.2.2", "door", "bob", "bob-pw")).Result)
}

// failingClaims is a store whose claims fail, as when Redis does not answer
// within redis_timeout.
type failingClaims struct{ *memConflicts }

func (failingClaims) Claim(context.Context, string, store.Conn, []string) (*store.Conn, error) {
	return nil, errors.New("i/o timeout")
}

// A claim Redis does not answer lets the client in (to be flagged later if
// it conflicts), as when Redis is down, and marks Redis down so that the
// next CONNECTs do not wait for it too.
func TestDenyClaimFailureLetsIn(t *testing.T) {
	a, _ := denyBroker(t, failingClaims{newMemConflicts()}, "broker-a")
	assert.Equal(t, Allow, a.Authenticate(cl(1, "192.0.2.1", "door", "alice", "alice-pw")).Result)
	assert.False(t, a.health.up())
}
