package e2e

// Hostile tests of what the README promises around issue 12's last change
// (6153aa6..e8155b2): a connection's record keeps its client ID and username
// in one string (the username as a length after the client ID) and its IP in
// 16 bytes; g.conns is a table a ban scan walks with tombstones; the CONNECT
// callback yields to Go's scheduler (MOSQUITTO_GUARD_NO_YIELD=1 turns it
// off). Each test holds one promise against a real redis-server and a real
// mosquitto loading the built .so: a ban kicks every holder it matches and no
// other, a client is kicked by exactly the keys that would refuse it at
// CONNECT, the log lines name the right client ID and username,
// user-changed kicks after SIGHUP, conflict tracking's principal.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// r12Client is one client of these tests: where it dials from and to, and
// what it claims.
type r12Client struct {
	name       string
	addr, ip   string
	id         string
	user, pass *string
}

func (c r12Client) dial(t *testing.T) (*mqttc.Conn, byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, code, err := mqttc.Dial(ctx, mqttc.Options{
		Addr: c.addr, SourceIP: c.ip, ClientID: c.id, Username: c.user, Password: c.pass,
	})
	require.NoError(t, err, "dial %s", c.name)
	if conn != nil {
		t.Cleanup(func() { conn.Close() })
	}
	return conn, code
}

// r12KickedAndRefused connects every client in cs, sets key, and returns
// the names of the clients the ban disconnected and of those a new CONNECT
// is refused for; then it deletes key and waits until every client connects

// r12Outcome names the clients of cs whose connection (conns, closed here)
// was closed, and those refused when they dial again now (an accepted one
// disconnects at once).
func r12Outcome(t *testing.T, cs []r12Client, conns []*mqttc.Conn) (kicked, refusedNow []string) {
	t.Helper()
	for i, c := range cs {
		if conns[i].Closed(50 * time.Millisecond) {
			kicked = append(kicked, c.name)
		}
		conns[i].Close()
	}
	for _, c := range cs {
		conn, code := c.dial(t)
		if code != accepted {
			refusedNow = append(refusedNow, c.name)
		}
		if conn != nil {
			conn.Disconnect()
		}
	}
	return kicked, refusedNow
}

// again. A client that cannot connect before the ban fails t.
func r12KickedAndRefused(t *testing.T, redis *testenv.Redis, key string, cs []r12Client) (kicked, refusedNow []string) {
	t.Helper()
	conns := make([]*mqttc.Conn, len(cs))
	for i, c := range cs {
		conn, code := c.dial(t)
		require.EqualValues(t, accepted, code, "%s before the ban of %q", c.name, key)
		conns[i] = conn
	}
	redis.CLI("SET", key, "r12 test")
	time.Sleep(500 * time.Millisecond) // a kick lands at the next tick: "within about 100 ms"
	kicked, refusedNow = r12Outcome(t, cs, conns)
	redis.CLI("DEL", key)
	for _, c := range cs {
		eventually(t, 3*time.Second, func() bool {
			conn, code := c.dial(t)
			if conn != nil {
				conn.Disconnect()
			}
			return code == accepted
		}, "%s still refused after DEL %q", c.name, key)
	}
	sort.Strings(kicked)
	sort.Strings(refusedNow)
	return kicked, refusedNow
}

// TestZZR12AmbiguousSplitsKickTheRightHolder: the record keeps "client ID +
// username" in one string with the username's length. Client IDs and
// usernames chosen so that the concatenations coincide ("xbob"+"bob",
// "xbobb"+"ob", "xbobbo"+"b", "xbobbob"+"alice"...), with client IDs equal
// to other clients' usernames: each ban kicks exactly the clients a new
// CONNECT is refused for, and the kicked line names that client's own
// client ID and username.
func TestZZR12AmbiguousSplitsKickTheRightHolder(t *testing.T) {
	e := newEnv(t)
	for _, u := range []string{"ob", "b", "xbob"} {
		e.addUser(u, u+"-pw")
	}
	e.broker.Reload()
	require.True(t, e.broker.WaitOutput("Reloading config", 5*time.Second))
	time.Sleep(300 * time.Millisecond)
	mk := func(name, ip, id, user string) r12Client {
		pw := user + "-pw"
		return r12Client{name: name, addr: e.broker.Addr, ip: ip, id: id, user: str(user), pass: str(pw)}
	}
	cs := []r12Client{
		mk("k1", "127.12.0.1", "xbob", "bob"),
		mk("k2", "127.12.0.2", "xbobb", "ob"),
		mk("k3", "127.12.0.3", "xbobbo", "b"),
		mk("k4", "127.12.0.4", "xbobbob", "alice"),
		mk("k5", "127.12.0.5", "bob", "alice"),
		mk("k6", "127.12.0.6", "ob", "bob"),
		mk("k7", "127.12.0.7", "b", "xbob"),
		mk("k8", "127.12.0.8", "", "xbob"), // an empty client ID: the broker gives one (3.1.1, clean session)
	}
	cases := []struct {
		key  string
		want []string
	}{
		{"guard:block:username:ob", []string{"k2"}},
		{"guard:block:clientid:xbob", []string{"k1"}},
		{"guard:block:username:b", []string{"k3"}},
		{"guard:block:clientid:ob", []string{"k6"}},
		{"guard:block:username:bob", []string{"k1", "k6"}},
		{"guard:block:clientid:bob", []string{"k5"}},
		{"guard:block:clientid:b", []string{"k7"}},
		{"guard:block:username:xbob", []string{"k7", "k8"}},
		{"guard:block:clientid:xbobbob", []string{"k4"}},
	}
	if os.Getenv("ATK_LOAD") == "1" { // the rest: another 5 s
		cases = append(cases, []struct {
			key  string
			want []string
		}{
			{"guard:block:username:alice", []string{"k4", "k5"}},
			{"guard:block:clientid:xbobbobalice", nil},
			{"guard:block:username:bobalice", nil},
			{"guard:block:username:", nil},
			{"guard:block:clientid:", nil},
		}...)
	}
	for _, tc := range cases {
		kicked, refusedNow := r12KickedAndRefused(t, e.redis, tc.key, cs)
		require.Equal(t, tc.want, kicked, "kicked by %q", tc.key)
		require.Equal(t, tc.want, refusedNow, "refused at CONNECT by %q", tc.key)
	}
	out := e.broker.Output()
	for _, c := range cs[:4] {
		// Every kicked line of this client names its own client ID and username.
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "event=kicked ip="+c.ip+" ") {
				require.Contains(t, l, fmt.Sprintf("client_id=%q username=%q", c.id, *c.user), "kicked line of %s", c.name)
			}
		}
		require.True(t, hasLine(out, "event=kicked ip="+c.ip+" "), "no kicked line for %s", c.name)
	}
}

