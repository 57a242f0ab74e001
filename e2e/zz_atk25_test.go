package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// TestZZAtk25ThrottleKnownSourcesHitPath attacks the cache-hit path of
// today's change (known-source keys hashed from a 128-byte stack buffer or
// streamed beyond it; the verification cache) as a client that lies about
// its client ID: with alice throttled, her right password (a cache hit: her
// devices just used it) from an unknown source is refused unchecked; bob's
// known IP and client ID do not count for alice; alice's own devices, known
// by IP or only by a client ID whose hashed bytes sit on either side of the
// 128-byte buffer (8 + len("alice") + len("clientid:") + len(id) = 127, 128,
// 129), still get in from new addresses.
func TestZZAtk25ThrottleKnownSourcesHitPath(t *testing.T) {
	e := newEnv(t, "auth_opt_username_fail_limit 3", "auth_opt_fail_limit 100", "auth_opt_fail_window 1m")
	const fixed = 8 + len("alice") + len("clientid:")
	var ids []string
	for _, n := range []int{127, 128, 129} {
		ids = append(ids, fmt.Sprintf("dev-%0*d", n-fixed-4, n))
	}
	for i, id := range ids {
		e.expect(as(fmt.Sprintf("127.0.25.%d", 1+i), id, "alice", "alice-pw"), accepted)
	}
	e.expect(as("127.0.25.9", "bobdev", "bob", "bob-pw"), accepted)
	// Throttle alice from many addresses, each under its own client ID.
	for i := 0; i < 6; i++ {
		e.connect(as(fmt.Sprintf("127.0.25.%d", 100+i), fmt.Sprintf("x%d", i), "alice", "wrong"))
	}
	// Refusals after the episode's first are not logged; with fail_limit 100
	// no address is banned, so the right password refused is the throttle.
	e.logLine("event=throttled", `username="alice"`)

	for _, c := range []struct {
		cl   client
		want byte
		why  string
	}{
		{as("127.0.25.60", "fresh", "alice", "alice-pw"), refused, "unknown source, right (cached) password"},
		{as("127.0.25.9", "fresh2", "alice", "alice-pw"), refused, "bob's known IP"},
		{as("127.0.25.61", "bobdev", "alice", "alice-pw"), refused, "bob's known client ID"},
		{as("127.0.25.62", ids[0][:len(ids[0])-1], "alice", "alice-pw"), refused, "a known ID's prefix"},
		{as("127.0.25.63", ids[1]+"!", "alice", "alice-pw"), refused, "a known ID and one byte more"},
		{as("127.0.25.1", "fresh3", "alice", "alice-pw"), accepted, "alice's known IP"},
		{as("127.0.25.70", ids[0], "alice", "alice-pw"), accepted, "known ID, 127 bytes hashed"},
		{as("127.0.25.71", ids[1], "alice", "alice-pw"), accepted, "known ID, 128 bytes hashed"},
		{as("127.0.25.72", ids[2], "alice", "alice-pw"), accepted, "known ID, 129 bytes hashed (streamed)"},
		{as("127.0.25.73", ids[2], "alice", "alice-pw"), accepted, "again, from another address"},
	} {
		got := e.connect(c.cl)
		if got != c.want {
			t.Errorf("%s: %s as %q: CONNACK %d, want %d", c.why, c.cl.ip, c.cl.id, got, c.want)
		}
	}
	if t.Failed() {
		for _, l := range strings.Split(e.broker.Output(), "\n") {
			if strings.Contains(l, "127.0.25.") {
				t.Log(l)
			}
		}
	}
}

// TestZZAtk25ConflictIPsAcrossFamilies: conflict tracking, whose IP is now
// taken as an address and formatted by its worker, records each client's IP
// in its canonical text whichever listener (127.0.0.1, ::1) it came by, for
// short and long (hashed) client IDs; and the same device reconnecting over
// the other family is a finding with both IPs, not a miss.
func TestZZAtk25ConflictIPsAcrossFamilies(t *testing.T) {
	p6 := testenv.FreePort(t)
	e := newEnv(t, "listener {{PORT}} 127.0.0.1", fmt.Sprintf("listener %d ::1", p6), "auth_opt_clientid_conflict flag")
	addr6 := fmt.Sprintf("[::1]:%d", p6)
	dial6 := func(id, user, pass string) *mqttc.Conn {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: addr6, ClientID: id, Username: str(user), Password: str(pass)})
		require.NoError(t, err)
		require.Equal(t, byte(accepted), code)
		t.Cleanup(func() { c.Close() })
		return c
	}
	long := strings.Repeat("L", 300)
	for _, id := range []string{"fam-short", long} {
		a, code := e.dial(as("127.0.25.20", id, "alice", "alice-pw"))
		require.Equal(t, byte(accepted), code)
		defer a.Close()
		b := dial6(id, "bob", "bob-pw") // takes the ID over: a cross-principal finding
		defer b.Close()
	}
	for _, id := range []string{"fam-short", long} {
		line := e.logLine("event=finding", "kind=cross-principal", `client_id="`+id[:min(len(id), 50)])
		ips := ""
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "ips=") {
				ips = strings.TrimPrefix(f, "ips=")
			}
		}
		got := strings.Split(ips, ",")
		require.ElementsMatch(t, []string{"::1", "127.0.25.20"}, got, "ips of %q", line)
	}
	require.Equal(t, 2, strings.Count(e.broker.Output(), "event=finding"), "one finding per ID")
}

