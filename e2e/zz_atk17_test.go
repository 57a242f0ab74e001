package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"

	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"

	"github.com/stretchr/testify/assert"
)

// A refused over-long CONNECT's log line quotes the client ID cut at 200
// bytes at a character boundary, as any refusal's does: the same bytes
// whether the ID was over clientid_max_bytes (the plugin copies only what
// the line quotes) or refused for its password.
func TestAtk17TooLongCutAtACharacter(t *testing.T) {
	atk17Skip(t)
	e := newEnv(t, "auth_opt_clientid_max_bytes 256", "auth_opt_username_max_bytes 256", "log_type all")
	for _, n := range []int{197, 198, 199, 200} {
		head := strings.Repeat("a", n) + "\U0001F600" // a 4-byte rune across byte 200
		long := head + strings.Repeat("z", 300)
		short := head + strings.Repeat("y", 20)
		ip := "127.0.61." + string(rune('1'+n-197))
		assert.EqualValues(t, refused, e.connect(as(ip, long, "alice", "alice-pw")))
		l1 := e.logLine("event=refused", "ip="+ip+" ", "rule=clientid-too-long")
		assert.EqualValues(t, refused, e.connect(as(ip, short, "alice", "wrong")))
		l2 := e.logLine("event=refused", "ip="+ip+" ", "rule=bad-password")
		q := func(l string) string {
			i := strings.Index(l, "client_id=")
			j := strings.Index(l[i:], " client_id_bytes=")
			if i < 0 || j < 0 {
				return l
			}
			return l[i : i+j]
		}
		assert.Equal(t, q(l2), q(l1), "n=%d\n%s\n%s", n, l1, l2)
		// username over its bound too
		ulong := head + strings.Repeat("u", 300)
		assert.EqualValues(t, refused, e.connect(as(ip, "dev", ulong, "x")))
		t.Logf("%s", e.logLine("event=refused", "ip="+ip+" ", "rule=username-too-long"))
	}
}

// On an identity listener the plugin first sees a client at its first ACL
// check, "where it checks the lists as at a CONNECT": a client ID or a
// certificate name over the bounds is refused there too, its messages
// never delivered, and it is kicked.
func TestAtk17IdentityFirstSightTooLong(t *testing.T) {
	atk17Skip(t)
	ca := testenv.NewCA(t)
	e := &tlsEnv{env: newEnv(t, append(tlsListener(t, ca), "use_identity_as_username true",
		"auth_opt_clientid_max_bytes 16", "auth_opt_username_max_bytes 20", "log_type all")...), ca: ca}
	watcher := e.ca.Client(t, "atk17-watch")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w, code := e.dialCert(client{ip: "127.0.65.1", id: "atk17-w"}, watcher)
	require.EqualValues(t, accepted, code)
	require.NoError(t, w.Subscribe(ctx, "fleet/#", 0))

	for _, c := range []struct {
		name, ip, id, cn, rule string
	}{
		{"long client ID", "127.0.65.2", strings.Repeat("L", 17), "atk17-dev", "rule=clientid-too-long"},
		{"long certificate name", "127.0.65.3", "atk17-d2", "atk17-" + strings.Repeat("n", 20), "rule=username-too-long"},
	} {
		dev := e.ca.Client(t, c.cn)
		conn, code := e.dialCert(client{ip: c.ip, id: c.id}, dev)
		require.EqualValues(t, accepted, code, "the broker asks no plugin at CONNECT on this listener")
		_ = conn.Publish(ctx, "fleet/cmd", []byte("from "+c.name))
		short, cancelShort := context.WithTimeout(context.Background(), time.Second)
		topic, payload, err := w.Next(short)
		cancelShort()
		assert.Error(t, err, "%s: its message was delivered: %s %q", c.name, topic, payload)
		assert.True(t, conn.Closed(3*time.Second), "%s: not kicked", c.name)
		t.Logf("%s", e.logLine("event=refused", "ip="+c.ip+" ", c.rule))
	}
}

