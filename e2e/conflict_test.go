package e2e

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// findings returns the findings stream, oldest first, as field maps.
func (e *env) findings() []map[string]string {
	e.t.Helper()
	out := e.redis.CLI("--no-raw", "XLEN", "guard:findings")
	n, _ := strconv.Atoi(strings.TrimPrefix(out, "(integer) "))
	var res []map[string]string
	if n == 0 {
		return nil
	}
	raw := e.redis.CLI("XRANGE", "guard:findings", "-", "+")
	// redis-cli raw output: id, then field/value lines per entry.
	lines := strings.Split(raw, "\n")
	var cur map[string]string
	for i := 0; i < len(lines); {
		l := lines[i]
		if strings.Contains(l, "-") && !strings.Contains(l, " ") && i+1 < len(lines) && lines[i+1] == "reason" {
			cur = map[string]string{"id": l}
			res = append(res, cur)
			i++
			continue
		}
		if cur != nil && i+1 < len(lines) {
			cur[l] = lines[i+1]
			i += 2
			continue
		}
		i++
	}
	return res
}

func (e *env) waitFindings(n int) []map[string]string {
	e.t.Helper()
	var f []map[string]string
	eventually(e.t, 5*time.Second, func() bool { f = e.findings(); return len(f) >= n }, "want %d findings", n)
	return f
}

// settle waits for the conflict worker to record the connections of clientID.
func (e *env) waitLive(clientID string, n int) {
	e.t.Helper()
	eventually(e.t, 5*time.Second, func() bool { return e.redis.CLI("HLEN", "guard:conn:"+clientID) == strconv.Itoa(n) },
		"want %d live entries for %q", n, clientID)
}

func TestConflictCrossPrincipal(t *testing.T) {
	e := newEnv(t)
	require.EqualValues(t, accepted, e.connect(as("127.0.20.1", "shared-1", "alice", "alice-pw")))
	e.waitLive("shared-1", 0)
	eventually(t, 3*time.Second, func() bool { return e.redis.CLI("HLEN", "guard:seen:shared-1") == "1" }, "alice not remembered")
	require.EqualValues(t, accepted, e.connect(as("127.0.20.2", "shared-1", "bob", "bob-pw")), "flag mode only records")
	f := e.waitFindings(1)[0]
	assert.Equal(t, "DUPLICATE_CLIENT_ID_ACROSS_CONNECTIONS", f["reason"])
	assert.Equal(t, "HIGH", f["severity"])
	assert.Equal(t, "cross-principal", f["kind"])
	assert.Equal(t, "shared-1", f["clientid"])
	assert.JSONEq(t, `["alice","bob"]`, f["principals"])
	assert.JSONEq(t, `["127.0.20.2","127.0.20.1"]`, f["ips"], "newest first")
	assert.NotEqual(t, "0", f["disconnected_ms"], "alice's disconnect time")
	e.logLine("event=finding reason=DUPLICATE_CLIENT_ID_ACROSS_CONNECTIONS", "kind=cross-principal", `client_id="shared-1"`, `principals="[\"alice\",\"bob\"]"`)

	// The same principal reconnecting is a normal reconnect.
	require.EqualValues(t, accepted, e.connect(as("127.0.20.3", "own-1", "alice", "alice-pw")))
	require.EqualValues(t, accepted, e.connect(as("127.0.20.3", "own-1", "alice", "alice-pw")))
	time.Sleep(300 * time.Millisecond)
	assert.Len(t, e.findings(), 1)
}

func TestConflictTakeoversFolded(t *testing.T) {
	e := newEnv(t, "auth_opt_takeover_limit 3", "auth_opt_takeover_window 1m")
	var last *mqttc.Conn
	for i := 0; i < 5; i++ {
		c, code := e.dial(as("127.0.21."+strconv.Itoa(i+1), "twin-1", "alice", "alice-pw"))
		require.EqualValues(t, accepted, code)
		if last != nil {
			assert.True(t, last.Closed(3*time.Second), "takeover closes the old connection")
		}
		last = c
		time.Sleep(50 * time.Millisecond) // let the worker see each connection in order
	}
	eventually(t, 5*time.Second, func() bool {
		f := e.findings()
		return len(f) == 1 && e.redis.CLI("HGET", "guard:fold:"+f[0]["fold"], "count") == "2"
	}, "want one folded finding counting takeovers 3 and 4")
	f := e.findings()[0]
	assert.Equal(t, "duplicate-connection", f["kind"])
	assert.JSONEq(t, `["alice"]`, f["principals"])
	assert.NotEqual(t, "0", f["disconnected_ms"])
	// The line reaches the broker's log through its thread, after the
	// finding is in Redis: waited for (a loaded machine read the output
	// before it came, and counted none).
	e.logLine("event=finding reason=DUPLICATE_CLIENT_ID_ACROSS_CONNECTIONS")
	assert.Equal(t, 1, strings.Count(e.broker.Output(), "event=finding reason=DUPLICATE_CLIENT_ID_ACROSS_CONNECTIONS"), "folded repeats are not logged again")
}

