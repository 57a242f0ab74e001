package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Client IDs and usernames are chosen by the client (up to 65 535 bytes
// each), and conflict tracking keeps what it learns for conflict_window
// (31 days). What it stores per connection must not grow with them.
const (
	maxKeyLen  = 300  // tracking keys: prefix + kind + at most 256 bytes
	maxPerConn = 4096 // Redis memory per tracked connection, bytes
	// Fewer connections measure used_memory poorly: its fixed steps (hash
	// tables resized, buffers freed) are tens of KB.
	trackedSamples = 200
)

// tracked is the form a client ID or principal takes in tracking keys and
// values (keys.Tracking), computed here independently of the plugin.
func tracked(s string) string {
	if len(s) <= 256 && !strings.HasPrefix(s, "sha256:") {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// boundsEnv starts a broker with the redis backend, so that users with
// names of any length can be added with one SET.
func boundsEnv(t *testing.T, extra ...string) (*env, *redis.Client) {
	e := newEnv(t, append([]string{"auth_opt_backend redis"}, extra...)...)
	rdb := redis.NewClient(&redis.Options{Addr: e.redis.Addr})
	t.Cleanup(func() { rdb.Close() })
	return e, rdb
}

// addRedisUser stores user with password "pw", hashed by mosquitto_passwd
// (its hashes do not depend on the username).
func (e *env) addRedisUser(rdb *redis.Client, user string) {
	e.t.Helper()
	e.addUser("hash-donor", "pw")
	raw, err := os.ReadFile(e.passwd)
	require.NoError(e.t, err)
	var hash string
	for _, l := range strings.Split(string(raw), "\n") {
		if h, ok := strings.CutPrefix(l, "hash-donor:"); ok {
			hash = h
		}
	}
	require.NotEmpty(e.t, hash)
	require.NoError(e.t, rdb.Set(context.Background(), "guard:user:"+user, hash, 0).Err())
}

// memory returns the Redis memory that is not client buffers: used_memory
// minus mem_clients_normal (the plugin's own connections' query buffers
// come and go with its traffic, not with what is stored).
func memory(t *testing.T, rdb *redis.Client) int64 {
	t.Helper()
	info, err := rdb.Info(context.Background(), "memory").Result()
	require.NoError(t, err)
	field := func(name string) int64 {
		for _, l := range strings.Split(info, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(l), name+":"); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				require.NoError(t, err)
				return n
			}
		}
		t.Fatalf("no %s in INFO memory", name)
		return 0
	}
	return field("used_memory") - field("mem_clients_normal")
}

// scanKeys returns every key matching pattern.
func scanKeys(t *testing.T, rdb *redis.Client, pattern string) []string {
	t.Helper()
	var out []string
	iter := rdb.Scan(context.Background(), 0, pattern, 1000).Iterator()
	for iter.Next(context.Background()) {
		out = append(out, iter.Val())
	}
	require.NoError(t, iter.Err())
	return out
}

// warmUp makes the one-time structures (broker lease, scripts, the findings
// stream, a fold) exist before memory is measured.
func (e *env) warmUp(rdb *redis.Client) {
	e.t.Helper()
	e.addRedisUser(rdb, "alice")
	e.addRedisUser(rdb, "bob")
	e.expect(as("127.0.40.1", "warm-1", "alice", "pw"), accepted)
	eventually(e.t, 5*time.Second, func() bool { return e.redis.CLI("HLEN", "guard:seen:warm-1") == "1" }, "warm-up not tracked")
	require.EqualValues(e.t, accepted, e.connect(as("127.0.40.2", "warm-1", "bob", "pw")))
	e.waitFindings(1)
	time.Sleep(200 * time.Millisecond)
}

// growth is what n tracked connections added to Redis, per connection.
type growth struct {
	memory   float64 // used_memory - mem_clients_normal: everything the plugin keeps
	tracking int64   // MEMORY USAGE of the conn, seen and brokerconns keys
}

// trackConns connects n clients and keeps them connected; ids and users
// give each one's client ID and username. It returns the growth of Redis
// memory per connection once all are tracked.
func (e *env) trackConns(rdb *redis.Client, n int, id func(int) string, user func(int) string) growth {
	e.t.Helper()
	ctx := context.Background()
	seenBefore := len(scanKeys(e.t, rdb, "guard:seen:*"))
	usageBefore := usageByKind(e.t, rdb)
	before := memory(e.t, rdb)
	for i := 0; i < n; i++ {
		_, code := e.dial(as(fmt.Sprintf("127.0.%d.%d", 41+i/250, 1+i%250), id(i), user(i), "pw"))
		require.EqualValues(e.t, accepted, code, "client %d", i)
	}
	eventually(e.t, 10*time.Second, func() bool { return len(scanKeys(e.t, rdb, "guard:seen:*")) == seenBefore+n },
		"want %d more seen keys", n)
	eventually(e.t, 10*time.Second, func() bool {
		total := int64(0)
		for _, k := range scanKeys(e.t, rdb, "guard:brokerconns:*") {
			total += rdb.SCard(ctx, k).Val()
		}
		return total == int64(n)
	}, "want %d live client IDs", n)
	time.Sleep(300 * time.Millisecond)
	grown := float64(memory(e.t, rdb)-before) / float64(n)

	// Where it went, by MEMORY USAGE of the keys of each kind.
	var parts []string
	var tracking int64
	for kind, after := range usageByKind(e.t, rdb) {
		d := (after - usageBefore[kind]) / int64(n)
		if d != 0 {
			parts = append(parts, fmt.Sprintf("%s %+d", kind, d))
		}
		if kind == "conn" || kind == "seen" || kind == "brokerconns" {
			tracking += d
		}
	}
	sort.Strings(parts)
	e.t.Logf("%d connections: used_memory-mem_clients_normal grew %.0f bytes per connection; MEMORY USAGE per connection by kind: %s",
		n, grown, strings.Join(parts, ", "))
	return growth{memory: grown, tracking: tracking}
}

// usageByKind sums MEMORY USAGE (all samples) over the keys of each kind
// (guard:<kind>:...).
func usageByKind(t *testing.T, rdb *redis.Client) map[string]int64 {
	t.Helper()
	ctx := context.Background()
	out := map[string]int64{}
	for _, k := range scanKeys(t, rdb, "*") {
		kind, _, _ := strings.Cut(strings.TrimPrefix(k, "guard:"), ":")
		out[kind] += rdb.MemoryUsage(ctx, k, 0).Val()
	}
	return out
}

// assertBounded checks every tracking key, field, member and value, and
// every findings entry, against the bounds.
func assertBounded(t *testing.T, rdb *redis.Client) {
	t.Helper()
	ctx := context.Background()
	keys := scanKeys(t, rdb, "*")
	require.NotEmpty(t, keys)
	for _, k := range keys {
		if strings.HasPrefix(k, "guard:user:") || strings.HasPrefix(k, "guard:known:") {
			continue // named by a registered username, which the operator chose (this test)
		}
		require.LessOrEqual(t, len(k), maxKeyLen, "key %.80q... is %d bytes", k, len(k))
		switch typ := rdb.Type(ctx, k).Val(); typ {
		case "hash":
			for f, v := range rdb.HGetAll(ctx, k).Val() {
				assert.LessOrEqual(t, len(f), maxKeyLen, "field of %s: %.80q...", k, f)
				assert.LessOrEqual(t, len(v), 2048, "value of %s: %.80q...", k, v)
			}
		case "set":
			for _, m := range rdb.SMembers(ctx, k).Val() {
				assert.LessOrEqual(t, len(m), maxKeyLen, "member of %s: %.80q...", k, m)
			}
		case "zset":
			for _, m := range rdb.ZRange(ctx, k, 0, -1).Val() {
				assert.LessOrEqual(t, len(m), maxKeyLen, "member of %.80q: %.80q...", k, m)
			}
		case "stream":
			for _, m := range rdb.XRange(ctx, k, "-", "+").Val() {
				size := 0
				for f, v := range m.Values {
					size += len(f) + len(fmt.Sprint(v))
				}
				assert.LessOrEqual(t, size, 4096, "findings entry %s is %d bytes", m.ID, size)
			}
		}
	}
}

// TestTrackingBoundedLongClientIDs: 65 535-byte client IDs and usernames
// leave keys of at most ~300 bytes and a few hundred bytes per connection;
// conflicts on long client IDs are still found, and logged with the real
// (cut) client ID.
func TestTrackingBoundedLongClientIDs(t *testing.T) {
	e, rdb := boundsEnv(t, "auth_opt_takeover_limit 1")
	e.warmUp(rdb)
	longUser := strings.Repeat("U", 65535)
	e.addRedisUser(rdb, longUser)
	e.expect(as("127.0.40.3", "warm-2", longUser, "pw"), accepted)
	eventually(t, 5*time.Second, func() bool { return e.redis.CLI("HLEN", "guard:seen:warm-2") == "1" }, "long user not tracked")

	longID := func(i int) string { return fmt.Sprintf("%05d", i) + strings.Repeat("C", 65530) }
	g := e.trackConns(rdb, trackedSamples, longID, func(int) string { return longUser })
	assert.Less(t, g.memory, float64(maxPerConn), "Redis memory per connection")
	assert.Less(t, g.tracking, int64(maxPerConn/2), "tracking keys per connection")

	// The same client ID maps to the same tracking keys: a reconnect of the
	// same principal is a takeover, counted under the bounded key.
	id0 := longID(0)
	require.EqualValues(t, accepted, e.connect(as("127.0.42.1", id0, longUser, "pw")))
	eventually(t, 5*time.Second, func() bool { return e.redis.CLI("EXISTS", "guard:takeoverconns:"+tracked(id0)) == "1" },
		"takeover of the long client ID not counted under its hashed key")
	e.logLine("event=finding reason=DUPLICATE_CLIENT_ID_ACROSS_CONNECTIONS", "kind=duplicate-connection", `client_id="00000CCCC`, "client_id_bytes=65535")

	// Cross-principal on a 1000-byte client ID is still found.
	id1000 := strings.Repeat("K", 1000)
	require.EqualValues(t, accepted, e.connect(as("127.0.42.2", id1000, "alice", "pw")))
	eventually(t, 5*time.Second, func() bool { return e.redis.CLI("HLEN", "guard:seen:"+tracked(id1000)) == "1" }, "alice's use not tracked")
	require.EqualValues(t, accepted, e.connect(as("127.0.42.3", id1000, "bob", "pw")))
	var found map[string]string
	eventually(t, 5*time.Second, func() bool {
		for _, f := range e.findings() {
			if f["clientid"] == tracked(id1000) && f["kind"] == "cross-principal" {
				found = f
				return true
			}
		}
		return false
	}, "no cross-principal finding for the 1000-byte client ID")
	assert.JSONEq(t, `["alice","bob"]`, found["principals"])
	line := e.logLine("event=finding reason=DUPLICATE_CLIENT_ID_ACROSS_CONNECTIONS", "kind=cross-principal", `client_id="KKKK`, "client_id_bytes=1000")
	assert.Less(t, len(line), 2000)

	// Cross-principal between a long username and alice: the principal is
	// bounded in the finding, and the finding is found.
	require.EqualValues(t, accepted, e.connect(as("127.0.42.4", id0, "alice", "pw")))
	eventually(t, 5*time.Second, func() bool {
		for _, f := range e.findings() {
			if f["clientid"] == tracked(id0) && f["kind"] == "cross-principal" {
				found = f
				return true
			}
		}
		return false
	}, "no cross-principal finding for the long client ID and long username")
	assert.JSONEq(t, fmt.Sprintf(`["alice",%q]`, tracked(longUser)), found["principals"])

	assertBounded(t, rdb)
}

// TestTrackingBoundedWorstCase: the largest values stored verbatim are 256
// bytes; a username of 256 characters that JSON escapes to two bytes each
// (Mosquitto refuses control characters, which would take six) is the most
// a connection can make tracking store.
func TestTrackingBoundedWorstCase(t *testing.T) {
	e, rdb := boundsEnv(t)
	e.warmUp(rdb)
	user := strings.Repeat(`"`, 256)
	e.addRedisUser(rdb, user)
	e.expect(as("127.0.40.3", "warm-2", user, "pw"), accepted)
	eventually(t, 5*time.Second, func() bool { return e.redis.CLI("HLEN", "guard:seen:warm-2") == "1" }, "user not tracked")

	id := func(i int) string { return fmt.Sprintf("%05d", i) + strings.Repeat("\\", 251) }
	g := e.trackConns(rdb, trackedSamples, id, func(int) string { return user })
	assert.Less(t, g.tracking, int64(maxPerConn), "tracking keys per connection")
	// The rest of what Redis keeps per connection (the username's known
	// sources, about 500 bytes for a 256-byte client ID) is not tracking's.
	assert.Less(t, g.memory, float64(maxPerConn+2048), "Redis memory per connection")
	for i := 0; i < 3; i++ {
		assert.Equal(t, "1", e.redis.CLI("EXISTS", "guard:seen:"+id(i)), "client IDs of 256 bytes are kept as they are")
	}
	assertBounded(t, rdb)
}
