package e2e

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Issue 12 attack on the replica's lookup shortcuts, end to end: a real
// broker loading the built plugin and a real Redis changed with redis-cli.
// A lookup skips a list that holds no key and the scopes of a list that
// hold no exact key; a count one short lets a banned client in. Each step
// starts from lists that hold nothing of the scope banned (the skip path).

// A ban of each scope reaches a broker whose lists were empty, and its
// removal lifts it; a range ban when the lists hold no range and no exact
// key; an ip ban when only an allow on a claim is held (which lifts no ip
// ban); an allow on an ip lifting a claim ban, and its removal.
func TestAttackReplicaBanFromEmptyLists(t *testing.T) {
	e := newEnv(t)
	c := as("127.0.91.7", "ar-dev", "alice", "alice-pw")
	e.expect(c, accepted)
	for _, key := range []string{
		"guard:block:cidr:127.0.91.0/24", "guard:block:cidr:0.0.0.0/0", "guard:block:cidr:127.0.91.7/32",
		"guard:block:ip:127.0.91.7", "guard:block:clientid:ar-dev", "guard:block:username:alice",
	} {
		e.redis.CLI("SET", key, "attack")
		e.expect(c, refused, "%s set on empty lists", key)
		e.redis.CLI("DEL", key)
		e.expect(c, accepted, "%s deleted", key)
	}

	// Only an allow on a claim is held: the block list is empty.
	e.redis.CLI("SET", "guard:allow:clientid:ar-dev", "claim")
	e.expect(c, accepted)
	e.redis.CLI("SET", "guard:block:ip:127.0.91.7", "ban")
	e.expect(c, refused, "an allow on a claim lifts no ip ban")
	e.redis.CLI("DEL", "guard:block:ip:127.0.91.7")
	e.redis.CLI("SET", "guard:block:cidr:127.0.0.0/8", "ban")
	e.expect(c, refused, "an allow on a claim lifts no range ban")
	e.redis.CLI("DEL", "guard:block:cidr:127.0.0.0/8", "guard:allow:clientid:ar-dev")
	e.expect(c, accepted)

	// An allow on the ip lifts a ban on a claim; its removal restores it.
	e.redis.CLI("SET", "guard:block:username:alice", "ban")
	e.expect(c, refused)
	e.redis.CLI("SET", "guard:allow:ip:127.0.91.7", "proof")
	e.expect(c, accepted, "an allow on the ip lifts a claim ban")
	e.redis.CLI("DEL", "guard:allow:ip:127.0.91.7")
	e.expect(c, refused, "the allow removed: the claim ban holds again")
	e.redis.CLI("DEL", "guard:block:username:alice")
	e.expect(c, accepted)
}

// Expiring bans (SET PX 50), overwritten with themselves, FLUSHALL then an
// immediate re-SET: every ban live in Redis refuses.
func TestAttackReplicaExpiryAndFlush(t *testing.T) {
	e := newEnv(t)
	c := as("127.0.91.8", "ar-exp", "alice", "alice-pw")
	for i := 0; i < 5; i++ {
		e.redis.CLI("SET", "guard:block:ip:127.0.91.8", "short", "PX", "50")
		time.Sleep(120 * time.Millisecond) // expired in Redis and in the replica; maybe swept
		e.expect(c, accepted, "round %d: the PX 50 ban expired", i)
		e.redis.CLI("SET", "guard:block:ip:127.0.91.8", "long")
		e.redis.CLI("SET", "guard:block:ip:127.0.91.8", "long") // overwritten with itself
		e.expect(c, refused, "round %d: banned again after an expired ban", i)
		e.redis.CLI("DEL", "guard:block:ip:127.0.91.8")
		e.expect(c, accepted, "round %d", i)
	}
	for _, cmd := range []string{"FLUSHALL", "FLUSHDB"} {
		e.redis.CLI("SET", "guard:block:clientid:ar-exp", "before")
		e.expect(c, refused)
		e.redis.CLI(cmd)
		e.redis.CLI("SET", "guard:block:cidr:127.0.91.0/24", "after") // before the reload the flush mark starts
		e.expect(c, refused, "%s then a range ban at once", cmd)
		time.Sleep(time.Second) // the reload (flush checked every 500 ms) has run
		e.expect(c, refused, "%s: the reload keeps the range ban", cmd)
		e.redis.CLI("DEL", "guard:block:cidr:127.0.91.0/24")
		e.expect(c, accepted, "%s: the range ban lifted", cmd)
	}
}

