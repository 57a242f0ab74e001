package e2e

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// TestHostileGateRedisUserWithoutChannelsRefusesEveryoneForever: Redis 7
// gives a new ACL user no pub/sub channel (acl-pubsub-default
// resetchannels), so an operator's `ACL SETUSER guard on >pw ~guard:* +@all`
// can GET and SET every key the plugin needs but not PSUBSCRIBE. The
// replica's session subscribes before it loads, so it never loads; before
// the seeded gate CONNECTs then asked Redis directly and passwords were
// checked. With the gate, the redis backend refuses every client, known
// users with their right password included, for as long as the broker runs:
// not "as long as the first load takes".
func TestHostileGateRedisUserWithoutChannelsRefusesEveryoneForever(t *testing.T) {
	e := envWithoutBroker(t)
	h, err := bcrypt.GenerateFromPassword([]byte("alice-secret"), 10)
	require.NoError(t, err)
	e.redis.CLI("SET", "guard:user:alice", string(h))
	// Every command on the plugin's keys; channels as Redis 7 gives by default.
	e.redis.CLI("ACL", "SETUSER", "guard", "on", ">guard-pw", "~guard:*", "~rate:guard:*", "+@all")
	// The broker waits 10 s at start for a first load that never comes
	// (longer than the harness waits for it to listen): start it while
	// Redis hangs, as TestReadmeAttack2... does, so it does not wait.
	e.startBrokerWhileRedisHangs(t, e.conf("auth_opt_backend redis",
		"auth_opt_redis_username guard", "auth_opt_redis_password guard-pw"))

	// Well past any first load of one user.
	deadline := time.Now().Add(15 * time.Second)
	var code byte
	for i := 0; time.Now().Before(deadline); i++ {
		if code = e.connect(as("127.0.0.1", fmt.Sprintf("alice-%d", i), "alice", "alice-secret")); code == accepted {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	out := e.broker.Output()
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "mosquitto-guard:") && !strings.Contains(l, "event=refused") {
			t.Log(l)
		}
	}
	t.Logf("redis-unavailable refusals: %d; replica loaded: %v", strings.Count(out, "rule=redis-unavailable"), strings.Contains(out, "replica loaded"))
	assert.Equal(t, byte(accepted), code, "alice with her right password, 15 s after start, Redis answering every GET")

	// Unsubscribed, the replica hears of a ban only at its next reload
	// (replica_resync, 5 min): a CONNECT asks Redis instead, as it did
	// before the replica could load in this case, so a ban applies at once.
	// Once the broker knows Redis is back: until then the replica answers,
	// as while Redis is down (a CI run tried before it knew).
	e.logLine("is back: list checks resume")
	e.redis.CLI("SET", "guard:block:clientid:alice-banned", "operator")
	assert.Equal(t, byte(refused), e.connect(as("127.0.0.1", "alice-banned", "alice", "alice-secret")),
		"a ban set while Redis refuses the subscription applies to the next CONNECT")
	e.logLine(`rule="guard:block:clientid:alice-banned"`) // the broker writes its lines after the CONNACK
}

// TestHostileGateLoadRefusedIsLogged: a Redis user that may GET the
// plugin's keys but not SCAN them (an ACL without @keyspace's SCAN, a proxy
// that forwards no SCAN) keeps the replica from ever loading, so the redis
// backend refuses every client (rule=redis-unavailable) for as long as the
// broker runs: it cannot know the users' hash class, and checking passwords
// without it would tell usernames apart. That refusal is the gate's price;
// but the operator must be told why, and the refusal Redis gave was logged
// nowhere: the only line said passwords are checked "once the replica has
// loaded the users".
func TestHostileGateLoadRefusedIsLogged(t *testing.T) {
	e := envWithoutBroker(t)
	e.redis.CLI("SET", "guard:user:alice", "$7$101$AAAAAAAAAAAAAAAA$"+strings.Repeat("A", 86)+"==")
	e.redis.CLI("ACL", "SETUSER", "guard", "on", ">guard-pw", "~guard:*", "~rate:guard:*", "&*", "+@all", "-scan")
	e.startBrokerWhileRedisHangs(t, e.conf("auth_opt_backend redis",
		"auth_opt_redis_username guard", "auth_opt_redis_password guard-pw"))
	assert.Equal(t, byte(refused), e.connect(as("127.0.0.1", "a1", "alice", "x")))
	assert.True(t, e.broker.WaitOutput("NOPERM", 5*time.Second), "the refusal that keeps the replica from loading is logged")
	time.Sleep(3 * time.Second) // several retries
	assert.Equal(t, 1, strings.Count(e.broker.Output(), "NOPERM"), "once, not at every retry")
}