// TestZZR12EmptyVersusNoUsername: with allow_anonymous true, a client with
// no username, one with an empty username (which Mosquitto 2.0 reads as
// none: a zero-length string is NULL to it) and clients with usernames
// whose client ID + username spell another's are held. "A client with no
// username passes the list checks": no username ban (not the empty one,
// guard:block:username:, nor "<anonymous>", the principal's name) kicks or
// refuses the clients without one, and whatever a ban does at CONNECT it
// does to a live client.
func TestZZR12EmptyVersusNoUsername(t *testing.T) {
	if os.Getenv("ATK_LOAD") != "1" {
		t.Skip("ATK_LOAD=1: exercised, holds; kept out of make test's time")
	}
	e := newEnv(t, "allow_anonymous true")
	for _, u := range []string{"u", "1u"} {
		e.addUser(u, u+"-pw")
	}
	e.broker.Reload()
	require.True(t, e.broker.WaitOutput("Reloading config", 5*time.Second))
	time.Sleep(300 * time.Millisecond)
	anon := r12Client{name: "anon", addr: e.broker.Addr, ip: "127.12.1.1", id: "anon-1"}
	empty := r12Client{name: "empty", addr: e.broker.Addr, ip: "127.12.1.2", id: "empty-1", user: str("")}
	u := r12Client{name: "u", addr: e.broker.Addr, ip: "127.12.1.3", id: "u-1", user: str("u"), pass: str("u-pw")}
	// "u-" + "1u" and "u-1" + "u" spell the same string.
	split := r12Client{name: "split", addr: e.broker.Addr, ip: "127.12.1.4", id: "u-", user: str("1u"), pass: str("1u-pw")}
	cs := []r12Client{anon, empty, u, split}
	for _, c := range cs {
		conn, code := c.dial(t)
		require.EqualValues(t, accepted, code, "%s before any ban", c.name)
		conn.Disconnect()
	}
	cases := []struct {
		key  string
		want []string
	}{
		{"guard:block:username:", nil},
		{"guard:block:username:u", []string{"u"}},
		{"guard:block:username:1u", []string{"split"}},
		{"guard:block:clientid:u-1", []string{"u"}},
		{"guard:block:clientid:u-", []string{"split"}},
		{"guard:block:clientid:anon-1", []string{"anon"}},
		{"guard:block:username:<anonymous>", nil},
	}
	for _, tc := range cases {
		kicked, refusedNow := r12KickedAndRefused(t, e.redis, tc.key, cs)
		require.Equal(t, tc.want, refusedNow, "refused at CONNECT by %q", tc.key)
		require.Equal(t, tc.want, kicked, "kicked by %q", tc.key)
	}
}

// TestZZR12IPv6AndMappedFormsKickAsTheyRefuse: the record keeps the IP in
// 16 bytes. A client on an IPv4 listener (from 127.12.2.7) and one on an
// IPv6 loopback listener (::1): for ip and cidr keys in every form (IPv6
// ranges that hold the IPv4-mapped or IPv4-compatible space, the
// non-canonical mapped ip key the README says never matches), the kicked
// set is the set refused at CONNECT, and the documented ones are as
// documented.
func TestZZR12IPv6AndMappedFormsKickAsTheyRefuse(t *testing.T) {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	p6 := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	e := newEnv(t, fmt.Sprintf("listener %d ::1", p6))
	addr6 := fmt.Sprintf("[::1]:%d", p6)
	v4 := r12Client{name: "v4", addr: e.broker.Addr, ip: "127.12.2.7", id: "r12-v4", user: str("alice"), pass: str("alice-pw")}
	v6 := r12Client{name: "v6", addr: addr6, id: "r12-v6", user: str("bob"), pass: str("bob-pw")}
	cs := []r12Client{v4, v6}
	cases := []struct {
		key  string
		want []string // nil: only that kick and refusal agree
		doc  bool     // want is what the README says
	}{
		{"guard:block:ip:::1", []string{"v6"}, true},
		{"guard:block:ip:127.12.2.7", []string{"v4"}, true},
		{"guard:block:cidr:127.12.0.0/16", []string{"v4"}, true},
		{"guard:block:cidr:::/120", []string{"v6"}, true},
		{"guard:block:ip:::ffff:127.12.2.7", nil, true}, // not canonical: can never match
		{"guard:block:ip:0:0:0:0:0:0:0:1", nil, true},   // not canonical: can never match
		{"guard:block:cidr:::/0", nil, false},
		{"guard:block:cidr:::ffff:0:0/96", nil, false},
	}
	if os.Getenv("ATK_LOAD") == "1" { // another 3 s
		cases = append(cases, []struct {
			key  string
			want []string
			doc  bool
		}{
			{"guard:block:cidr:::/64", nil, false},
			{"guard:block:cidr:::ffff:127.12.0.0/112", nil, false},
			{"guard:block:cidr:::7f0c:207/128", nil, false}, // ::127.12.2.7, IPv4-compatible
			{"guard:block:cidr:0.0.0.0/0", []string{"v4"}, false},
		}...)
	}
	for _, tc := range cases {
		kicked, refusedNow := r12KickedAndRefused(t, e.redis, tc.key, cs)
		require.Equal(t, refusedNow, kicked, "%q: kicked %v, refused at CONNECT %v", tc.key, kicked, refusedNow)
		if tc.doc || tc.want != nil {
			require.Equal(t, tc.want, kicked, "%q", tc.key)
		}
		t.Logf("%-45s kicked %v refused %v", tc.key, kicked, refusedNow)
	}
	out := e.broker.Output()
	require.True(t, hasLine(out, "event=kicked ip=::1 ", `client_id="r12-v6"`, `username="bob"`), "no kicked line for ::1:\n%s", out)
}

// TestZZR12DenyHolderPrincipalThroughSplits: under clientid_conflict deny,
// the holder's principal is its username, kept as a length after its client
// ID. Intruders whose client ID + username spell the holder's string, or
// whose username is the holder's client ID's tail, are refused naming the
// holder's own principal; the holder's principal taking over goes through;
// then a chain of takeovers and a ban of the last holder's IP kicks only
// it (the displaced ones are gone), and guard:conn empties once they leave.
func TestZZR12DenyHolderPrincipalThroughSplits(t *testing.T) {
	e := newEnv(t, "auth_opt_clientid_conflict deny")
	for _, u := range []string{"ob", "dbob", "b"} {
		e.addUser(u, u+"-pw")
	}
	e.broker.Reload()
	require.True(t, e.broker.WaitOutput("Reloading config", 5*time.Second))
	time.Sleep(300 * time.Millisecond)
	mk := func(ip, id, user string) r12Client {
		return r12Client{name: ip, addr: e.broker.Addr, ip: ip, id: id, user: str(user), pass: str(user + "-pw")}
	}
	holder := mk("127.12.3.1", "d", "bob")
	hconn, code := holder.dial(t)
	require.EqualValues(t, accepted, code)
	time.Sleep(300 * time.Millisecond)
	for _, in := range []r12Client{
		mk("127.12.3.2", "d", "ob"),
		mk("127.12.3.3", "d", "b"),
		mk("127.12.3.4", "d", "dbob"),
		mk("127.12.3.5", "d", "alice"),
	} {
		conn, code := in.dial(t)
		require.EqualValues(t, refused, code, "intruder %s as %q on the holder's client ID", in.ip, *in.user)
		if conn != nil {
			conn.Close()
		}
		l := e.logLine("event=refused ip="+in.ip+" ", "rule=clientid-conflict")
		require.Contains(t, l, `holder_principal="bob"`, "the holder's principal: %s", l)
		require.Contains(t, l, "holder_ip=127.12.3.1", l)
		require.Contains(t, l, fmt.Sprintf("username=%q", *in.user), l)
	}
	require.False(t, hconn.Closed(100*time.Millisecond), "the holder stays connected")

	// A client ID that is the holder's string: its own ID, not a conflict.
	other := mk("127.12.3.6", "dbob", "ob")
	oconn, code := other.dial(t)
	require.EqualValues(t, accepted, code, "client ID \"dbob\" is not \"d\"")

	// The same principal takes over, twice, from new addresses.
	t1 := mk("127.12.3.7", "d", "bob")
	c1, code := t1.dial(t)
	require.EqualValues(t, accepted, code, "the same principal reconnecting")
	require.True(t, hconn.Closed(2*time.Second), "the first holder is displaced")
	t2 := mk("127.12.3.8", "d", "bob")
	c2, code := t2.dial(t)
	require.EqualValues(t, accepted, code)
	require.True(t, c1.Closed(2*time.Second), "the second holder is displaced")

	// An intruder now names the newest holder.
	in := mk("127.12.3.9", "d", "ob")
	_, code = in.dial(t)
	require.EqualValues(t, refused, code)
	l := e.logLine("event=refused ip=127.12.3.9 ", "rule=clientid-conflict")
	require.Contains(t, l, "holder_ip=127.12.3.8", l)
	require.Contains(t, l, `holder_principal="bob"`, l)

	// Bans of the displaced holders' addresses kick nobody; the newest's kicks it.
	e.redis.CLI("SET", "guard:block:ip:127.12.3.1", "x")
	e.redis.CLI("SET", "guard:block:ip:127.12.3.7", "x")
	require.False(t, c2.Closed(1200*time.Millisecond), "the live holder kicked by a ban of a displaced one's address")
	require.False(t, oconn.Closed(10*time.Millisecond), "\"dbob\" kicked")
	e.redis.CLI("SET", "guard:block:ip:127.12.3.8", "x")
	require.True(t, c2.Closed(2*time.Second), "the live holder not kicked by its address's ban")
	require.False(t, oconn.Closed(300*time.Millisecond), "\"dbob\" kicked")
	e.logLine("event=kicked ip=127.12.3.8 ", `client_id="d"`, `username="bob"`)
	oconn.Disconnect()
	eventually(t, 5*time.Second, func() bool {
		return e.redis.CLI("HLEN", "guard:conn:d") == "0" && e.redis.CLI("HLEN", "guard:conn:dbob") == "0"
	}, "guard:conn:d / dbob not emptied: %q %q", e.redis.CLI("HGETALL", "guard:conn:d"), e.redis.CLI("HGETALL", "guard:conn:dbob"))
}