// Clients churn while redis-cli flips a ban on and off: once the ban is
// set, every CONNECT that starts after it reached the replica is refused,
// and once it is deleted every one is accepted.
func TestAttackReplicaBanWhileClientsChurn(t *testing.T) {
	e := newEnv(t)
	keys := []string{"guard:block:ip:127.0.92.5", "guard:block:cidr:127.0.92.0/24", "guard:block:clientid:ch-5", "guard:block:username:bob"}
	var banned atomic.Int32 // 1: a ban is set and has been seen to refuse
	var mu sync.Mutex
	var wrong []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				was := banned.Load()
				code := e.connect(as("127.0.92.5", "ch-5", "bob", "bob-pw"))
				if was == 1 && banned.Load() == 1 && code != refused {
					mu.Lock()
					wrong = append(wrong, fmt.Sprintf("worker %d try %d: accepted while banned", w, i))
					mu.Unlock()
				}
			}
		}(w)
	}
	for round := 0; round < 12; round++ {
		key := keys[round%len(keys)]
		c := as("127.0.92.5", "ch-probe", "bob", "bob-pw")
		if key == "guard:block:clientid:ch-5" {
			c = as("127.0.92.5", "ch-5", "bob", "bob-pw")
		}
		e.redis.CLI("SET", key, "churn")
		e.expect(c, refused, "round %d: %s", round, key)
		banned.Store(1)
		time.Sleep(150 * time.Millisecond)
		banned.Store(0)
		e.redis.CLI("DEL", key)
		e.expect(c, accepted, "round %d: %s deleted", round, key)
	}
	close(stop)
	wg.Wait()
	require.Empty(t, wrong)
}

// An automatic ban (fail_limit) written into the lists while they held
// nothing: the plugin puts it into its own replica at once.
func TestAttackReplicaAutoBanOnEmptyLists(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 2")
	for i := 0; i < 3; i++ { // over the limit: 3 failures
		assert.EqualValues(t, refused, e.connect(as("127.0.93.3", fmt.Sprintf("ab-%d", i), "alice", "wrong")))
	}
	eventually(t, 3*time.Second, func() bool { return e.redis.CLI("EXISTS", "guard:block:ip:127.0.93.3") == "1" }, "no automatic ban")
	assert.EqualValues(t, refused, e.connect(as("127.0.93.3", "ab-ok", "alice", "alice-pw")), "the automatic ip ban refuses the right password")
	assert.EqualValues(t, accepted, e.connect(as("127.0.93.4", "ab-other", "alice", "alice-pw")), "another ip")
	// Deleted by an operator: lifted.
	e.redis.CLI("DEL", "guard:block:ip:127.0.93.3")
	e.expect(as("127.0.93.3", "ab-ok", "alice", "alice-pw"), accepted)
}

