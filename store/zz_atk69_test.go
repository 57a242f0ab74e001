package store

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// atk69Needs are the configurations whose probe ends with 26635c4's tail.
var atk69Needs = []SettingsNeeds{
	{Counts: true},
	{Counts: true, Known: true},
	{Tracking: true},
	{Counts: true, Known: true, Tracking: true},
}

// HOLDS: for a user with every right the probe's tail (DEL k, PEXPIRE k 1,
// SET k 1 PX 1 XX, PEXPIRE rk 1, SET rk 1 PX 1 XX) creates nothing: right
// after each check neither key exists (not even for 1 ms), no second round
// trip is needed, and Redis's ACL LOG stays empty.
func TestAtk69ProbeTailCreatesNothingForAFullUser(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("ACL", "SETUSER", "full", "on", ">f-pw", "~*", "&*", "+@all")
	s := New(Options{Addrs: []string{r.Addr}, Username: "full", Password: "f-pw", Timeout: time.Second}, keys.Builder{Prefix: "guard:"})
	defer s.Close()
	for _, n := range atk69Needs {
		for i := 0; i < 20; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			require.NoError(t, s.CheckSettingsNeeds(ctx, n), "%+v", n)
			cancel()
			assert.Equal(t, "0", strings.TrimSpace(r.CLI("EXISTS", "guard:settings-check", "rate:guard:settings-check")), "%+v", n)
		}
	}
	assert.Equal(t, "0", strings.TrimSpace(r.CLI("DBSIZE")))
	assert.Empty(t, strings.TrimSpace(r.CLI("ACL", "LOG")))
}

// DEFECT: 26635c4's tail asks PEXPIRE on redis_rate's key
// (rate:<prefix>settings-check), a command the plugin never runs there:
// redis_rate reads and writes its keys by GET and SET ... EX from its
// script, and resets them by DEL (ratelimit.Limiter.Reset); nothing
// PEXPIREs a rate: key. A Redis 7 user given exactly those commands on
// rate:guard:* by a selector, every right on guard:*, passed the start
// check before 26635c4 and runs the plugin; now the tail's PEXPIRE is
// refused, logged in Redis's ACL LOG at each start, and taken for a
// fault: the start is stopped (store/settings.go: probeCommands, against
// its own "commands this configuration needs anyway").
func TestAtk69ProbeTailAsksNoCommandThePluginDoesNotRun(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("ACL", "SETUSER", "sel", "on", ">s-pw", "~guard:*", "&*", "+@all",
		"(~rate:guard:* +get +set +del +eval +evalsha +time)")
	s := New(Options{Addrs: []string{r.Addr}, Username: "sel", Password: "s-pw", Timeout: time.Second}, keys.Builder{Prefix: "guard:"})
	defer s.Close()
	// What the plugin runs on a rate key: redis_rate's script (by EVALSHA,
	// EVAL when uncached) and its reset.
	ctx := context.Background()
	require.NoError(t, s.rdb.Eval(ctx, `redis.call('TIME'); redis.call('GET', KEYS[1]); return redis.call('SET', KEYS[1], '1', 'EX', 1)`, []string{"rate:guard:x"}).Err())
	require.NoError(t, s.rdb.Del(ctx, "rate:guard:x").Err())
	r.CLI("ACL", "LOG", "RESET")

	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	assert.NoError(t, s.CheckSettingsNeeds(cctx, SettingsNeeds{Counts: true, Known: true, Tracking: true}))
	assert.Empty(t, strings.TrimSpace(r.CLI("ACL", "LOG")), "a user that runs the plugin logs no refusal at start")
}

// DEFECT: README's start-check row says "the pipeline runs to its end and
// ends with the keys' `DEL`", which 26635c4 made untrue (it now ends with
// PEXPIRE k 1 and SET ... PX 1 XX), and the commit's "Left: a user refused
// DEL and PEXPIRE under conflict tracking alone keeps the stream when Redis
// answers late (README)" is not in the README.
func TestAtk69ReadmeProbeRowMatchesTheTail(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	require.NoError(t, err)
	readme := string(b)
	i := strings.Index(readme, "The probe leaves nothing behind")
	require.GreaterOrEqual(t, i, 0)
	row := readme[i:]
	row = row[:strings.Index(row, "\n")]
	for _, n := range atk69Needs {
		cmds := probeCommands(n, "k", "rk")
		if last := cmds[len(cmds)-1][0]; last != "del" {
			assert.NotContains(t, row, "ends with the keys' `DEL`", "%+v: the pipeline ends with %v", n, cmds[len(cmds)-1])
		}
	}
	assert.Regexp(t, "(?i)late", row, "the residue left when Redis answers after the bound is told")
}