// TestZZR12UserChangedKicksThroughSplits: a SIGHUP whose password file
// removes user "ob" kicks only the clients authenticated as "ob" (not the
// one whose client ID ends in "ob", nor "bob"'s); rehashing "bob" kicks only
// bob's, and each kicked line names its own client ID and username.
func TestZZR12UserChangedKicksThroughSplits(t *testing.T) {
	if os.Getenv("ATK_LOAD") != "1" {
		t.Skip("ATK_LOAD=1: exercised, holds; kept out of make test's time")
	}
	e := newEnv(t)
	for _, u := range []string{"ob", "b"} {
		e.addUser(u, u+"-pw")
	}
	e.broker.Reload()
	require.True(t, e.broker.WaitOutput("Reloading config", 5*time.Second))
	time.Sleep(300 * time.Millisecond)
	closed := r12DialSplits(t, e.broker.Addr, "127.12.4", false)
	out, err := exec.Command("mosquitto_passwd", "-D", e.passwd, "ob").CombinedOutput()
	require.NoError(t, err, "%s", out)
	e.broker.Reload()
	r12GoneLine(t, e, "127.12.4.1", `client_id="x" username="ob"`)
	time.Sleep(500 * time.Millisecond)
	require.Equal(t, []string{"ob-user"}, closed(), "kicked by removing user ob")

	e.addUser("bob", "bob-new-pw")
	e.broker.Reload()
	r12GoneLine(t, e, "127.12.4.3", `client_id="xo" username="bob"`)
	time.Sleep(500 * time.Millisecond)
	require.Equal(t, []string{"bob-user", "ob-user"}, closed(), "kicked by rehashing bob")
	r12OnlyGone(t, e.broker.Output(), "127.12.4.1", "127.12.4.3")
}

// r12GoneLine waits for the line that tells why the client from ip left
// after a SIGHUP changed its user: Mosquitto's re-check refusing it
// (event=refused ... reauth=true) when the file was read in time, or the
// plugin's kick (event=kicked rule=user-changed) when it was read late; the
// line names the client's own client ID and username (names).
func r12GoneLine(t *testing.T, e *env, ip, names string) {
	t.Helper()
	var found string
	eventually(t, 5*time.Second, func() bool {
		out := e.broker.Output()
		found = findLine(out, "event=kicked ip="+ip+" ", "rule=user-changed")
		if found == "" {
			found = findLine(out, "event=refused ip="+ip+" ", "reauth=true")
		}
		return found != ""
	}, "no kicked or re-check line for %s:\n%s", ip, e.broker.Output())
	require.Contains(t, found, names, found)
}

// TestZZR12BanScanWhileTheTableGrows: 600 connections held from
// 127.13.0.0/16 and 300 from 127.14.0.0/16; a ban of 127.13.0.0/16 lands
// while 8 workers open 600 more from 127.13 (the table grows during the
// scan), 4 workers churn CONNECT/DISCONNECT from 127.15 and the broker gets
// a SIGHUP every 100 ms. Every
// connection from 127.13 that was accepted is closed within 3 s of the
// ban; none of 127.14's held is.
func TestZZR12BanScanWhileTheTableGrows(t *testing.T) {
	e := newEnv(t)
	held, addr := 600, e.broker.Addr
	if os.Getenv("ATK_LOAD") == "1" {
		held = 3000
	}
	dialQuiet := func(ip, id string) (*mqttc.Conn, byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return mqttc.Dial(ctx, mqttc.Options{Addr: addr, SourceIP: ip, ClientID: id, Username: str("alice"), Password: str("alice-pw")})
	}
	ipOf := func(net byte, i int) string { return fmt.Sprintf("127.%d.%d.%d", net, 1+i/250, 1+i%250) }
	var mu sync.Mutex
	var banned, other []*mqttc.Conn
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range append(banned, other...) {
			c.Close()
		}
	})
	openRange := func(net byte, from, n, workers int, into *[]*mqttc.Conn) {
		var wg sync.WaitGroup
		var next atomic.Int64
		next.Store(int64(from))
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1) - 1)
					if i >= from+n {
						return
					}
					c, code, err := dialQuiet(ipOf(net, i), fmt.Sprintf("g%d-%d", net, i))
					if err != nil || code != accepted {
						if c != nil {
							c.Close()
						}
						continue
					}
					mu.Lock()
					*into = append(*into, c)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
	}
	openRange(13, 0, held, 8, &banned)
	openRange(14, 0, held/2, 8, &other)
	require.Len(t, banned, held)
	require.Len(t, other, held/2)

	stop := make(chan struct{})
	var churnWG sync.WaitGroup
	var churned atomic.Int64
	for w := 0; w < 4; w++ {
		churnWG.Add(1)
		go func(w int) {
			defer churnWG.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				c, _, err := dialQuiet(fmt.Sprintf("127.15.%d.%d", w, 1+i%250), fmt.Sprintf("churn-%d-%d", w, i%50))
				if err == nil && c != nil {
					c.Disconnect()
					churned.Add(1)
				}
			}
		}(w)
	}
	churnWG.Add(1)
	go func() { // SIGHUPs all through: Mosquitto's re-check walks while the table grows and the scan runs
		defer churnWG.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
				e.broker.Reload()
			}
		}
	}()
	growDone := make(chan struct{})
	go func() {
		defer close(growDone)
		openRange(13, held, held, 8, &banned)
	}()
	time.Sleep(50 * time.Millisecond)
	e.redis.CLI("SET", "guard:block:cidr:127.13.0.0/16", "r12 grow")
	<-growDone
	close(stop)
	churnWG.Wait()
	deadline := time.Now().Add(3 * time.Second)
	mu.Lock()
	all := append([]*mqttc.Conn(nil), banned...)
	mu.Unlock()
	open := 0
	for _, c := range all {
		d := time.Until(deadline)
		if d < 10*time.Millisecond {
			d = 10 * time.Millisecond
		}
		if !c.Closed(d) {
			open++
		}
	}
	require.Zero(t, open, "of %d accepted connections from 127.13.0.0/16, %d still open 3 s after its ban (churned %d)", len(all), open, churned.Load())
	wrongly := 0
	for _, c := range other {
		if c.Closed(5 * time.Millisecond) {
			wrongly++
		}
	}
	require.Zero(t, wrongly, "connections from 127.14.0.0/16 closed by a ban of 127.13.0.0/16")
	t.Logf("held %d, accepted from the banned range in all %d, churned %d", held, len(all), churned.Load())
}