// Certificates: a cert ban when the lists hold keys of other scopes only
// (the cert scope skipped until then), a cert allow lifting an ip ban when
// the allow list held nothing, and their removal.
func TestAttackReplicaCertScopeSkip(t *testing.T) {
	e := newTLSEnv(t)
	dev := e.ca.Client(t, "ar-cert-dev")
	other := e.ca.Client(t, "ar-cert-other")
	c := as("127.0.94.1", "ar-cert-1", "alice", "alice-pw")
	e.redis.CLI("SET", "guard:block:clientid:someone-else", "x") // block list non-empty, no cert key
	e.redis.CLI("SET", certKey("allow", other), "")              // allow list holds a cert, block list none
	e.expectCert(c, dev, accepted)
	e.redis.CLI("SET", certKey("block", dev), "stolen")
	e.expectCert(c, dev, refused, "the first cert ban")
	assert.EqualValues(t, accepted, e.connectCert(c, other))
	e.redis.CLI("DEL", certKey("block", dev))
	e.expectCert(c, dev, accepted, "the cert ban lifted")

	e.redis.CLI("DEL", certKey("allow", other), "guard:block:clientid:someone-else") // both lists empty
	e.redis.CLI("SET", "guard:block:ip:127.0.94.1", "nat")
	e.expectCert(c, dev, refused)
	e.redis.CLI("SET", certKey("allow", dev), "")
	e.expectCert(c, dev, accepted, "a cert allow lifts the ip ban")
	assert.EqualValues(t, refused, e.connectCert(c, other), "not for another certificate")
	e.redis.CLI("DEL", certKey("allow", dev))
	e.expectCert(c, dev, refused, "the allow removed")
}

// A client connected while the lists were empty is kicked by a range ban,
// the first key of any list, and by an ip ban while only allow keys of
// other scopes are held.
func TestAttackReplicaKickFromEmptyLists(t *testing.T) {
	e := newEnv(t)
	conn, code := e.dial(as("127.0.95.1", "ar-kick-1", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	e.redis.CLI("SET", "guard:block:cidr:127.0.95.0/24", "range")
	assert.True(t, conn.Closed(2*time.Second), "not kicked by the first range ban")
	e.redis.CLI("DEL", "guard:block:cidr:127.0.95.0/24")

	e.redis.CLI("SET", "guard:allow:username:bob", "")
	conn, code = e.dial(as("127.0.95.2", "ar-kick-2", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	e.redis.CLI("SET", "guard:block:ip:127.0.95.2", "ip")
	assert.True(t, conn.Closed(2*time.Second), "not kicked by the first ip ban")
}

// A banned client connects: an allow entry with an expiry lifts a ban;
// Redis, at its maxmemory with volatile-ttl, evicts the allow key (the
// only key with an expiry); the replica never hears of it (the plugin does
// not turn on evicted notifications, class 'e') and keeps letting the
// banned client in, until the next replica_resync. A DEL of the same key
// restores the ban within milliseconds.
func TestAttackReplicaEvictedAllowStillLiftsBan(t *testing.T) {
	e := newEnv(t)
	c := as("127.0.96.1", "ev-banned", "alice", "alice-pw")
	e.redis.CLI("SET", "guard:block:clientid:ev-banned", "banned")
	e.expect(c, refused)
	e.redis.CLI("SET", "guard:allow:ip:127.0.96.1", "temporary exemption", "EX", "3600")
	e.expect(c, accepted, "the allow on the ip lifts the claim ban")

	require.Equal(t, "OK", e.redis.CLI("CONFIG", "SET", "maxmemory-policy", "volatile-ttl"))
	require.Equal(t, "OK", e.redis.CLI("CONFIG", "SET", "maxmemory", "4mb"))
	junk := strings.Repeat("j", 10_000)
	for i := 0; i < 1000 && e.redis.CLI("EXISTS", "guard:allow:ip:127.0.96.1") == "1"; i++ {
		_, _ = e.redis.TryCLI("SET", fmt.Sprintf("junk:%d", i), junk) // OOM once nothing is left to evict
	}
	require.Equal(t, "0", e.redis.CLI("EXISTS", "guard:allow:ip:127.0.96.1"), "Redis evicted the allow key")
	require.Equal(t, "1", e.redis.CLI("EXISTS", "guard:block:clientid:ev-banned"), "the ban is still in Redis")
	e.expect(c, refused, "the banned client connects: the replica kept the evicted allow key")
}
