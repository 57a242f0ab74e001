package e2e

import (
	"fmt"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"
)

// README, Automatic bans, Timing: the redis backend's unknown users cost the
// most expensive class among the users its replica holds. A broker that
// starts while Redis hangs (SIGSTOP: a failover, a slow disk) answers
// CONNECTs at once and loads its replica only once Redis is back. Unknown
// users checked in between were answered with mosquitto_passwd's default
// dummy, where alice (bcrypt-11) costs some 160 ms: with 200 000 users the
// load took 3.2 s on the test machine, and 1 281 of 1 664 unknown usernames
// probed meanwhile were answered in 0.3 to 5 ms. Now no password is
// checked until the users are loaded: alice and the unknown users alike are
// refused unchecked (rule=redis-unavailable), then checked at one cost.
func TestReadmeAttack2RedisBackendUnknownUserCheapAfterRedisHungAtStart(t *testing.T) {
	e := envWithoutBroker(t)
	h, err := bcrypt.GenerateFromPassword([]byte("alice-secret"), 11)
	require.NoError(t, err)
	e.redis.CLI("SET", "guard:user:alice", string(h))
	// 200 000 other users (cheap hashes): the replica's load and the
	// ranking of their hashes take a few hundred milliseconds.
	e.storeCheapUsers(200_000)
	e.startBrokerWhileRedisHangs(t, e.conf("auth_opt_backend redis",
		"auth_opt_fail_limit 1000", "auth_opt_username_fail_limit 0"))

	// Probe unknown usernames as an attacker would, as fast as the broker
	// answers, for 3 s after Redis is back.
	took := map[int]time.Duration{}
	deadline := time.Now().Add(3 * time.Second)
	for i := 1; time.Now().Before(deadline); i++ {
		user := fmt.Sprintf("hung-user-%d", i)
		if i%10 == 0 {
			user = "alice" // a known user among the probes, wrong password
		}
		start := time.Now()
		code := e.connect(as(fmt.Sprintf("127.0.%d.%d", 80+i/250, 1+i%250), fmt.Sprintf("hung-%d", i), user, "guess"))
		took[i] = time.Since(start)
		require.Equal(t, byte(refused), code)
	}
	require.True(t, e.broker.WaitOutput("replica loaded", 20*time.Second))
	time.Sleep(500 * time.Millisecond)
	unknown, known := unknownAndKnown(t, e, "127.0.99")
	t.Logf("after the load: unknown users %v, alice %v", unknown, known)

	// A refusal as an unknown user (a password check was due) that took far
	// less than alice's check tells the username apart.
	out := e.broker.Output()
	var cheap []string
	unchecked := 0
	for i, d := range took {
		re := regexp.MustCompile(`rule=unknown-user .*client_id="?hung-` + fmt.Sprint(i) + `\b`)
		if i%10 != 0 && re.MatchString(out) && d < known/2 {
			cheap = append(cheap, fmt.Sprintf("hung-%d: %v", i, d.Round(time.Microsecond)))
		}
		if i%10 == 0 && regexp.MustCompile(`rule=redis-unavailable .*client_id="?hung-`+fmt.Sprint(i)+`\b`).MatchString(out) {
			unchecked++
		}
	}
	t.Logf("alice refused unchecked (rule=redis-unavailable) %d times while the users loaded", unchecked)
	assert.Positive(t, unchecked, "the probes ran while the users loaded: alice's password was not checked then either")
	t.Logf("%d probes in 3 s after SIGCONT, %d of them cheap", len(took), len(cheap))
	if len(cheap) > 5 {
		cheap = cheap[:5]
	}
	assert.Empty(t, cheap, "unknown users refused as unknown-user in far less than alice's %v after Redis hung at start", known)
}