// TestZZR12NoYieldEnvStillGuards: the documented MOSQUITTO_GUARD_NO_YIELD=1
// (and values that are not 1) leave the plugin whole: it connects, refuses,
// kicks and survives a SIGHUP under a burst of CONNECTs.
func TestZZR12NoYieldEnvStillGuards(t *testing.T) {
	values := []string{"1"}
	if os.Getenv("ATK_LOAD") == "1" {
		values = append(values, "", "0", "yes")
	}
	for _, v := range values {
		t.Run("NO_YIELD="+v, func(t *testing.T) {
			t.Setenv("MOSQUITTO_GUARD_NO_YIELD", v)
			e := newEnv(t)
			c := r12Client{name: "a", addr: e.broker.Addr, ip: "127.12.5.1", id: "ny-1", user: str("alice"), pass: str("alice-pw")}
			conn, code := c.dial(t)
			require.EqualValues(t, accepted, code)
			var wg sync.WaitGroup
			for w := 0; w < 4; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					for i := 0; i < 50; i++ {
						e.connect(as(fmt.Sprintf("127.12.6.%d", 1+w), fmt.Sprintf("ny-%d-%d", w, i), "bob", "bob-pw"))
						if i == 25 && w == 0 {
							e.broker.Reload()
						}
					}
				}(w)
			}
			wg.Wait()
			e.redis.CLI("SET", "guard:block:clientid:ny-1", "x")
			require.True(t, conn.Closed(2*time.Second), "not kicked")
			e.expect(as("127.12.5.2", "ny-1", "alice", "alice-pw"), refused)
			e.expect(as("127.12.5.3", "ny-2", "alice", "alice-pw"), accepted)
		})
	}
}

// TestZZR12UserChangedLateReadKicksThroughSplits: the same as
// TestZZR12UserChangedKicksThroughSplits with a password file of 200 000
// more users, read late (after Mosquitto's re-check passed everyone on the
// users loaded before): the plugin's own kicks (event=kicked
// rule=user-changed) compare each record's username, kept as a length after
// its client ID, with the new file: only the clients authenticated as the
// removed or rehashed user leave, and each line names its own client ID
// and username.
func TestZZR12UserChangedLateReadKicksThroughSplits(t *testing.T) {
	e := newEnv(t)
	lines := map[string]string{}
	for _, u := range []string{"alice", "bob", "ob", "b"} {
		lines[u] = passwdLine(t, u, u+"-pw")
	}
	e.zzWriteUsers(200_000, lines["alice"], lines["bob"], lines["ob"], lines["b"])
	e.reloaded()
	e.logLine("loaded 200004 users")
	closed := r12DialSplits(t, e.broker.Addr, "127.12.7", true)
	e.zzWriteUsers(200_000, lines["alice"], lines["bob"], lines["b"]) // ob removed
	e.reloaded()
	e.logLine("loaded 200003 users")
	r12GoneLine(t, e, "127.12.7.1", `client_id="x" username="ob"`)
	time.Sleep(300 * time.Millisecond)
	require.Equal(t, []string{"ob-user"}, closed(), "kicked by removing user ob")

	e.zzWriteUsers(200_000, lines["alice"], passwdLine(t, "bob", "bob-new"), lines["b"]) // bob rehashed
	e.reloaded()
	eventually(t, 20*time.Second, func() bool { return strings.Count(e.broker.Output(), "loaded 200003 users") >= 2 }, "never loaded")
	r12GoneLine(t, e, "127.12.7.3", `client_id="xo" username="bob"`)
	time.Sleep(300 * time.Millisecond)
	require.Equal(t, []string{"bob-user", "ob-user"}, closed(), "kicked by rehashing bob")
	out := e.broker.Output()
	require.True(t, hasLine(out, "rule=user-changed"), "the read was never late: the plugin's kick path not exercised:\n%s", out)
	r12OnlyGone(t, out, "127.12.7.1", "127.12.7.3")
}

// r12DialSplits connects, each accepted, the clients whose client ID and
// username split the same bytes differently (users "ob", "b", "bob",
// "alice", passwords <user>-pw), from net.1 to net.5 (net.6 too with
// aliceBob: client ID "bob" under alice), and returns what names those
// whose connection has closed since, sorted.
func r12DialSplits(t *testing.T, addr, net string, aliceBob bool) (closed func() []string) {
	t.Helper()
	mk := func(name string, host int, id, user string) r12Client {
		return r12Client{name: name, addr: addr, ip: fmt.Sprintf("%s.%d", net, host), id: id, user: str(user), pass: str(user + "-pw")}
	}
	cs := []r12Client{
		mk("ob-user", 1, "x", "ob"),
		mk("ob-tail", 2, "xob", "b"),
		mk("bob-user", 3, "xo", "bob"),
		mk("b-user", 4, "xbo", "b"),
		mk("alice-ob", 5, "ob", "alice"),
	}
	if aliceBob {
		cs = append(cs, mk("alice-bob", 6, "bob", "alice"))
	}
	conns := map[string]*mqttc.Conn{}
	for _, c := range cs {
		conn, code := c.dial(t)
		require.EqualValues(t, accepted, code, c.name)
		conns[c.name] = conn
	}
	return func() []string {
		var out []string
		for _, c := range cs {
			if conns[c.name].Closed(50 * time.Millisecond) {
				out = append(out, c.name)
			}
		}
		sort.Strings(out)
		return out
	}
}

// r12OnlyGone fails if out has a kick or refusal of a client from any IP
// but ips.
func r12OnlyGone(t *testing.T, out string, ips ...string) {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if !strings.Contains(l, "event=kicked") && !strings.Contains(l, "event=refused") {
			continue
		}
		ok := false
		for _, ip := range ips {
			ok = ok || strings.Contains(l, "ip="+ip+" ")
		}
		require.True(t, ok, "an unexpected kick or refusal: %s", l)
	}
}

