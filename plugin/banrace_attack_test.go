package plugin

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
	"github.com/mosquitto-guard/mosquitto-guard/store/replica"
)

// claimHookStore is a fakeStore that claims client IDs (clientid_conflict
// deny) and runs hook during the claim's round trip.
type claimHookStore struct {
	*fakeStore
	hook func()
}

func (s *claimHookStore) Claim(context.Context, string, store.Conn, store.Brokers) (*store.Conn, error) {
	if s.hook != nil {
		s.hook()
	}
	return nil, nil // no holder: the client is admitted
}

// Found by the record-reuse review (older than it: ef09c6c failed the
// same): an operator's ban that reaches the replica between a CONNECT's
// list check and its admit was missed for good. The kick scan
// (kickMatching) did not see the client (not in g.conns yet), and the
// CONNECT had read the lists before the ban: the banned client stayed
// connected, unflagged, until it left. Now banRaced looks it up again after
// admit and kicks it.
//
// The window is what the broker thread does between lookup and admit: under
// clientid_conflict deny, the claim's Redis round trip (up to
// redis_timeout); with any mode, a cache-miss password verification (a
// full hash). Here the ban lands during the claim, as the replica's
// goroutine would deliver it (Put, then OnChange → listChanged).
func TestBanDuringConnectIsKicked(t *testing.T) {
	cfg, err := config.Parse(map[string]string{"backend": "redis", "clientid_conflict": "deny"})
	require.NoError(t, err)
	st := &claimHookStore{fakeStore: newFakeStore()}
	h, err := bcrypt.GenerateFromPassword([]byte("alice-pw"), bcrypt.MinCost)
	require.NoError(t, err)
	st.set("guard:user:alice", string(h))
	var kr kickRecorder
	g, err := NewWith(cfg, Output{Log: func(Level, string) {}, Kick: kr.kick}, Deps{Store: st, Counter: &fakeCounter{}, Conflicts: failingClaims{}})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	g.replica = replica.New(keys.Builder{Prefix: "guard:"})

	const key = "guard:block:username:alice"
	st.hook = func() {
		st.set(key, "operator ban") // Redis has it
		require.NoError(t, g.replica.Put(key, "operator ban", time.Time{}))
		e, ok := g.replica.Get(key)
		require.True(t, ok)
		g.listChanged(key, &e, nil, true) // the replica's OnChange
	}
	c := cl(1, "192.0.2.1", "door-1", "alice", "alice-pw")
	require.Equal(t, Allow, g.Authenticate(c).Result, "the list check ran before the ban")
	st.hook = nil

	assert.True(t, g.Flagged(c.Handle), "a client banned while its CONNECT was being decided is neither flagged nor kicked")
	assert.Equal(t, []string{"door-1"}, kr.all(), "its kick")
	// The next CONNECT of the same client is refused: only the connection
	// that raced the ban stays.
	assert.Equal(t, Deny, g.Authenticate(cl(2, "192.0.2.1", "door-1", "alice", "alice-pw")).Result)
}

// The same gap at a certificate's first sight (an identity listener: no
// BASIC_AUTH, the first ACL check decides): a ban on the certificate that
// lands during the claim flags and kicks it, and that first ACL check is
// refused too.
func TestBanDuringFirstSightIsNotMissed(t *testing.T) {
	cfg, err := config.Parse(map[string]string{"backend": "redis", "clientid_conflict": "deny"})
	require.NoError(t, err)
	st := &claimHookStore{fakeStore: newFakeStore()}
	var kr kickRecorder
	g, err := NewWith(cfg, Output{Log: func(Level, string) {}, Kick: kr.kick}, Deps{Store: st, Counter: &fakeCounter{}, Conflicts: failingClaims{}})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	g.replica = replica.New(keys.Builder{Prefix: "guard:"})

	key := "guard:block:cert:" + keys.CertID([]byte("stolen"))
	st.hook = func() {
		st.set(key, "stolen device")
		require.NoError(t, g.replica.Put(key, "stolen device", time.Time{}))
		e, ok := g.replica.Get(key)
		require.True(t, ok)
		g.listChanged(key, &e, nil, true)
	}
	dev := certCl(1, "192.0.2.1", "dev-1", "CN=dev-1", "", "stolen", "CN=dev-1")
	dev.Password = nil
	d := g.FirstSight(dev)
	st.hook = nil
	assert.Equal(t, Deny, d.Result, "the first ACL check, decided after the ban was in the replica")
	assert.Equal(t, key, d.Rule)
	assert.True(t, g.Flagged(dev.Handle))
	assert.Equal(t, []string{"dev-1"}, kr.all(), "its kick")
}

// A ban that reaches the replica while the CONNECT's password is checked
// (a cache miss hashes it, some ms) refuses that CONNECT, as its list check
// would have had it come a little earlier: no CONNACK, no admit, no kick.
// Before, it was admitted (then, with banRaced, kicked at the next tick).
func TestBanDuringPasswordCheckRefuses(t *testing.T) {
	cfg, err := config.Parse(map[string]string{"backend": "redis"})
	require.NoError(t, err)
	st := newFakeStore()
	h, err := bcrypt.GenerateFromPassword([]byte("alice-pw"), bcrypt.MinCost)
	require.NoError(t, err)
	st.set("guard:user:alice", string(h))
	var kr kickRecorder
	g, err := NewWith(cfg, Output{Log: func(Level, string) {}, Kick: kr.kick}, Deps{Store: st, Counter: &fakeCounter{}})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	g.replica = replica.New(keys.Builder{Prefix: "guard:"})

	const key = "guard:block:ip:192.0.2.1"
	g.afterCredentials = func() {
		g.afterCredentials = nil
		st.set(key, "operator ban")
		require.NoError(t, g.replica.Put(key, "operator ban", time.Time{}))
		e, ok := g.replica.Get(key)
		require.True(t, ok)
		g.listChanged(key, &e, nil, true)
	}
	c := cl(1, "192.0.2.1", "door-1", "alice", "alice-pw")
	d := g.Authenticate(c)
	assert.Equal(t, Deny, d.Result, "refused: the ban was in the replica before the CONNECT was answered")
	assert.Equal(t, key, d.Rule)
	assert.False(t, g.Flagged(c.Handle))
	assert.Empty(t, kr.all(), "nothing to kick: it was never let in")
	g.mu.Lock()
	assert.Nil(t, g.conns.get(c.Handle), "not admitted")
	g.mu.Unlock()
	// Without a ban meanwhile, the same client is let in.
	assert.Equal(t, Allow, g.Authenticate(cl(2, "192.0.2.2", "door-2", "alice", "alice-pw")).Result)
}
