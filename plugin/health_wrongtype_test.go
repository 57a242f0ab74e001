package plugin

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// A WRONGTYPE reply (a key of another type where the plugin expects its
// own) is no outage: Redis answered. Marked down, every use of that key took
// Redis down until the next probe, and under redis_unavailable deny every
// client was refused meanwhile. It is logged once; another error still
// marks Redis down.
func TestWrongTypeIsNoOutage(t *testing.T) {
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx := context.Background()
	require.NoError(t, rdb.Set(ctx, "guard:fail:ip:192.0.2.1", "x", 0).Err())
	wrong := rdb.ZAdd(ctx, "guard:fail:ip:192.0.2.1", redis.Z{Member: "m"}).Err()
	require.Error(t, wrong)
	var lines []string
	h := newHealth(healthDeps{probe: func(ctx context.Context) error { return rdb.Ping(ctx).Err() },
		log: func(_ Level, s string) { lines = append(lines, s) }, where: r.Addr, deny: true})
	require.True(t, h.up())
	for i := 0; i < 5; i++ {
		h.down(wrong)
		assert.True(t, h.up(), "WRONGTYPE is an answer")
	}
	assert.Equal(t, 1, countLines(lines, "a key of another type"), "%q", lines)
	assert.Zero(t, countLines(lines, "unreachable"))
	h.down(context.DeadlineExceeded)
	assert.False(t, h.up(), "no answer is an outage")
}

// WRONGTYPE replies about different keys are told apart (atk68: one gate
// for all, a second wrong key went untold for 10 minutes after the first
// was mended), each once per interval; past wrongTypeKeys keys the rest
// share one line. A wrapped reply is still a WRONGTYPE, not an outage.
func TestWrongTypeToldPerKey(t *testing.T) {
	var lines []string
	h := newHealth(healthDeps{probe: func(context.Context) error { return nil },
		log: func(_ Level, s string) { lines = append(lines, s) }, where: "r", deny: true})
	wrong := func(key string) error {
		return fmt.Errorf("store: lookup %q: %w", key, reply("WRONGTYPE Operation against a key holding the wrong kind of value"))
	}
	for i := 0; i < 3; i++ {
		h.down(wrong("guard:block:username:bob"))
		h.down(wrong("guard:conn:dev-1"))
		assert.True(t, h.up(), "WRONGTYPE, wrapped, is an answer")
	}
	assert.Equal(t, 1, countLines(lines, `"guard:block:username:bob"`), "%q", lines)
	assert.Equal(t, 1, countLines(lines, `"guard:conn:dev-1"`), "%q", lines)
	for i := 0; i < 100; i++ {
		h.down(wrong(fmt.Sprintf("guard:block:clientid:c%d", i)))
	}
	assert.Equal(t, wrongTypeKeys+1, countLines(lines, "a key of another type"), "bounded")

	// The keys' gates quiet for an interval make room for a new key's
	// (atk70: kept for ever, a new key was told only through the shared
	// gate, already spent).
	h.wrongMu.Lock()
	for _, g := range h.wrongBy {
		g.at.Store(-int64(2 * wrongTypeLogEvery)) // its last line two intervals ago
	}
	h.wrongMu.Unlock()
	h.down(wrong("guard:block:clientid:new"))
	assert.Equal(t, 1, countLines(lines, `"guard:block:clientid:new"`), "a new key told once the old ones are quiet")
}

// reply is a Redis error reply with the given text.
type reply string

func (r reply) Error() string { return string(r) }
func (reply) RedisError()     {}

// A Redis that answers with a refusal (a rotated password: WRONGPASS at the
// next connection; an ACL change: NOPERM) is down for the plugin, and the
// line says it refuses, with its answer (it said only "unreachable": an
// operator looked for a network fault). The word stays, for alerts.
func TestHealthSaysRefusedNotUnreachable(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("CONFIG", "SET", "requirepass", "new-secret")
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr, Password: "old-secret"})
	t.Cleanup(func() { _ = rdb.Close() })
	refused := rdb.Ping(context.Background()).Err()
	require.Error(t, refused)
	var lines []string
	h := newHealth(healthDeps{probe: func(ctx context.Context) error { return rdb.Ping(ctx).Err() },
		log: func(_ Level, s string) { lines = append(lines, s) }, where: r.Addr})
	assert.False(t, h.up())
	require.Len(t, lines, 1, "%q", lines)
	assert.Contains(t, lines[0], "redis at "+r.Addr+" unreachable: it refuses the plugin's commands (")
	assert.Contains(t, lines[0], "WRONGPASS", "Redis's answer is named")
	assert.NotContains(t, lines[0], "old-secret")
	h.upAgain()
	h.down(context.DeadlineExceeded)
	assert.Contains(t, lines[len(lines)-1], "redis at "+r.Addr+" unreachable (", "no answer")
}

// A publish Redis refuses (a user without PUBLISH rights) is logged once
// per publishRefusedLogEvery, naming the channel and the consequence: it
// was dropped without a word, and brokers without keyspace notifications
// missed this broker's automatic bans until their next reload (atk61).
func TestPublishRefusedIsLogged(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("ACL", "SETUSER", "nopub", "on", ">np-secret", "~*", "resetchannels", "+@all")
	var lines []string
	g := &Guard{cfg: config.Options{KeyPrefix: "guard:"}, bgStore: store.New(store.Options{Addrs: []string{r.Addr}, Username: "nopub", Password: "np-secret", Timeout: time.Second}, keys.Builder{Prefix: "guard:"}),
		log: func(_ Level, s string) { lines = append(lines, s) }}
	for i := 0; i < 3; i++ {
		g.publishChange(context.Background(), "guard:block:ip:192.0.2.1")
	}
	require.Len(t, lines, 1, "%q", lines)
	assert.Contains(t, lines[0], "redis refused to publish a change on guard:changes (")
	assert.Contains(t, lines[0], "NOPERM")
	assert.Contains(t, lines[0], "the channel (ACL: &guard:changes or allchannels)")

	// A user refused the command itself is told the command (atk63).
	r.CLI("ACL", "SETUSER", "nocmd", "on", ">nc-secret", "~*", "&*", "+@all", "-publish")
	lines = nil
	g = &Guard{cfg: config.Options{KeyPrefix: "guard:"}, bgStore: store.New(store.Options{Addrs: []string{r.Addr}, Username: "nocmd", Password: "nc-secret", Timeout: time.Second}, keys.Builder{Prefix: "guard:"}),
		log: func(_ Level, s string) { lines = append(lines, s) }}
	g.publishChange(context.Background(), "guard:block:ip:192.0.2.1")
	require.Len(t, lines, 1, "%q", lines)
	assert.Contains(t, lines[0], "the PUBLISH command (ACL: +publish)")
}