// "Refused before anything else is checked ... never counted": an allow
// entry on the address does not let an over-long client ID in, and
// wrong passwords over the bound count in no scope: not the address, the
// client ID, the username, nor the username's throttle.
func TestAtk17TooLongBeforeAllowNeverCounted(t *testing.T) {
	atk17Skip(t)
	e := newEnv(t, "auth_opt_clientid_max_bytes 16", "auth_opt_fail_limit 1", "auth_opt_username_fail_limit 1",
		"auth_opt_fail_scopes ip,clientid,username", "log_type all")
	e.redis.CLI("SET", "guard:allow:ip:127.0.66.1", "trusted")
	long := strings.Repeat("L", 17)
	eventually(t, 3*time.Second, func() bool {
		return e.connect(as("127.0.66.9", "x", "alice", "alice-pw")) == accepted
	}, "broker not ready")
	time.Sleep(300 * time.Millisecond) // the replica has the allow entry
	assert.EqualValues(t, refused, e.connect(as("127.0.66.1", long, "alice", "alice-pw")), "an allow entry let an over-long client ID in")
	e.logLine("event=refused", "ip=127.0.66.1 ", "rule=clientid-too-long")
	for i := 0; i < 6; i++ {
		require.EqualValues(t, refused, e.connect(as("127.0.66.2", long, "alice", "wrong")))
	}
	time.Sleep(400 * time.Millisecond)
	assert.Empty(t, e.redis.CLI("KEYS", "guard:block:*"), "over-long CONNECTs banned something")
	assert.Empty(t, e.redis.CLI("KEYS", "guard:throttle:*"), "over-long CONNECTs throttled a username")
	assert.Empty(t, e.redis.CLI("KEYS", "guard:fail:*"), "over-long CONNECTs counted")
	assert.EqualValues(t, accepted, e.connect(as("127.0.66.2", "ok", "alice", "alice-pw")))
	assert.False(t, hasLine(e.broker.Output(), "event=banned"), "a ban line")
	assert.False(t, hasLine(e.broker.Output(), "event=throttled"), "a throttle line")
}

// The identity listener's will promise with MQTT 5's Will Delay Interval:
// a client over clientid_max_bytes that leaves before any ACL check has
// its will refused, also when the broker sends it a second later (from
// the session it keeps, not at the disconnect).
func TestAtk17IdentityTooLongDelayedWill(t *testing.T) {
	atk17Skip(t)
	ca := testenv.NewCA(t)
	e := &tlsEnv{env: newEnv(t, append(tlsListener(t, ca), "use_identity_as_username true", "auth_opt_clientid_max_bytes 16", "log_type all")...), ca: ca}
	watcher := e.ca.Client(t, "atk17-watch")
	dev := e.ca.Client(t, "atk17-dev")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w, code := e.dialCert(client{ip: "127.0.67.1", id: "atk17-w"}, watcher)
	require.EqualValues(t, accepted, code)
	require.NoError(t, w.Subscribe(ctx, "fleet/#", 0))

	for _, c := range []struct{ ip, id string }{{"127.0.67.2", "short-ok"}, {"127.0.67.3", strings.Repeat("L", 17)}} {
		conn, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: e.broker.Addr, SourceIP: c.ip, ClientID: c.id, Version: 5,
			SessionExpiry: 30, Persistent: true, TLS: e.ca.TLSConfig(t, dev),
			Will: &mqttc.Will{Topic: "fleet/cmd", Payload: []byte("will of " + c.id), Delay: 1}})
		require.NoError(t, err)
		require.EqualValues(t, accepted, code)
		conn.Close()
		short, cancelShort := context.WithTimeout(context.Background(), 3*time.Second)
		topic, payload, err := w.Next(short)
		cancelShort()
		if c.id == "short-ok" {
			assert.NoError(t, err, "a client at the bound: its delayed will never came (the test's premise)")
			continue
		}
		assert.Error(t, err, "an over-long client ID's delayed will was delivered: %s %q", topic, payload)
	}
}

// The too-long refusals are counted under their own rule, as the README's
// Metrics section lists them.
func TestAtk17TooLongMetrics(t *testing.T) {
	atk17Skip(t)
	addr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	e := newEnv(t, "auth_opt_metrics_addr "+addr, "auth_opt_clientid_max_bytes 16", "auth_opt_username_max_bytes 16")
	long := strings.Repeat("L", 17)
	assert.EqualValues(t, refused, e.connect(as("127.0.68.1", long, "alice", "alice-pw")))
	assert.EqualValues(t, refused, e.connect(as("127.0.68.1", "dev", long, "x")))
	assert.EqualValues(t, refused, e.connect(as("127.0.68.1", long, "alice", "alice-pw")))
	fams := scrape(t, addr)
	assert.EqualValues(t, 2, value(fams, "mosquitto_guard_connects_total", "result", "refused", "rule", "clientid-too-long"))
	assert.EqualValues(t, 1, value(fams, "mosquitto_guard_connects_total", "result", "refused", "rule", "username-too-long"))
}