// TestZZAtk25KnownIPv6SourceAndBan: a known source by IP is keyed by the
// address the broker gives, so ::1 (a listener on ::1) is known for alice
// under her throttle whatever client ID it then claims, and not for bob;
// and a ban of ip:::1 refuses ::1 with the right password.
func TestZZAtk25KnownIPv6SourceAndBan(t *testing.T) {
	p6 := testenv.FreePort(t)
	e := newEnv(t, "listener {{PORT}} 127.0.0.1", fmt.Sprintf("listener %d ::1", p6),
		"auth_opt_username_fail_limit 3", "auth_opt_fail_limit 100", "auth_opt_fail_window 1m")
	addr6 := fmt.Sprintf("[::1]:%d", p6)
	connect6 := func(id, user, pass string) byte {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: addr6, ClientID: id, Username: str(user), Password: str(pass)})
		require.NoError(t, err)
		if c != nil {
			c.Disconnect()
		}
		return code
	}
	require.Equal(t, byte(accepted), connect6("v6dev", "alice", "alice-pw"))
	for _, u := range []string{"alice", "bob"} {
		for i := 0; i < 6; i++ {
			e.connect(as(fmt.Sprintf("127.0.25.%d", 100+i), fmt.Sprintf("%s-x%d", u, i), u, "wrong"))
		}
		e.logLine("event=throttled", `username="`+u+`"`)
	}
	require.Equal(t, byte(refused), e.connect(as("127.0.25.30", "other", "alice", "alice-pw")), "unknown IPv4 source")
	require.Equal(t, byte(accepted), connect6("claims-anything", "alice", "alice-pw"), "alice's known ::1")
	require.Equal(t, byte(refused), connect6("v6dev", "bob", "bob-pw"), "::1 and v6dev are alice's, not bob's")
	e.redis.CLI("SET", "guard:block:ip:::1", "test")
	eventually(t, 3*time.Second, func() bool { return connect6("v6dev", "alice", "alice-pw") == refused }, "ban of ip:::1")
	e.logLine("event=refused", "ip=::1", "rule=")
}

// TestZZAtk25CacheSplitsDoNotHit: a verified password's cache entry is for
// that username and password each whole: a client that just verified its own
// account ("alicex"/"yz", "ali"/"cex", ...) and then claims another username
// with the password that runs into the same bytes end to end ("alice"/"xyz")
// or a byte shifted, from the same address, is refused.
func TestZZAtk25CacheSplitsDoNotHit(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 100", "auth_opt_username_fail_limit 100")
	e.addUser("alicex", "yz")
	e.addUser("ali", "cex")
	e.addUser("alicexy", "z")
	e.broker.Reload()
	e.logLine("Reloading config.")
	eventually(t, 5*time.Second, func() bool { return e.connect(as("127.0.25.40", "c0", "alicexy", "z")) == accepted }, "users reloaded")
	// Each row: an account the client proves, then a claim whose username and
	// password run end to end into the same bytes (or one shifted), wrong.
	for i, c := range [][4]string{
		{"alicex", "yz", "alice", "xyz"},
		{"alicex", "yz", "alicexy", "y"},
		{"ali", "cex", "alice", "x"},
		{"ali", "cex", "alic", "ecex"},
		{"alicexy", "z", "alice", "xyz"},
		{"alicexy", "z", "alicex", "yz "},
		{"alice", "alice-pw", "alicea", "lice-pw"},
		{"alice", "alice-pw", "alic", "ealice-pw"},
		{"bob", "bob-pw", "bo", "bbob-pw"},
	} {
		ip := fmt.Sprintf("127.0.25.%d", 41+i)
		own := e.connect(as(ip, fmt.Sprintf("own%d", i), c[0], c[1]))
		require.Equal(t, byte(accepted), own, "own account %q", c[0])
		got := e.connect(as(ip, fmt.Sprintf("claim%d", i), c[2], c[3]))
		require.Equal(t, byte(refused), got, "after %q/%q verified, %q/%q", c[0], c[1], c[2], c[3])
	}
}

// TestZZAtk25CacheCMACPadding: CMAC pads a last partial block with 0x80 and
// zeros under one subkey and takes a whole last block under the other. The
// zeros cannot come from a client (a password ends at its first NUL, README
// Limitations; an MQTT username holds no U+0000), so what a client can send
// is the 0x80 and what follows it: a verified password so extended, filling
// the MAC's last block or not, is not a cache hit.
func TestZZAtk25CacheCMACPadding(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 100", "auth_opt_username_fail_limit 100")
	const pw = "alice-pw" // MAC input: 8 + 5 + 8 = 21 bytes, 5 in the last block
	for i, extra := range []string{
		"\x80",
		"\x80" + strings.Repeat("\x01", 10), // 32 bytes: two whole blocks
		"\x80" + strings.Repeat("\x01", 9),
		"\x80\x00", // checked as pw+"\x80"
	} {
		ip := fmt.Sprintf("127.0.25.%d", 60+i)
		require.Equal(t, byte(accepted), e.connect(as(ip, "own", "alice", pw)))
		require.Equal(t, byte(refused), e.connect(as(ip, "pad", "alice", pw+extra)), "padding %q", extra)
	}
}