// TestZZR12UseUsernameAsClientID: a listener with Mosquitto's
// use_username_as_clientid gives every client its username as its client
// ID after the plugin's check. The README does not mention the setting;
// these are the promises it must still keep: an ended connection does not
// stay live in guard:conn (README "no ended connection stays live in
// guard:conn:<id>"), a Mosquitto takeover (two client IDs, one username)
// leaves no live entry of the displaced connection, a client-ID ban kicks
// exactly the clients a new CONNECT is refused for, and a username ban
// kicks the holder.
func TestZZR12UseUsernameAsClientID(t *testing.T) {
	if os.Getenv("ATK_LOAD") != "1" {
		t.Skip("ATK_LOAD=1: exercised, holds; kept out of make test's time")
	}
	e := newEnv(t, "use_username_as_clientid true")
	mk := func(name, ip, id, user string) r12Client {
		return r12Client{name: name, addr: e.broker.Addr, ip: ip, id: id, user: str(user), pass: str(user + "-pw")}
	}
	live := func() map[string]string {
		out := map[string]string{}
		for _, k := range strings.Fields(e.redis.CLI("--scan", "--pattern", "guard:conn:*")) {
			out[k] = e.redis.CLI("HLEN", k)
		}
		return out
	}
	a1 := mk("a1", "127.12.8.1", "dev-1", "alice")
	c1, code := a1.dial(t)
	require.EqualValues(t, accepted, code)
	e.logLine("New client connected from 127.12.8.1", "as alice")
	c1.Disconnect()
	eventually(t, 3*time.Second, func() bool {
		for _, n := range live() {
			if n != "0" {
				return false
			}
		}
		return true
	}, "an ended connection stays live: %v", live())

	// A takeover by Mosquitto: alice from two client IDs, both "alice" to the broker.
	c1, code = a1.dial(t)
	require.EqualValues(t, accepted, code)
	a2 := mk("a2", "127.12.8.2", "dev-2", "alice")
	c2, code := a2.dial(t)
	require.EqualValues(t, accepted, code)
	require.True(t, c1.Closed(2*time.Second), "Mosquitto's takeover of \"alice\"")
	time.Sleep(500 * time.Millisecond)
	t.Logf("live entries after the takeover: %v", live())
	c2.Disconnect()
	eventually(t, 3*time.Second, func() bool {
		for _, n := range live() {
			if n != "0" {
				return false
			}
		}
		return true
	}, "after both ended, live entries remain: %v", live())

	// Bans: kicked as refused.
	b := mk("b", "127.12.8.3", "dev-3", "bob")
	for _, key := range []string{"guard:block:clientid:dev-3", "guard:block:clientid:bob", "guard:block:username:bob"} {
		kicked, refusedNow := r12KickedAndRefused(t, e.redis, key, []r12Client{b})
		require.Equal(t, refusedNow, kicked, "%q: kicked %v, refused at CONNECT %v", key, kicked, refusedNow)
		t.Logf("%-35s kicked %v refused %v", key, kicked, refusedNow)
	}
}

// TestZZR12MaxLengthIDAndUsername: a 65 535-byte client ID with a
// 65 535-byte username (the most MQTT carries, in the one string the record
// keeps, the username's length beside it), and a client whose client ID is
// the first's minus its last byte and whose username is that byte plus the
// first's username minus its last byte (the same concatenation but one
// byte): a ban of either's username or client ID kicks that client alone
// and refuses it at CONNECT; the log lines cut both to 200 bytes and give
// their lengths.
func TestZZR12MaxLengthIDAndUsername(t *testing.T) {
	e := newEnv(t)
	id := strings.Repeat("i", 65534) + "z"
	user := strings.Repeat("u", 65535)
	id2 := id[:65534]
	user2 := id[65534:] + user[:65534]
	require.Equal(t, id+user[:65534], id2+user2)
	hash := strings.SplitN(passwdLine(t, "x", "long-pw"), ":", 2)[1]
	f, err := os.OpenFile(e.passwd, os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = fmt.Fprintf(f, "%s:%s\n%s:%s\n", user, hash, user2, hash)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	e.reloaded()
	e.logLine("loaded 4 users")
	cs := []r12Client{
		{name: "max", addr: e.broker.Addr, ip: "127.12.9.1", id: id, user: str(user), pass: str("long-pw")},
		{name: "shifted", addr: e.broker.Addr, ip: "127.12.9.2", id: id2, user: str(user2), pass: str("long-pw")},
	}
	for _, tc := range []struct {
		key  string
		want []string
	}{
		{"guard:block:username:" + user, []string{"max"}},
		{"guard:block:username:" + user2, []string{"shifted"}},
		{"guard:block:clientid:" + id, []string{"max"}},
		{"guard:block:clientid:" + id2, []string{"shifted"}},
	} {
		kicked, refusedNow := r12KickedAndRefused(t, e.redis, tc.key, cs)
		require.Equal(t, tc.want, kicked, "kicked by the ban of %.30q... (%d bytes)", tc.key, len(tc.key))
		require.Equal(t, tc.want, refusedNow, "refused by the ban of %.30q... (%d bytes)", tc.key, len(tc.key))
	}
	l := e.logLine("event=kicked ip=127.12.9.1 ")
	require.Contains(t, l, "client_id_bytes=65535", l)
	require.Contains(t, l, "username_bytes=65535", l)
	l = e.logLine("event=kicked ip=127.12.9.2 ")
	require.Contains(t, l, "client_id_bytes=65534", l)
	require.Less(t, len(l), 2000, "a kicked line's length")
}

// TestZZR12RefusedTakeoverGivesTheIDBack: under backend defer, Mosquitto's
// own password_file decides after the plugin. A holder of client ID "dp",
// then clients on "dp" that Mosquitto refuses (a wrong password), one after
// the other and in a burst: each took "dp" over in the plugin's index
// until it ended (the connection a takeover displaced is kept in
// g.displaced, "one level only"). The holder must get its client ID back:
// a ban of "dp" kicks it, guard:conn:dp lists it live; then a takeover that
// Mosquitto lets in displaces it, and a ban of the displaced holder's
// address kicks nobody while the client-ID ban kicks the new holder.
func TestZZR12RefusedTakeoverGivesTheIDBack(t *testing.T) {
	e := newEnv(t, "auth_opt_backend defer", "password_file "+envPasswd(t))
	mk := func(ip, pass string) r12Client {
		return r12Client{name: ip, addr: e.broker.Addr, ip: ip, id: "dp", user: str("alice"), pass: str(pass)}
	}
	holder := mk("127.12.10.1", "alice-pw")
	h, code := holder.dial(t)
	require.EqualValues(t, accepted, code)
	time.Sleep(700 * time.Millisecond) // confirmed: past the 500 ms a deferred client waits
	for i := 0; i < 3; i++ {
		_, code := mk(fmt.Sprintf("127.12.10.%d", 10+i), "wrong").dial(t)
		require.EqualValues(t, refused, code)
	}
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, _, err := mqttc.Dial(ctx, mqttc.Options{Addr: e.broker.Addr, SourceIP: fmt.Sprintf("127.12.10.%d", 20+i),
				ClientID: "dp", Username: str("alice"), Password: str("wrong")})
			if err == nil && c != nil {
				c.Close()
			}
		}(i)
	}
	wg.Wait()
	require.False(t, h.Closed(100*time.Millisecond), "the holder was displaced by refused clients")
	time.Sleep(700 * time.Millisecond)
	require.Equal(t, "1", e.redis.CLI("HLEN", "guard:conn:dp"), "guard:conn:dp: %q", e.redis.CLI("HGETALL", "guard:conn:dp"))
	require.Contains(t, e.redis.CLI("HGETALL", "guard:conn:dp"), "127.12.10.1")

	e.redis.CLI("SET", "guard:block:clientid:dp", "r12")
	require.True(t, h.Closed(2*time.Second), "the holder of \"dp\" not kicked by its client ID's ban after refused takeovers")
	e.logLine("event=kicked ip=127.12.10.1 ", `client_id="dp"`)
	e.redis.CLI("DEL", "guard:block:clientid:dp")
	time.Sleep(200 * time.Millisecond)

	// A takeover Mosquitto lets in.
	h, code = holder.dial(t)
	require.EqualValues(t, accepted, code)
	time.Sleep(700 * time.Millisecond)
	n, code := mk("127.12.10.2", "alice-pw").dial(t)
	require.EqualValues(t, accepted, code)
	require.True(t, h.Closed(2*time.Second), "Mosquitto's takeover")
	_, code = mk("127.12.10.30", "wrong").dial(t)
	require.EqualValues(t, refused, code)
	time.Sleep(700 * time.Millisecond)
	e.redis.CLI("SET", "guard:block:ip:127.12.10.1", "r12")
	require.False(t, n.Closed(1*time.Second), "the new holder kicked by a ban of the displaced one's address")
	e.redis.CLI("SET", "guard:block:clientid:dp", "r12")
	require.True(t, n.Closed(2*time.Second), "the new holder of \"dp\" not kicked")
	e.logLine("event=kicked ip=127.12.10.2 ", `client_id="dp"`)
	eventually(t, 3*time.Second, func() bool { return e.redis.CLI("HLEN", "guard:conn:dp") == "0" },
		"guard:conn:dp: %q", e.redis.CLI("HGETALL", "guard:conn:dp"))
}

