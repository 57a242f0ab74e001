package store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logline"
	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// CheckSettings tells settings Redis refuses from a Redis that is down: the
// first stop the broker at start, the second do not (atk55).
func TestCheckSettings(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("ACL", "SETUSER", "narrow", "on", ">narrow-secret", "~other:*", "+@all")
	r.CLI("CONFIG", "SET", "requirepass", "right-secret")
	check := func(o Options) error {
		o.Timeout = time.Second
		s := New(o, keys.Builder{Prefix: "s:"})
		defer s.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		defer cancel()
		return s.CheckSettings(ctx)
	}
	fault := func(err error) SettingsFault {
		var se *SettingsError
		if errors.As(err, &se) {
			return se.Fault
		}
		return 0
	}
	for _, c := range []struct {
		name string
		o    Options
		want SettingsFault
	}{
		{"right password", Options{Addrs: []string{r.Addr}, Password: "right-secret"}, 0},
		{"wrong password", Options{Addrs: []string{r.Addr}, Password: "wrong-secret"}, SettingsWrongPass},
		{"unknown user", Options{Addrs: []string{r.Addr}, Username: "nobody", Password: "right-secret"}, SettingsWrongPass},
		{"no password", Options{Addrs: []string{r.Addr}}, SettingsNoAuth},
		{"db out of range", Options{Addrs: []string{r.Addr}, Password: "right-secret", DB: 16}, SettingsDB},
		{"two addresses, no cluster", Options{Addrs: []string{r.Addr, r.Addr}, Password: "right-secret"}, SettingsNotCluster},
		{"a Redis as the sentinels", Options{Addrs: []string{r.Addr}, Password: "right-secret", SentinelMaster: "m"}, SettingsNotSentinel},
		{"keys under the prefix refused", Options{Addrs: []string{r.Addr}, Username: "narrow", Password: "narrow-secret"}, SettingsKeyPerm},
		{"down", Options{Addrs: []string{fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))}}, 0},
	} {
		err := check(c.o)
		assert.Equal(t, c.want, fault(err), "%s: %v", c.name, err)
		if err != nil {
			assert.NotContains(t, err.Error(), "secret", "%s: a password in the error", c.name)
		}
	}
}

// Redis echoes a refused command's arguments, a renamed AUTH's password
// among them (atk56): OneLine and every log line cut the echo.
func TestRedactArgs(t *testing.T) {
	msg := "ERR unknown command 'auth', with args beginning with: 'odd-Secret-42' "
	assert.Equal(t, "ERR unknown command 'auth' (arguments not shown)", RedactArgs(msg))
	assert.Equal(t, "a: ERR unknown command 'auth' (arguments not shown); b", OneLine(errors.New("a: "+msg+"\nb")))
	two := "x, with args beginning with: 'p1'\ny, with args beginning with: 'p2' \nz"
	assert.Equal(t, "x (arguments not shown)\ny (arguments not shown)\nz", RedactArgs(two))
	assert.Equal(t, "nothing to cut", RedactArgs("nothing to cut"))
}

// A client's own value holding the echo's words is not cut (it would cut
// the fields after it from the client's line): logline and logval quote it
// with the comma escaped. Redis's echo is cut wherever it is, whatever
// quotes come before it (atk59: a key_prefix holding '"' hid the echo
// inside what looked like a quoted value, and the password showed).
func TestRedactArgsInLine(t *testing.T) {
	client := logline.Event("refused").Tok("ip", "192.0.2.1").Tok("rule", "bad-password").
		Str("client_id", `x, with args beginning with: "y`).Str("username", "alice").String()
	assert.Equal(t, client, RedactArgsInLine(client))
	assert.Contains(t, client, `username="alice"`)
	f, err := logline.Parse(client)
	if assert.NoError(t, err) {
		assert.Equal(t, `x, with args beginning with: "y`, f.Get("client_id"), "the value reads back whole")
	}
	assert.Equal(t, `"a\x2c with args beginning with: b"`, logval.Quote("a, with args beginning with: b"))
	redis := "mosquitto-guard: client ID tracking: 3 events not recorded: ERR unknown command 'auth', with args beginning with: 'pw' "
	assert.Equal(t, "mosquitto-guard: client ID tracking: 3 events not recorded: ERR unknown command 'auth' (arguments not shown)", RedactArgsInLine(redis))
	prefix := `mosquitto-guard: replica: cannot keep the flush mark g"59:epoch (ERR unknown command 'auth', with args beginning with: 'Pw59-Secret' )`
	assert.NotContains(t, RedactArgsInLine(prefix), "Pw59-Secret")
	both := `a client_id=", with args beginning with: " b, with args beginning with: 'pw'` + "\nnext, with args beginning with: 'p2'"
	assert.NotContains(t, RedactArgsInLine(both), "pw")
	assert.NotContains(t, RedactArgsInLine(both), "p2")
}