// TestHostileGateReloadFromEmptyLeavesTheDefaultDummy: the seeded gate
// closes the first load's window (users in the replica, the unknown users'
// dummy still mosquitto_passwd's default), but a later reload that brings
// the users back after the replica held none opens the same window: a
// FLUSHALL (the replica empties within 0.5 s), then the users return with
// no notification (DEBUG RELOAD here; a restore by replication's full sync,
// or notifications off, alike). The reload swaps 200 000 users in, then
// re-ranks their hashes in OnManyChanges (some 230 ms): meanwhile unknown
// users cost the default dummy where alice costs bcrypt-11.
func TestHostileGateReloadFromEmptyLeavesTheDefaultDummy(t *testing.T) {
	testenv.Need(t, "mosquitto", "redis-server", "redis-cli")
	e := &env{t: t, dir: t.TempDir()}
	e.redis = testenv.StartRedis(t, "--enable-debug-command", "yes")
	h, err := bcrypt.GenerateFromPassword([]byte("alice-secret"), 11)
	require.NoError(t, err)
	e.redis.CLI("SET", "guard:user:alice", string(h))
	e.storeCheapUsers(200_000)
	e.redis.CLI("SAVE")
	e.broker = startBroker(t, e.conf("auth_opt_backend redis",
		"auth_opt_fail_limit 1000000", "auth_opt_username_fail_limit 0"))
	require.True(t, e.broker.WaitOutput("replica loaded", 20*time.Second))

	e.redis.CLI("FLUSHALL")
	require.Eventually(t, func() bool {
		return strings.Contains(e.broker.Output(), "the flush mark")
	}, 5*time.Second, 20*time.Millisecond, "the replica noticed the flush")
	time.Sleep(time.Second) // its reload (to no user) done

	// Probe as an attacker would, as fast as the broker answers: an unknown
	// username, then u0 (a known user of the cheap class, wrong password:
	// its rule says whether the replica holds the users yet).
	type probe struct {
		id   string
		took time.Duration
	}
	var probes []probe
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Until a second after the reload that brings the users back is
		// reported (the FLUSHALL's was the first), at most 30 s.
		deadline, stop := time.Now().Add(30*time.Second), time.Time{}
		for i := 1; time.Now().Before(deadline) && (stop.IsZero() || time.Now().Before(stop)); i++ {
			if stop.IsZero() && strings.Count(e.broker.Output(), "the reload changed more than") >= 2 {
				stop = time.Now().Add(time.Second)
			}
			id, user := fmt.Sprintf("rx-%d", i), fmt.Sprintf("rx-user-%d", i)
			if i%2 == 0 {
				user = "u0"
			}
			start := time.Now()
			e.connect(as(fmt.Sprintf("127.0.%d.%d", 80+i/250, 1+i%250), id, user, "guess"))
			probes = append(probes, probe{id, time.Since(start)})
		}
	}()
	time.Sleep(500 * time.Millisecond)
	e.redis.CLI("DEBUG", "RELOAD", "NOSAVE") // the users back, no notification
	<-done
	time.Sleep(500 * time.Millisecond)
	unknown, known := unknownAndKnown(t, e, "127.0.99")
	t.Logf("after the reload: unknown users %v, alice %v", unknown, known)

	for _, l := range strings.Split(e.broker.Output(), "\n") {
		if strings.Contains(l, "mosquitto-guard:") && !strings.Contains(l, "event=refused") {
			t.Log(l)
		}
	}
	rules := map[string]string{}
	for _, m := range regexp.MustCompile(`rule=(\S+) client_id="?(rx-\d+)`).FindAllStringSubmatch(e.broker.Output(), -1) {
		rules[m[2]] = m[1]
	}
	back := -1 // the first probe of u0 answered as a known user
	for i, p := range probes {
		if i%2 == 1 && rules[p.id] == "bad-password" {
			back = i
			break
		}
	}
	require.NotEqual(t, -1, back, "the users came back during the probes")
	var cheap []string
	for i := back + 1; i < len(probes); i++ {
		if p := probes[i]; i%2 == 0 && rules[p.id] == "unknown-user" && p.took < known/2 {
			cheap = append(cheap, fmt.Sprintf("%s: %v", p.id, p.took.Round(time.Microsecond)))
		}
	}
	t.Logf("%d probes; the users back from probe %d on; %d unknown users answered cheap after", len(probes), back, len(cheap))
	if len(cheap) > 5 {
		cheap = cheap[:5]
	}
	assert.Empty(t, cheap, "unknown users answered in far less than alice's %v while the replica held her", known)
}