func TestConflictDeny(t *testing.T) {
	e := newEnv(t, "auth_opt_clientid_conflict deny")
	holder, code := e.dial(as("127.0.22.1", "door-1", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	assert.EqualValues(t, refused, e.connect(as("127.0.22.2", "door-1", "bob", "bob-pw")))
	e.logLine("refused", "ip=127.0.22.2", "rule=clientid-conflict", `holder_principal="alice"`, "holder_ip=127.0.22.1")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	require.NoError(t, holder.Ping(ctx), "the holder stays connected")
	f := e.waitFindings(1)[0]
	assert.Equal(t, "refused", f["action"])
	assert.JSONEq(t, `["alice","bob"]`, f["principals"])
	// The same principal reconnecting is let in (and takes over).
	assert.EqualValues(t, accepted, e.connect(as("127.0.22.3", "door-1", "alice", "alice-pw")))
	assert.True(t, holder.Closed(3*time.Second))
	// Once alice is gone, bob may use the ID (flagged, not refused).
	e.waitLive("door-1", 0)
	assert.EqualValues(t, accepted, e.connect(as("127.0.22.2", "door-1", "bob", "bob-pw")))
}

func TestConflictAnonymous(t *testing.T) {
	e := newEnv(t, "allow_anonymous true")
	// The plugin defers anonymous clients to allow_anonymous, so it learns
	// they were let in only when they are still connected after 500 ms.
	anon, code := e.dial(client{ip: "127.0.23.1", id: "anon-1"})
	require.EqualValues(t, accepted, code)
	eventually(t, 3*time.Second, func() bool { return e.redis.CLI("HLEN", "guard:seen:anon-1") == "1" }, "anonymous use not recorded")
	anon.Disconnect()
	require.EqualValues(t, accepted, e.connect(as("127.0.23.2", "anon-1", "alice", "alice-pw")))
	f := e.waitFindings(1)[0]
	assert.JSONEq(t, `["<anonymous>","alice"]`, f["principals"])
}

func TestConflictRefusedDeferredNotRecorded(t *testing.T) {
	e := newEnv(t) // allow_anonymous false: Mosquitto refuses after the plugin defers
	require.EqualValues(t, refused, e.connect(client{ip: "127.0.24.1", id: "ghost-1"}))
	time.Sleep(900 * time.Millisecond)
	assert.Equal(t, "0", e.redis.CLI("EXISTS", "guard:seen:ghost-1"), "a refused client never used the ID")
}

func TestConflictFindingsTopic(t *testing.T) {
	e := newEnv(t, "auth_opt_findings_topic guard/findings")
	sub, code := e.dial(as("127.0.25.9", "watcher", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, sub.Subscribe(ctx, "guard/findings", 0))
	require.EqualValues(t, accepted, e.connect(as("127.0.25.1", "pub-1", "alice", "alice-pw")))
	eventually(t, 3*time.Second, func() bool { return e.redis.CLI("HLEN", "guard:seen:pub-1") == "1" }, "not recorded")
	require.EqualValues(t, accepted, e.connect(as("127.0.25.2", "pub-1", "bob", "bob-pw")))
	topic, payload, err := sub.Next(ctx)
	require.NoError(t, err)
	assert.Equal(t, "guard/findings", topic)
	var f map[string]any
	require.NoError(t, json.Unmarshal(payload, &f))
	assert.Equal(t, "DUPLICATE_CLIENT_ID_ACROSS_CONNECTIONS", f["reason"])
	assert.Equal(t, "pub-1", f["clientid"])
	assert.Equal(t, []any{"alice", "bob"}, f["principals"])
}

// twoBrokers starts two brokers sharing one Redis.
func twoBrokers(t *testing.T, extra ...string) (a, b *env) {
	a = newEnv(t, append([]string{"auth_opt_broker_name broker-a"}, extra...)...)
	b = &env{t: t, dir: a.dir, redis: a.redis, passwd: a.passwd}
	b.broker = startBroker(t, b.conf(append([]string{"auth_opt_broker_name broker-b"}, extra...)...))
	return a, b
}

func TestConflictAcrossBrokers(t *testing.T) {
	a, b := twoBrokers(t)
	_, code := a.dial(as("127.0.26.1", "multi-1", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	a.waitLive("multi-1", 1)
	_, code = b.dial(as("127.0.26.2", "multi-1", "bob", "bob-pw"))
	require.EqualValues(t, accepted, code, "flag mode: both stay connected, Mosquitto cannot see across brokers")
	f := a.waitFindings(1)[0]
	assert.JSONEq(t, `["alice","bob"]`, f["principals"])
	assert.JSONEq(t, `["broker-b","broker-a"]`, f["brokers"])
	assert.Equal(t, "0", f["disconnected_ms"], "nobody was displaced")
}

func TestConflictDenyAcrossBrokersAndLease(t *testing.T) {
	a, b := twoBrokers(t, "auth_opt_clientid_conflict deny", "auth_opt_broker_lease 2s")
	_, code := a.dial(as("127.0.27.1", "multi-2", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	a.waitLive("multi-2", 1)
	assert.EqualValues(t, refused, b.connect(as("127.0.27.2", "multi-2", "bob", "bob-pw")), "live on broker-a under alice")
	b.logLine("rule=clientid-conflict", `holder_broker="broker-a"`)

	// broker-a dies without cleaning up: its entry is a ghost until its lease runs out.
	a.broker.Kill()
	a.waitLive("multi-2", 0)
	b.logLine("cleared the live connections of broker instance")
	assert.EqualValues(t, accepted, b.connect(as("127.0.27.2", "multi-2", "bob", "bob-pw")), "no ghost after the lease")
}

func TestConflictOff(t *testing.T) {
	e := newEnv(t, "auth_opt_clientid_conflict off")
	require.EqualValues(t, accepted, e.connect(as("127.0.28.1", "x-1", "alice", "alice-pw")))
	require.EqualValues(t, accepted, e.connect(as("127.0.28.2", "x-1", "bob", "bob-pw")))
	time.Sleep(300 * time.Millisecond)
	assert.Empty(t, e.findings())
	assert.Equal(t, "0", e.redis.CLI("EXISTS", "guard:seen:x-1"))
}

var _ = testenv.FreePort
