package e2e

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// atk19 (4015c3d: cgo keeps a CONNECT's address parsed with its interned
// strings): the same client ID, username and password from one source
// address after another, on a real broker, is judged, logged and recorded
// each time with the address it came from, never the one the slot kept
// for the strings before: an ip ban, a cidr ban, an ip allow that lifts a
// client ID ban, the log line's ip=, the known sources, and the walk after
// a SIGHUP re-checking a held client whose strings came last from another
// address.
func TestAtk19SameStringsAnotherAddress(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 1000")
	dev := func(ip string) client { return as(ip, "atk19-dev", "alice", "alice-pw") }

	require.EqualValues(t, accepted, e.connect(dev("127.0.19.1")))
	e.redis.CLI("SET", "guard:block:ip:127.0.19.2", "atk19")
	// The probes that wait for a ban to reach the replica connect as bob:
	// a probe let in before the ban arrives must not make the address one
	// of alice's known sources (this raced in CI on 5f0ba90).
	probe := func(ip string) client { return as(ip, "atk19-probe", "bob", "bob-pw") }
	eventually(t, 5*time.Second, func() bool { return e.connect(probe("127.0.19.2")) == refused }, "the ip ban")
	for i := 0; i < 3; i++ {
		assert.EqualValues(t, accepted, e.connect(dev("127.0.19.1")), "round %d: the same strings from an address not banned", i)
		assert.EqualValues(t, refused, e.connect(dev("127.0.19.2")), "round %d: the same strings from the banned address", i)
	}
	e.logLine("refused", "ip=127.0.19.2", `rule="guard:block:ip:127.0.19.2"`, `client_id="atk19-dev"`)
	assert.False(t, hasLine(e.broker.Output(), "refused", "ip=127.0.19.1"), "the address not banned was refused:\n%s", e.broker.Output())

	// A cidr ban.
	e.redis.CLI("SET", "guard:block:cidr:127.0.20.0/24", "atk19")
	eventually(t, 5*time.Second, func() bool { return e.connect(probe("127.0.20.7")) == refused }, "the cidr ban")
	e.logLine("refused", "ip=127.0.20.7", `rule="guard:block:cidr:127.0.20.0/24"`)
	for i := 0; i < 3; i++ {
		assert.EqualValues(t, accepted, e.connect(dev("127.0.19.1")), "round %d: outside the range", i)
		assert.EqualValues(t, refused, e.connect(dev("127.0.20.7")), "round %d: inside the range", i)
	}

	// An ip allow lifts a client ID ban for its address only.
	e.redis.CLI("SET", "guard:allow:ip:127.0.19.3", "atk19")
	e.redis.CLI("SET", "guard:block:clientid:atk19-dev", "atk19")
	eventually(t, 5*time.Second, func() bool { return e.connect(dev("127.0.19.1")) == refused }, "the client ID ban")
	for i := 0; i < 3; i++ {
		assert.EqualValues(t, accepted, e.connect(dev("127.0.19.3")), "round %d: the allowed address", i)
		assert.EqualValues(t, refused, e.connect(dev("127.0.19.1")), "round %d: another address", i)
	}
	e.logLine("refused", "ip=127.0.19.1", `rule="guard:block:clientid:atk19-dev"`)
	assert.False(t, hasLine(e.broker.Output(), "refused", "ip=127.0.19.3"), "the allowed address was refused:\n%s", e.broker.Output())

	// The known sources of alice: the addresses let in, never the banned.
	eventually(t, 5*time.Second, func() bool {
		k := e.redis.CLI("ZRANGE", "guard:known:alice", "0", "-1")
		return strings.Contains(k, "127.0.19.1") && strings.Contains(k, "127.0.19.3")
	}, "known sources")
	known := e.redis.CLI("ZRANGE", "guard:known:alice", "0", "-1")
	assert.NotContains(t, known, "127.0.19.2")
	assert.NotContains(t, known, "127.0.20.7")

	// The walk after a SIGHUP: a held client from the allowed address,
	// whose strings then come from a banned one (refused: the slot holds
	// them with that address), is re-checked with its own address and
	// stays.
	e.redis.CLI("SET", "guard:block:clientid:atk19-held", "atk19")
	held, code := e.dial(as("127.0.19.3", "atk19-held", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	require.EqualValues(t, refused, e.connect(as("127.0.19.2", "atk19-held", "alice", "alice-pw")))
	require.EqualValues(t, refused, e.connect(as("127.0.19.5", "atk19-held", "alice", "alice-pw")))
	e.broker.Reload()
	require.True(t, e.broker.WaitOutput("Reloading config", 5*time.Second))
	// A CONNECT after the reload ends the walk's window; then the held
	// client must still be there.
	require.EqualValues(t, refused, e.connect(as("127.0.19.5", "atk19-other", "bob", "nope")))
	assert.False(t, held.Closed(2*time.Second), "the held client from the allowed address was disconnected by the walk:\n%s", tail(e.broker.Output(), 20))
	assert.False(t, hasLine(e.broker.Output(), "ip=127.0.19.3", "atk19-held"), "a line names the held client refused:\n%s", e.broker.Output())
}

// atk19: the same strings from IPv4 and IPv6 loopback in turn (a second
// listener on ::1), with ::1 banned: the IPv6 CONNECT is refused and
// logged as ip=::1 each time, the IPv4 one let in each time.
func TestAtk19SameStringsV4V6(t *testing.T) {
	if l, err := net.Listen("tcp", "[::1]:0"); err != nil {
		t.Skip("no IPv6 loopback")
	} else {
		l.Close()
	}
	port := testenv.FreePort(t)
	e := newEnv(t, "auth_opt_fail_limit 1000", fmt.Sprintf("listener %d ::1", port))
	v6 := func() byte {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: fmt.Sprintf("[::1]:%d", port), ClientID: "atk19-v", Username: str("alice"), Password: str("alice-pw")})
		require.NoError(t, err)
		if conn != nil {
			conn.Close()
		}
		return code
	}
	v4 := as("127.0.19.9", "atk19-v", "alice", "alice-pw")
	require.EqualValues(t, accepted, v6())
	e.redis.CLI("SET", "guard:block:ip:::1", "atk19")
	eventually(t, 5*time.Second, func() bool { return v6() == refused }, "the ::1 ban")
	for i := 0; i < 3; i++ {
		assert.EqualValues(t, accepted, e.connect(v4), "round %d: IPv4", i)
		assert.EqualValues(t, refused, v6(), "round %d: IPv6", i)
	}
	e.logLine("refused", "ip=::1", `rule="guard:block:ip:::1"`, `client_id="atk19-v"`)
	assert.False(t, hasLine(e.broker.Output(), "refused", "ip=127.0.19.9"), "IPv4 refused:\n%s", e.broker.Output())
}

// atk19: failures are counted per the address each CONNECT came from, for
// the same client ID and username in turn: one bad password from .6, then
// four from .7 interleaved with good ones from .6 (fail_limit 3): .7 is
// banned, .6 is not and still gets in.
func TestAtk19FailCountPerAddress(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 3", "auth_opt_username_fail_limit 0")
	bad := func(ip string) client { return as(ip, "atk19-f", "alice", "nope") }
	good := as("127.0.19.6", "atk19-f", "alice", "alice-pw")
	require.EqualValues(t, refused, e.connect(bad("127.0.19.6")))
	for i := 0; i < 4; i++ {
		e.connect(bad("127.0.19.7"))
		assert.EqualValues(t, accepted, e.connect(good), "round %d: .6 with the password", i)
	}
	e.waitKey("guard:block:ip:127.0.19.7", true, 5*time.Second)
	assert.Equal(t, "0", e.redis.CLI("EXISTS", "guard:block:ip:127.0.19.6"))
	assert.EqualValues(t, accepted, e.connect(good))
	e.logLine("event=banned", "scope=ip", `value="127.0.19.7"`)
	assert.False(t, hasLine(e.broker.Output(), "event=banned", `value="127.0.19.6"`))
}
