package store

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// Two brokers recording one client ID at the same moment for two principals:
// each records and reads in one atomic step per key, so whichever comes
// second sees the first, in the live hash and in the seen hash, however
// the two interleave (issue 8, item 7: reading then writing let both miss
// each other).
func TestWriteConnsReadSeesTheOtherWhateverTheOrder(t *testing.T) {
	s, _ := newStore(t, "guard:")
	ctx := context.Background()
	for i := 0; i < 200; i++ {
		id := "race-" + strconv.Itoa(i)
		var states [2]State
		var wg sync.WaitGroup
		for side, p := range []string{"alice", "bob"} {
			wg.Add(1)
			go func(side int, p string) {
				defer wg.Done()
				c := Conn{ID: fmt.Sprintf("i%d-%d", side, i+1), Instance: fmt.Sprintf("i%d", side), Principal: p, ConnectedMs: 1000}
				st, err := s.WriteConns(ctx, []ConnWrite{{ClientID: id, Instance: c.Instance, Live: &c, Seen: &c, Read: true}}, time.Hour)
				assert.NoError(t, err)
				if len(st) == 1 {
					states[side] = st[0]
				}
			}(side, p)
		}
		wg.Wait()
		live := len(states[0].Live) + len(states[1].Live)
		seen := len(states[0].Seen) + len(states[1].Seen)
		require.Equal(t, 3, live, "%s: one read saw its own live entry only, the other saw both", id)
		require.Equal(t, 3, seen, "%s: one read saw its own use only, the other saw both", id)
	}
}

// Of two principals claiming one client ID on two brokers at the same
// moment, exactly one gets it; the other is told who holds it.
func TestClaimExactlyOneOfTwo(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	for i := 0; i < 200; i++ {
		id := "race-" + strconv.Itoa(i)
		var holders [2]*Conn
		var wg sync.WaitGroup
		for side, p := range []string{"alice", "bob"} {
			wg.Add(1)
			go func(side int, p string) {
				defer wg.Done()
				c := Conn{ID: fmt.Sprintf("i%d-%d", side, i+1), Instance: fmt.Sprintf("i%d", side), Principal: p, ConnectedMs: 1000}
				h, err := s.Claim(ctx, id, c, Brokers{})
				assert.NoError(t, err)
				holders[side] = h
			}(side, p)
		}
		wg.Wait()
		require.True(t, (holders[0] == nil) != (holders[1] == nil), "%s: exactly one refused: %+v", id, holders)
		winner := 0
		if holders[0] != nil {
			winner = 1
		}
		assert.Equal(t, []string{"alice", "bob"}[winner], holders[1-winner].Principal)
		assert.Equal(t, "1", r.CLI("HLEN", "guard:conn:"+id), "%s: the refused one records nothing", id)
	}
}

func TestClaimRules(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	alice := Conn{ID: "a-1", Instance: "a", Broker: "eu-1", Principal: "alice", IP: "192.0.2.1", ConnectedMs: 1}
	h, err := s.Claim(ctx, "dev", alice, Brokers{})
	require.NoError(t, err)
	require.Nil(t, h)

	// Another principal on a broker whose lease runs is refused, with the
	// holder; so on one the caller has not seen yet (not in dead).
	bob := Conn{ID: "b-1", Instance: "b", Principal: "bob", ConnectedMs: 2}
	h, err = s.Claim(ctx, "dev", bob, Brokers{Dead: []string{"c"}})
	require.NoError(t, err)
	require.NotNil(t, h)
	assert.Equal(t, alice, *h)
	// An instance the caller knows alive counts whenever its entry
	// connected; one it does not name only from Since on (a broker that
	// died before its first renewal is never reaped).
	h, err = s.Claim(ctx, "dev", bob, Brokers{Alive: []string{"a"}, Since: 1_000})
	require.NoError(t, err)
	require.NotNil(t, h, "a is alive")
	h, err = s.Claim(ctx, "dev", bob, Brokers{Alive: []string{"c"}, Since: 1})
	require.NoError(t, err)
	require.NotNil(t, h, "a is not named: connected at Since")
	h, err = s.Claim(ctx, "dev", bob, Brokers{Alive: []string{"c"}, Since: 2})
	require.NoError(t, err)
	require.Nil(t, h, "a is not named: connected before Since")
	r.CLI("HDEL", "guard:conn:dev", "b")
	// Not when the holder's broker is dead (its lease ran out).
	h, err = s.Claim(ctx, "dev", bob, Brokers{Dead: []string{"a"}})
	require.NoError(t, err)
	assert.Nil(t, h)
	assert.Equal(t, "2", r.CLI("HLEN", "guard:conn:dev"))

	// The same principal on another broker is a reconnect, not a conflict.
	alice2 := Conn{ID: "c-1", Instance: "c", Principal: "alice", ConnectedMs: 3}
	r.CLI("HDEL", "guard:conn:dev", "b")
	h, err = s.Claim(ctx, "dev", alice2, Brokers{})
	require.NoError(t, err)
	assert.Nil(t, h)

	// A long principal is compared in its stored form.
	long := keys.Tracking(string(make([]byte, 70000)))
	carol := Conn{ID: "d-1", Instance: "d", Principal: long, ConnectedMs: 4}
	h, err = s.Claim(ctx, "dev2", carol, Brokers{})
	require.NoError(t, err)
	require.Nil(t, h)
	carol2 := Conn{ID: "e-1", Instance: "e", Principal: long, ConnectedMs: 5}
	h, err = s.Claim(ctx, "dev2", carol2, Brokers{})
	require.NoError(t, err)
	assert.Nil(t, h)

	// After SCRIPT FLUSH (a restarted or new node) a claim still runs.
	r.CLI("SCRIPT", "FLUSH")
	h, err = s.Claim(ctx, "dev", bob, Brokers{})
	require.NoError(t, err)
	require.NotNil(t, h)
}