// envPasswd writes a mosquitto_passwd file with users' entries, for a
// broker's own password_file.
func envPasswd(t *testing.T) string {
	t.Helper()
	p := t.TempDir() + "/mosq-passwd"
	var b strings.Builder
	for u, pw := range users {
		b.WriteString(passwdLine(t, u, pw) + "\n")
	}
	require.NoError(t, os.WriteFile(p, []byte(b.String()), 0o600))
	return p
}

// r12AllowCase holds cs connected under the allow keys, then sets the ban
// keys (with viaReload: while keyspace notifications are off, beside 1 100
// filler bans, so that they reach the replica by the reload that follows
// the plugin turning notifications on again, and every connection is
// checked: README "above 1000 changed keys, every connection is checked
// once instead"), and returns who was kicked and who a new CONNECT is
// refused for. Every key is deleted after, and every client connects again.
func r12AllowCase(t *testing.T, e *env, allow, ban []string, cs []r12Client, viaReload bool) (kicked, refusedNow []string) {
	t.Helper()
	for _, k := range allow {
		e.redis.CLI("SET", k, "r12 allow")
	}
	time.Sleep(100 * time.Millisecond)
	conns := make([]*mqttc.Conn, len(cs))
	for i, c := range cs {
		conn, code := c.dial(t)
		require.EqualValues(t, accepted, code, "%s before the bans %q", c.name, ban)
		conns[i] = conn
	}
	wait := 500 * time.Millisecond
	if viaReload {
		n := strings.Count(e.broker.Output(), "keyspace notifications were turned off")
		e.redis.CLI("CONFIG", "SET", "notify-keyspace-events", "")
		args := []string{"MSET"}
		for i := 0; i < 1100; i++ {
			args = append(args, fmt.Sprintf("guard:block:clientid:r12-filler-%d", i), "filler")
		}
		for _, k := range ban {
			args = append(args, k, "r12 ban")
		}
		e.redis.CLI(args...)
		eventually(t, 10*time.Second, func() bool { return strings.Count(e.broker.Output(), "keyspace notifications were turned off") > n },
			"no reload after notifications were turned off")
		wait = time.Second
	} else {
		for _, k := range ban {
			e.redis.CLI("SET", k, "r12 ban")
		}
	}
	time.Sleep(wait)
	kicked, refusedNow = r12Outcome(t, cs, conns)
	del := append(append([]string{"DEL"}, allow...), ban...)
	if viaReload {
		for i := 0; i < 1100; i++ {
			del = append(del, fmt.Sprintf("guard:block:clientid:r12-filler-%d", i))
		}
	}
	e.redis.CLI(del...)
	for _, c := range cs {
		eventually(t, 3*time.Second, func() bool {
			conn, code := c.dial(t)
			if conn != nil {
				conn.Disconnect()
			}
			return code == accepted
		}, "%s still refused after the keys were deleted", c.name)
	}
	sort.Strings(kicked)
	sort.Strings(refusedNow)
	return kicked, refusedNow
}

// TestZZR12AllowEntriesKickAsTheyRefuse: README "allowlisted clients stay"
// and The allowlist's table (a claim lifts only clientid and username bans,
// proof lifts every ban), for clients whose client ID + username spell the
// same string ("xbob"+"bob", "xbobb"+"ob") and allow entries on each
// other's names: a ban kicks exactly the clients a new CONNECT is refused
// for, and those the table says; by notification, and by the reload that
// checks every connection.
func TestZZR12AllowEntriesKickAsTheyRefuse(t *testing.T) {
	e := newEnv(t)
	e.addUser("ob", "ob-pw")
	e.reloaded()
	e.logLine("loaded 3 users")
	a := r12Client{name: "a", addr: e.broker.Addr, ip: "127.12.11.1", id: "xbob", user: str("bob"), pass: str("bob-pw")}
	b := r12Client{name: "b", addr: e.broker.Addr, ip: "127.12.11.2", id: "xbobb", user: str("ob"), pass: str("ob-pw")}
	cs := []r12Client{a, b}
	cases := []struct {
		allow, ban []string
		want       []string
		viaReload  bool
	}{
		{[]string{"guard:allow:username:ob"}, []string{"guard:block:username:ob"}, nil, false},
		{[]string{"guard:allow:username:ob"}, []string{"guard:block:cidr:127.12.11.0/24"}, []string{"a", "b"}, false},
		{[]string{"guard:allow:ip:127.12.11.2"}, []string{"guard:block:cidr:127.12.11.0/24"}, []string{"a"}, false},
		{[]string{"guard:allow:clientid:xbob"}, []string{"guard:block:username:bob", "guard:block:username:ob"}, []string{"b"}, false},
		{[]string{"guard:allow:username:b", "guard:allow:clientid:xbo"}, []string{"guard:block:username:ob", "guard:block:clientid:xbob"}, []string{"a", "b"}, false},
		{[]string{"guard:allow:username:bob"}, []string{"guard:block:clientid:xbobb", "guard:block:clientid:xbob"}, []string{"b"}, false},
		{[]string{"guard:allow:username:ob", "guard:allow:ip:127.12.11.1"}, []string{"guard:block:cidr:127.12.11.0/24", "guard:block:username:bob"}, []string{"b"}, true},
		{[]string{"guard:allow:username:b"}, []string{"guard:block:username:ob", "guard:block:clientid:xbob"}, []string{"a", "b"}, true},
	}
	if os.Getenv("ATK_LOAD") != "1" {
		cases = append(cases[:4], cases[6])
	}
	for _, tc := range cases {
		kicked, refusedNow := r12AllowCase(t, e, tc.allow, tc.ban, cs, tc.viaReload)
		require.Equal(t, tc.want, refusedNow, "allow %q, ban %q (via reload %v): refused at CONNECT", tc.allow, tc.ban, tc.viaReload)
		require.Equal(t, tc.want, kicked, "allow %q, ban %q (via reload %v): kicked", tc.allow, tc.ban, tc.viaReload)
	}
}

