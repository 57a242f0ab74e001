package e2e

import (
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// notKeyCommands are commands a broker runs that are no key command of the
// plugin's: the connection's (HELLO, AUTH, SELECT, CLIENT), the health
// probe's PING, the replica's INFO, CONFIG, its subscriptions, the
// publishes (channel rights, logged when refused), scripts themselves
// (their commands are counted on their own), and the test's own.
var notKeyCommands = map[string]bool{
	"hello": true, "auth": true, "select": true, "client": true, "ping": true, "info": true, "config": true,
	"psubscribe": true, "subscribe": true, "unsubscribe": true, "punsubscribe": true, "publish": true,
	"evalsha": true, "eval": true, "script": true, "command": true, "cluster": true, "readonly": true,
	// the test's own waits (redis-cli), which the plugin never runs
	"exists": true, "hlen": true, "xlen": true, "xrange": true,
}

// The start check asks every key command a broker runs (atk63, atk64: a
// probe of guessed commands missed PEXPIRE, ZRANGE, SSCAN, SCAN, and asked
// others no configuration runs). A broker with failures counted, known
// sources and conflict tracking on is driven through successes,
// reconnects, a client-ID conflict (a finding), failures up to a ban and
// its stop, and every command Redis counted meanwhile (INFO commandstats,
// those run from scripts included) is one the probe asks, or no key
// command. A command the plugin starts to run that the probe does not
// ask fails this test.
func TestStartCheckAsksEveryCommandThePluginRuns(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 2", "auth_opt_clientid_conflict flag", "auth_opt_username_fail_limit 5")
	e.redis.CLI("CONFIG", "RESETSTAT") // the start check's own commands out
	require.EqualValues(t, accepted, e.connect(as("127.0.30.1", "dev-1", "alice", "alice-pw")))
	require.EqualValues(t, accepted, e.connect(as("127.0.30.1", "dev-1", "alice", "alice-pw")))
	e.waitLive("dev-1", 0)
	eventually(t, 3*time.Second, func() bool { return e.redis.CLI("HLEN", "guard:seen:dev-1") == "1" }, "alice not remembered")
	require.EqualValues(t, accepted, e.connect(as("127.0.30.2", "dev-1", "bob", "bob-pw")))
	e.waitFindings(1)
	for i := 0; i < 4; i++ {
		e.connect(as("127.0.30.9", "guess-"+strconv.Itoa(i), "alice", "wrong"))
	}
	eventually(t, 3*time.Second, func() bool { return e.redis.CLI("EXISTS", "guard:block:ip:127.0.30.9") == "1" }, "no ban")
	// A throttled username's known sources are read.
	for i := 0; i < 7; i++ {
		e.connect(as("127.0.31."+strconv.Itoa(i+1), "u-"+strconv.Itoa(i), "bob", "wrong"))
	}
	require.EqualValues(t, accepted, e.connect(as("127.0.30.2", "dev-2", "bob", "bob-pw")))
	time.Sleep(time.Second) // the goroutines' writes
	e.broker.Stop()         // its connections' records ended

	probed := store.ProbedCommands(store.SettingsNeeds{Counts: true, Known: true, Tracking: true})
	var ran, missing []string
	for _, line := range strings.Split(e.redis.CLI("INFO", "commandstats"), "\n") {
		name, _, ok := strings.Cut(strings.TrimPrefix(strings.TrimSpace(line), "cmdstat_"), ":")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		name, _, _ = strings.Cut(name, "|") // config|set
		ran = append(ran, name)
		if !probed[name] && !notKeyCommands[name] {
			missing = append(missing, name)
		}
	}
	sort.Strings(ran)
	t.Logf("commands run: %v", ran)
	for _, want := range []string{"hset", "xadd", "incr", "zadd", "set"} {
		assert.Contains(t, ran, want, "control: the scenario ran %s", want)
	}
	assert.Empty(t, missing, "commands the broker ran that the start check does not ask")
}