// findings_topic's messages name other principals, their IPs and client
// IDs: without an ACL, any client that subscribes reads them; the broker's
// acl_file limits who does (README, Client-ID conflicts).
func TestAtk17FindingsTopicReaders(t *testing.T) {
	acl := filepath.Join(t.TempDir(), "acl")
	require.NoError(t, os.WriteFile(acl, []byte("user alice\ntopic read "+atk17Topic+"\n\nuser bob\ntopic readwrite fleet/#\n"), 0o600))
	for _, withACL := range []bool{false, true} {
		extra := []string{"auth_opt_findings_topic " + atk17Topic}
		if withACL {
			extra = append(extra, "acl_file "+acl)
		}
		e := newEnv(t, extra...)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		subs := map[string]*mqttc.Conn{}
		for i, u := range []string{"alice", "bob"} {
			c, code := e.dial(as(fmt.Sprintf("127.0.69.%d", 10+i), "reader-"+u, u, users[u]))
			require.EqualValues(t, accepted, code)
			_ = c.Subscribe(ctx, atk17Topic, 0)
			subs[u] = c
		}
		require.EqualValues(t, accepted, e.connect(as("127.0.69.1", "shared-17", "alice", "alice-pw")))
		require.EqualValues(t, accepted, e.connect(as("127.0.69.2", "shared-17", "bob", "bob-pw")))
		for u, c := range subs {
			short, cancelShort := context.WithTimeout(ctx, 2*time.Second)
			_, payload, err := c.Next(short)
			cancelShort()
			t.Logf("acl_file %v: %s reads the finding: %v %.120s", withACL, u, err == nil, payload)
			if withACL && u == "bob" {
				assert.Error(t, err, "the acl_file did not keep bob from the findings")
			} else {
				assert.NoError(t, err, "%s did not get the finding (acl_file %v)", u, withACL)
			}
		}
		cancel()
	}
}

// Who can write a finding: any client may publish on an ordinary
// findings_topic, so its subscribers cannot tell a forged finding from the
// plugin's; on $SYS/... (mosquitto.conf.example's) clients cannot publish.
func TestAtk17FindingsTopicForged(t *testing.T) {
	for _, topic := range []string{"guard/findings", "$SYS/guard/findings"} {
		e := newEnv(t, "auth_opt_findings_topic "+topic)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ops, code := e.dial(as("127.0.70.1", "ops", "alice", "alice-pw"))
		require.EqualValues(t, accepted, code)
		require.NoError(t, ops.Subscribe(ctx, topic, 0))
		dev, code := e.dial(as("127.0.70.2", "dev", "bob", "bob-pw"))
		require.EqualValues(t, accepted, code)
		_ = dev.Publish(ctx, topic, []byte(`{"reason":"DUPLICATE_CLIENT_ID_ACROSS_CONNECTIONS","kind":"forged"}`))
		short, cancelShort := context.WithTimeout(ctx, 2*time.Second)
		_, payload, err := ops.Next(short)
		cancelShort()
		t.Logf("%s: a client's forged finding delivered: %v %s", topic, err == nil, payload)
		if strings.HasPrefix(topic, "$SYS/") {
			assert.Error(t, err, "a client published on %s", topic)
		} else {
			assert.NoError(t, err, "the premise: any client may publish on %s without an acl_file", topic)
		}
		cancel()
	}
}

// atk17Topic is the findings topic TestAtk17FindingsTopicReaders uses:
// mosquitto.conf.example's.
const atk17Topic = "$SYS/guard/findings"

// The will promise for the username bound: on use_identity_as_username the
// username is the certificate's CN; one over username_max_bytes that
// leaves before any ACL check has its will refused (immediate and MQTT 5
// delayed).
func TestAtk17IdentityLongCNWillRefused(t *testing.T) {
	atk17Skip(t)
	ca := testenv.NewCA(t)
	e := &tlsEnv{env: newEnv(t, append(tlsListener(t, ca), "use_identity_as_username true", "auth_opt_username_max_bytes 20", "log_type all")...), ca: ca}
	watcher := e.ca.Client(t, "atk17-watch")
	dev := e.ca.Client(t, "atk17-"+strings.Repeat("n", 20))
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	w, code := e.dialCert(client{ip: "127.0.71.1", id: "atk17-w"}, watcher)
	require.EqualValues(t, accepted, code)
	require.NoError(t, w.Subscribe(ctx, "fleet/#", 0))
	for i, delay := range []uint32{0, 1} {
		conn, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: e.broker.Addr, SourceIP: "127.0.71.2", ClientID: fmt.Sprintf("cn-%d", i), Version: 5,
			SessionExpiry: 30, Persistent: true, TLS: e.ca.TLSConfig(t, dev),
			Will: &mqttc.Will{Topic: "fleet/cmd", Payload: []byte("will of a long CN"), Delay: delay}})
		require.NoError(t, err)
		require.EqualValues(t, accepted, code)
		conn.Close()
		short, cancelShort := context.WithTimeout(ctx, 3*time.Second)
		topic, payload, err := w.Next(short)
		cancelShort()
		assert.Error(t, err, "will delay %d: an over-long CN's will was delivered: %s %q", delay, topic, payload)
	}
	e.logLine("event=refused", "rule=username-too-long", "seen=disconnect")
}

// atk17Skip gates the atk17 tests of promises that held (each 5 to 15 s;
// the findings_topic ones, which back the README's words, always run).
func atk17Skip(t *testing.T) {
	if os.Getenv("ATK17") == "" {
		t.Skip("ATK17=1: README-only attack (atk17), a promise that held")
	}
}