// TestZZR12BanDuringTakeoverChains: 6 workers take client IDs "tk-0" ..
// "tk-3" over from each other as fast as they can (each new connection
// displaces the last, on the broker and in the plugin's index and
// g.displaced), the broker gets a SIGHUP every 80 ms (its re-check of
// every client), and a ban of "tk-1" and of username "bob" lands. A second
// after the bans, no connection on "tk-1" and none as bob is open (each was
// kicked, displaced, or refused), and alice's on the other client IDs are
// untouched by the client-ID ban.
func TestZZR12BanDuringTakeoverChains(t *testing.T) {
	e := newEnv(t)
	addr := e.broker.Addr
	type held struct {
		c        *mqttc.Conn
		id, user string
		at       time.Time
	}
	var mu sync.Mutex
	var all []held
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, h := range all {
			h.c.Close()
		}
	})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				user := "alice"
				if (w+i)%3 == 0 {
					user = "bob"
				}
				id := fmt.Sprintf("tk-%d", (w+i)%4)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				c, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: addr, SourceIP: fmt.Sprintf("127.12.12.%d", 1+w),
					ClientID: id, Username: str(user), Password: str(users[user])})
				cancel()
				if err != nil || c == nil {
					continue
				}
				if code != accepted {
					c.Close()
					continue
				}
				mu.Lock()
				all = append(all, held{c, id, user, time.Now()})
				mu.Unlock()
			}
		}(w)
	}
	wg.Add(1)
	go func() { // SIGHUPs all through: Mosquitto re-checks every client while they take over
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(80 * time.Millisecond):
				e.broker.Reload()
			}
		}
	}()
	time.Sleep(700 * time.Millisecond)
	e.redis.CLI("SET", "guard:block:clientid:tk-1", "r12")
	e.redis.CLI("SET", "guard:block:username:bob", "r12")
	banAt := time.Now()
	time.Sleep(700 * time.Millisecond)
	close(stop)
	wg.Wait()
	time.Sleep(time.Second)
	mu.Lock()
	defer mu.Unlock()
	open, after := 0, 0
	for _, h := range all {
		if h.id != "tk-1" && h.user != "bob" {
			continue
		}
		if h.at.After(banAt.Add(200 * time.Millisecond)) {
			after++
		}
		if !h.c.Closed(10 * time.Millisecond) {
			open++
			t.Errorf("open a second after the bans: client ID %q as %s, accepted %v after the bans", h.id, h.user, h.at.Sub(banAt).Round(time.Millisecond))
		}
	}
	require.Zero(t, after, "connections on tk-1 or as bob accepted more than 200 ms after the bans")
	require.Zero(t, open)
	// The live holders of tk-0, tk-2, tk-3 as alice: the newest of each may be open.
	live := map[string]int{}
	for _, h := range all {
		if h.id != "tk-1" && h.user == "alice" && !h.c.Closed(10*time.Millisecond) {
			live[h.id]++
		}
	}
	for id, n := range live {
		require.LessOrEqual(t, n, 1, "client ID %s open on %d connections", id, n)
	}
	t.Logf("%d connections in all; alice's live: %v", len(all), live)
	// Every connection closed: no live entry is left in guard:conn (the
	// re-checks admitted nothing), and no re-check refused alice.
	for _, h := range all {
		h.c.Close()
	}
	eventually(t, 5*time.Second, func() bool {
		for _, k := range strings.Fields(e.redis.CLI("--scan", "--pattern", "guard:conn:*")) {
			if e.redis.CLI("HLEN", k) != "0" {
				return false
			}
		}
		return true
	}, "live entries left in guard:conn")
	// Alice on tk-1 is refused by a re-check that comes after the client
	// ID's ban and before its kick closes her: that is the ban, and a
	// re-check that refused her for anything else is not. (Local CI failed
	// here once, 2026-12-05, on any refusal of alice; the output kept did
	// not reach the line, so whether it was this one is not known: the
	// line is printed now.)
	for _, l := range strings.Split(e.broker.Output(), "\n") {
		if hasLine(l, "event=refused", "reauth=true", `username="alice"`) && !hasLine(l, `rule="guard:block:clientid:tk-1"`, `client_id="tk-1"`) {
			t.Errorf("a re-check refused alice: %s", l)
		}
	}
}

// r12UnixConn is an MQTT 3.1.1 client on a unix socket listener (mqttc
// dials TCP only).
type r12UnixConn struct{ nc net.Conn }

// r12UnixDial connects to the unix socket path as id (user and pass when
// user is not nil) and returns the connection (nil when refused) and the
// CONNACK code.
func r12UnixDial(t *testing.T, path, id string, user, pass *string) (*r12UnixConn, byte) {
	t.Helper()
	nc, err := net.DialTimeout("unix", path, 5*time.Second)
	require.NoError(t, err)
	str16 := func(b []byte, s string) []byte { return append(append(b, byte(len(s)>>8), byte(len(s))), s...) }
	flags := byte(0x02)
	if user != nil {
		flags |= 0x80
	}
	if pass != nil {
		flags |= 0x40
	}
	body := append(str16(nil, "MQTT"), 4, flags, 0, 60)
	body = str16(body, id)
	if user != nil {
		body = str16(body, *user)
	}
	if pass != nil {
		body = str16(body, *pass)
	}
	pkt := []byte{0x10}
	for n := len(body); ; {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			pkt = append(pkt, b|0x80)
			continue
		}
		pkt = append(pkt, b)
		break
	}
	pkt = append(pkt, body...)
	require.NoError(t, nc.SetDeadline(time.Now().Add(5*time.Second)))
	_, err = nc.Write(pkt)
	require.NoError(t, err)
	ack := make([]byte, 4)
	_, err = io.ReadFull(nc, ack)
	require.NoError(t, err, "no CONNACK on the unix socket")
	require.Equal(t, byte(0x20), ack[0])
	require.NoError(t, nc.SetDeadline(time.Time{}))
	if ack[3] != 0 {
		nc.Close()
		return nil, ack[3]
	}
	t.Cleanup(func() { nc.Close() })
	return &r12UnixConn{nc}, 0
}

// closed reports whether the broker closes c within d.
func (c *r12UnixConn) closed(d time.Duration) bool {
	_ = c.nc.SetReadDeadline(time.Now().Add(d))
	var b [64]byte
	for {
		_, err := c.nc.Read(b[:])
		if err == nil {
			continue
		}
		var ne net.Error
		return !(errors.As(err, &ne) && ne.Timeout())
	}
}

// TestZZR12UnixSocketClients: a client on a unix socket listener has no IP
// (Mosquitto gives the socket's path as its address; the record keeps it
// beside, not in, its 16-byte IP). A client-ID or username ban kicks it and
// refuses it after (README: "client ID, username, IP and range bans
// alike"), and its kicked line names its address as its refused lines do
// (before, ip="" where the refusal said ip="/path/to/socket"); an ip or
// range ban that covers every address kicks nobody there nor refuses it
// (it has none), and the broker answers all along.
func TestZZR12UnixSocketClients(t *testing.T) {
	dir, err := os.MkdirTemp("", "r12sock")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := dir + "/m.sock"
	e := newEnv(t, "listener 0 "+sock)
	alice, alicePw := str("alice"), str("alice-pw")
	c, code := r12UnixDial(t, sock, "ux-1", alice, alicePw)
	require.EqualValues(t, accepted, code)
	d, code := r12UnixDial(t, sock, "ux-2", str("bob"), str("bob-pw"))
	require.EqualValues(t, accepted, code)

	e.redis.CLI("SET", "guard:block:cidr:0.0.0.0/0", "r12")
	e.redis.CLI("SET", "guard:block:cidr:::/0", "r12")
	require.False(t, c.closed(700*time.Millisecond), "a unix socket client kicked by a range ban")
	e.redis.CLI("DEL", "guard:block:cidr:0.0.0.0/0", "guard:block:cidr:::/0")

	e.redis.CLI("SET", "guard:block:clientid:ux-1", "r12")
	require.True(t, c.closed(2*time.Second), "a unix socket client not kicked by its client ID's ban")
	require.False(t, d.closed(300*time.Millisecond), "ux-2 kicked by the ban of ux-1")
	_, code = r12UnixDial(t, sock, "ux-1", alice, alicePw)
	require.EqualValues(t, refused, code)
	// The kicked line names the client's address as its refused lines do
	// (the socket's path: Mosquitto's address for the client), not ip="".
	kickedLine := e.logLine("event=kicked ", `client_id="ux-1"`)
	refusedLine := e.logLine("event=refused ", `client_id="ux-1"`)
	addrOf := func(l string) string {
		i := strings.Index(l, "ip=")
		require.GreaterOrEqual(t, i, 0, l)
		return strings.Fields(l[i:])[0]
	}
	require.Equal(t, addrOf(refusedLine), addrOf(kickedLine), "the kicked line's ip against the refused line's:\n%s\n%s", kickedLine, refusedLine)
	require.NotEqual(t, `ip=""`, addrOf(kickedLine), kickedLine)
	e.redis.CLI("SET", "guard:block:username:bob", "r12")
	require.True(t, d.closed(2*time.Second), "a unix socket client not kicked by its username's ban")
	e.expect(as("127.12.13.1", "tcp-1", "alice", "alice-pw"), accepted)
}