// The broker thread claims connections and the conflict worker records them
// again later: a late record never replaces a newer connection of the same
// broker, and a disconnect removes only its own entry.
func TestLiveEntryNewestOfInstanceWins(t *testing.T) {
	s, _ := newStore(t, "guard:")
	ctx := context.Background()
	x1 := Conn{ID: "a-9", Instance: "a", Principal: "alice", ConnectedMs: 1}
	x2 := Conn{ID: "a-10", Instance: "a", Principal: "alice", ConnectedMs: 2}
	h, err := s.Claim(ctx, "dev", x2, Brokers{})
	require.NoError(t, err)
	require.Nil(t, h)
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "dev", Instance: "a", Live: &x1}}, time.Hour))
	live, _, err := state(s, "dev")
	require.NoError(t, err)
	require.Len(t, live, 1)
	assert.Equal(t, "a-10", live[0].ID, "the late record of a-9 left a-10")

	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "dev", Instance: "a", Gone: &x1}}, time.Hour))
	live, _, err = state(s, "dev")
	require.NoError(t, err)
	require.Len(t, live, 1, "a-9's disconnect leaves a-10")
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "dev", Instance: "a", Live: &x2}, {ClientID: "dev", Instance: "a", Gone: &x2}}, time.Hour))
	live, _, err = state(s, "dev")
	require.NoError(t, err)
	assert.Empty(t, live)
}

// A takeover count once left without its expiry (as two separate commands
// could leave it) gets one: the count and its expiry are one step, and a
// count found without an expiry is given one.
func TestCountTakeoverNeverWithoutExpiry(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	r.CLI("HSET", "guard:takeoverconns:dev", "c1", "1", "c2", "1", "c3", "1", "c4", "1", "c5", "1")
	n, err := s.CountTakeover(ctx, "dev", "c6", time.Minute, 10)
	require.NoError(t, err)
	assert.EqualValues(t, 6, n)
	pttl, _ := strconv.Atoi(r.CLI("PTTL", "guard:takeoverconns:dev"))
	assert.Greater(t, pttl, 0, "the count expires")
	assert.LessOrEqual(t, pttl, 60000)

	// Within a window the expiry is not pushed back.
	time.Sleep(20 * time.Millisecond)
	_, err = s.CountTakeover(ctx, "dev", "c7", time.Minute, 10)
	require.NoError(t, err)
	later, _ := strconv.Atoi(r.CLI("PTTL", "guard:takeoverconns:dev"))
	assert.Less(t, later, pttl)
}

// On a Redis Cluster every step touches one key: claims, records and reads
// of client IDs whose live and seen hashes sit on different nodes.
func TestClaimAndRecordOnCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("forms a Redis Cluster")
	}
	testenv.Need(t, "redis-server", "redis-cli")
	cl := testenv.StartRedisCluster(t, 3)
	s := New(Options{Addrs: []string{cl.Nodes[0].Addr, cl.Nodes[1].Addr, cl.Nodes[2].Addr}, Timeout: time.Second}, keys.Builder{Prefix: "guard:"})
	t.Cleanup(func() { s.Close() })
	ctx := context.Background()
	apart := 0
	for i := 0; i < 20; i++ {
		id := "cl-" + strconv.Itoa(i)
		if cl.CLI("CLUSTER", "KEYSLOT", "guard:conn:"+id) != cl.CLI("CLUSTER", "KEYSLOT", "guard:seen:"+id) {
			apart++
		}
		alice := Conn{ID: "a-" + strconv.Itoa(i+1), Instance: "a", Principal: "alice", ConnectedMs: 1}
		h, err := s.Claim(ctx, id, alice, Brokers{})
		require.NoError(t, err)
		require.Nil(t, h)
		bob := Conn{ID: "b-" + strconv.Itoa(i+1), Instance: "b", Principal: "bob", ConnectedMs: 2}
		h, err = s.Claim(ctx, id, bob, Brokers{})
		require.NoError(t, err)
		require.NotNil(t, h, id)
		st, err := s.WriteConns(ctx, []ConnWrite{
			{ClientID: id, Instance: "a", Live: &alice, Seen: &alice, Read: true},
			{ClientID: id, Instance: "b", Live: &bob, Seen: &bob, Read: true},
			{ClientID: id, Instance: "b", Gone: &bob, Unlist: true},
		}, time.Hour)
		require.NoError(t, err)
		require.Len(t, st, 3)
		assert.Len(t, st[1].Live, 2, id)
		assert.Len(t, st[1].Seen, 2, id)
		n, err := s.CountTakeover(ctx, id, bob.ID, time.Minute, 3)
		require.NoError(t, err)
		assert.EqualValues(t, 1, n)
	}
	assert.NotZero(t, apart, "some client IDs have their live and seen hashes on different slots")
}