// One node of a Redis Cluster of several shards as the one address, read
// by a user that may not run CLUSTER (nor INFO): the check's GETs, one in
// each sixteenth of the slots, meet a MOVED (atk57: such a user started
// the broker silently, every key of the other shard's slots answered
// MOVED for good). A cluster of one shard serves every key: no fault.
func TestCheckSettingsClusterNodeWithoutClusterRights(t *testing.T) {
	c := testenv.StartRedisCluster(t, 2)
	one := testenv.StartRedisCluster(t, 1)
	for _, r := range []*testenv.Redis{c.Nodes[0], one.Nodes[0]} {
		r.CLI("ACL", "SETUSER", "nocluster", "on", ">nc-secret", "~*", "+@all", "-cluster")
		r.CLI("ACL", "SETUSER", "noinfo", "on", ">ni-secret", "~*", "+@all", "-cluster", "-info")
	}
	check := func(addr, user, pw string) error {
		s := New(Options{Addrs: []string{addr}, Username: user, Password: pw, Timeout: time.Second}, keys.Builder{Prefix: "s:"})
		defer s.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		defer cancel()
		return s.CheckSettings(ctx)
	}
	for _, u := range [][2]string{{"default", ""}, {"nocluster", "nc-secret"}, {"noinfo", "ni-secret"}} {
		err := check(c.Nodes[0].Addr, u[0], u[1])
		var se *SettingsError
		if assert.ErrorAs(t, err, &se, "user %s, one node of two shards", u[0]) {
			assert.Equal(t, SettingsClusterNode, se.Fault, "user %s: %v", u[0], err)
		}
		assert.NoError(t, check(one.Nodes[0].Addr, u[0], u[1]), "user %s, a cluster of one shard", u[0])
	}
}

// slotKeys spreads its keys one in each sixteenth of the slot space, the
// slot as Redis computes it (CLUSTER KEYSLOT).
func TestSlotKeys(t *testing.T) {
	r := testenv.StartRedisCluster(t, 1).Nodes[0]
	seen := map[int]bool{}
	for _, k := range slotKeys("guard:", 16) {
		assert.True(t, strings.HasPrefix(k, "guard:settings-check"), k)
		slot := keySlot(k)
		assert.Equal(t, fmt.Sprint(slot), strings.TrimSpace(r.CLI("CLUSTER", "KEYSLOT", k)), k)
		seen[slot*16/16384] = true
	}
	assert.Len(t, seen, 16)
	// A prefix with a hash tag of its own: its keys share one slot.
	tagged := slotKeys("g{fleet}:", 16)
	if assert.Len(t, tagged, 1) {
		assert.Equal(t, keySlot("fleet"), keySlot(tagged[0]))
	}
	assert.Len(t, slotKeys("g{:", 16), 16, "an open brace alone is no tag")
}

// A Redis that speaks only TLS, asked in plain text, closes the connection
// without a word; with redis_tls off that says nothing of the settings
// unless the address answers a TLS handshake, which names redis_tls
// (atk57: the broker started silently, Redis down for good). A Redis that
// closes a plain connection and does not speak TLS either is no fault.
func TestCheckSettingsPlainTextToTLSPort(t *testing.T) {
	ca := testenv.NewCA(t)
	for _, auth := range []bool{false, true} {
		r := testenv.StartRedisTLS(t, &testenv.RedisTLS{CA: ca, AuthClients: auth})
		s := New(Options{Addrs: []string{r.Addr}, Timeout: time.Second}, keys.Builder{Prefix: "s:"})
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		err := s.CheckSettings(ctx)
		cancel()
		s.Close()
		var se *SettingsError
		if assert.ErrorAs(t, err, &se, "client certificates asked: %v", auth) {
			assert.Equal(t, SettingsWantsTLS, se.Fault, "%v", err)
			assert.Contains(t, err.Error(), r.Addr)
		}
	}
	// A listener that closes every connection at once, speaking nothing.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	s := New(Options{Addrs: []string{ln.Addr().String()}, Timeout: time.Second}, keys.Builder{Prefix: "s:"})
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	assert.NoError(t, s.CheckSettings(ctx), "a server that closes and speaks no TLS")
}

// A user without INFO rights is asked its keys in every slot (16 384 GETs,
// sweepBatch to a round trip): against a local Redis the whole check stays
// far inside the plugin's 1.5 s bound. Measured here: about 26 ms, and 17 ms
// to find the keys.
func TestCheckSettingsSweepTime(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("ACL", "SETUSER", "noinfo", "on", ">ni-secret", "~*", "&*", "+@all", "-info")
	start := time.Now()
	assert.Len(t, slotKeys("guard:", clusterSlots), clusterSlots)
	keysTook := time.Since(start)
	s := New(Options{Addrs: []string{r.Addr}, Username: "noinfo", Password: "ni-secret", Timeout: time.Second}, keys.Builder{Prefix: "guard:"})
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	start = time.Now()
	assert.NoError(t, s.CheckSettings(ctx))
	took := time.Since(start)
	t.Logf("the check with a GET in every slot: %v (the keys: %v)", took.Round(time.Millisecond), keysTook.Round(time.Millisecond))
	assert.Less(t, took, 500*time.Millisecond)
}