// TestZZR12ReusedHandlesAllKicked: the connection table is keyed by the
// broker's pointer to a client, which the allocator hands out again as
// soon as a client is freed, and a DISCONNECT is held in C until the next
// callback into Go. A client that connects and leaves at once, then one
// that connects and stays (likely on the freed pointer), 300 times over:
// a ban of the stayers' range kicks every one of them, and none of the
// leavers' range is live in guard:conn afterwards.
func TestZZR12ReusedHandlesAllKicked(t *testing.T) {
	e := newEnv(t)
	addr := e.broker.Addr
	dial := func(ip, id string) *mqttc.Conn {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: addr, SourceIP: ip, ClientID: id, Username: str("alice"), Password: str("alice-pw")})
		require.NoError(t, err)
		require.EqualValues(t, accepted, code)
		t.Cleanup(func() { c.Close() })
		return c
	}
	n := 300
	stayers := make([]*mqttc.Conn, 0, n)
	for i := 0; i < n; i++ {
		l := dial(fmt.Sprintf("127.12.14.%d", 1+i%250), fmt.Sprintf("leave-%d", i))
		if i%2 == 0 {
			l.Disconnect()
		} else {
			l.Close() // no DISCONNECT packet: the broker sees the socket close
		}
		stayers = append(stayers, dial(fmt.Sprintf("127.12.15.%d", 1+i%250), fmt.Sprintf("stay-%d", i)))
	}
	e.redis.CLI("SET", "guard:block:cidr:127.12.15.0/24", "r12")
	deadline := time.Now().Add(2 * time.Second)
	open := 0
	for i, c := range stayers {
		if !c.Closed(max(time.Until(deadline), 10*time.Millisecond)) {
			open++
			t.Errorf("stay-%d not kicked", i)
		}
	}
	require.Zero(t, open)
	eventually(t, 5*time.Second, func() bool {
		for _, k := range strings.Fields(e.redis.CLI("--scan", "--pattern", "guard:conn:*")) {
			if e.redis.CLI("HLEN", k) != "0" {
				return false
			}
		}
		return true
	}, "live entries left in guard:conn")
}

// TestZZR12UnixSocketGuessesCountOnlyByUsername: what README Known limits
// says of clients on a unix socket listener: they have no IP, so under
// fail_scopes ip their failures are never counted toward a ban (fail_limit
// 3 here: 22 wrong passwords, none refused by rule=fail-limit, no ban
// written); the username throttle counts them (it throttles bob at its
// 20th failure), and their lines name the socket's path as ip.
func TestZZR12UnixSocketGuessesCountOnlyByUsername(t *testing.T) {
	dir, err := os.MkdirTemp("", "r12sock")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := dir + "/m.sock"
	e := newEnv(t, "listener 0 "+sock, "auth_opt_fail_limit 3")
	for i := 0; i < 22; i++ {
		_, code := r12UnixDial(t, sock, fmt.Sprintf("g-%d", i), str("bob"), str("wrong"))
		require.EqualValues(t, refused, code)
	}
	l := e.logLine("event=throttled ", `username="bob"`)
	require.Contains(t, l, "limit=20", l)
	out := e.broker.Output()
	require.False(t, hasLine(out, "rule=fail-limit"), "a unix socket client's failures counted by fail_limit:\n%s", out)
	require.False(t, hasLine(out, "event=banned"), "a ban written:\n%s", out)
	require.Empty(t, strings.TrimSpace(e.redis.CLI("--scan", "--pattern", "guard:block:*")))
	require.True(t, hasLine(out, "event=refused ip="+strconvQuote(sock)+" rule=bad-password"), "the refusal's ip is not the socket's path:\n%s", out)
	// Alice over the socket is not throttled.
	_, code := r12UnixDial(t, sock, "a-1", str("alice"), str("alice-pw"))
	require.EqualValues(t, accepted, code)

	// With the clientid scope on, one client ID guessing over the socket is banned.
	sock2 := dir + "/m2.sock"
	e2 := newEnv(t, "listener 0 "+sock2, "auth_opt_fail_limit 3", "auth_opt_fail_scopes ip clientid")
	for i := 0; i < 5; i++ {
		r12UnixDial(t, sock2, "guesser", str("alice"), str("wrong"))
	}
	eventually(t, 3*time.Second, func() bool { return e2.redis.CLI("EXISTS", "guard:block:clientid:guesser") == "1" },
		"no clientid ban for a unix socket guesser under fail_scopes ip clientid:\n%s", e2.broker.Output())
}

func strconvQuote(s string) string { return fmt.Sprintf("%q", s) }

// TestZZR12PerListenerKicksAtTheNextConnect: README Known limits, "with
// per_listener_settings true Mosquitto 2.0.11 to 2.0.14 sends no tick, so
// they [kicks] wait for the next new CONNECT". Two listeners, each its own
// plugin instance (its own connection table); a client of each as alice;
// a ban of alice; then one new CONNECT, on the first listener only: both
// kicks land (the next new CONNECT, whichever listener it comes to).
func TestZZR12PerListenerKicksAtTheNextConnect(t *testing.T) {
	testenv.Need(t, "mosquitto", "mosquitto_passwd", "redis-server", "redis-cli")
	e := &env{t: t, dir: t.TempDir()}
	e.passwd = e.dir + "/passwd"
	e.addUser("alice", "alice-pw")
	e.addUser("bob", "bob-pw")
	e.redis = startRedis(t)
	p2 := testenv.FreePort(t)
	conf := "per_listener_settings true\nlistener {{PORT}} 127.0.0.1\n" + e.conf() +
		fmt.Sprintf("listener %d 127.0.0.1\n", p2) + e.conf()
	e.broker = startBroker(t, conf)
	addr2 := fmt.Sprintf("127.0.0.1:%d", p2)
	eventually(t, 5*time.Second, func() bool { return strings.Count(e.broker.Output(), "mosquitto-guard: ready") >= 2 }, "two instances")
	c1 := r12Client{name: "l1", addr: e.broker.Addr, ip: "127.12.16.1", id: "pl-1", user: str("alice"), pass: str("alice-pw")}
	c2 := r12Client{name: "l2", addr: addr2, ip: "127.12.16.2", id: "pl-2", user: str("alice"), pass: str("alice-pw")}
	k1, code := c1.dial(t)
	require.EqualValues(t, accepted, code)
	k2, code := c2.dial(t)
	require.EqualValues(t, accepted, code)
	e.redis.CLI("SET", "guard:block:username:alice", "r12")
	time.Sleep(500 * time.Millisecond) // the ban in both replicas; no tick
	b := r12Client{name: "b", addr: e.broker.Addr, ip: "127.12.16.3", id: "pl-b", user: str("bob"), pass: str("bob-pw")}
	bc, code := b.dial(t)
	require.EqualValues(t, accepted, code)
	defer bc.Close()
	one, two := k1.Closed(time.Second), k2.Closed(time.Second)
	t.Logf("after one CONNECT on listener 1: listener 1's client kicked %v, listener 2's %v", one, two)
	require.True(t, one, "listener 1's banned client not kicked at the next CONNECT")
	require.True(t, two, "listener 2's banned client not kicked at the next CONNECT (it came to listener 1)")
}
