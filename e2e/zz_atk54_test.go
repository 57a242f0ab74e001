package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
)

// atk54: a hostile pass on dba19f7 (the re-check after a reload is not
// refused for Redis being down under deny), 70a56d8 (the stop's reap) and
// 06d308b (guardctl unban of a long value's hashed form).

// atk54Dial connects id as alice (password pw) from ip; v5 and persistent
// give an MQTT 5 CONNECT with clean start 0 and the given session expiry.
func atk54Dial(t *testing.T, e *env, ip, id, pw string, v5, persistent bool, expiry uint32) (*mqttc.Conn, byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	o := mqttc.Options{Addr: e.broker.Addr, SourceIP: ip, ClientID: id,
		Username: str("alice"), Password: str(pw), Persistent: persistent, SessionExpiry: expiry}
	if v5 {
		o.Version = 5
	}
	c, code, err := mqttc.Dial(ctx, o)
	require.NoError(t, err)
	if c != nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, code
}

// atk54StaleSession leaves, in the plugin, an "offline session" entry the
// broker no longer holds: an MQTT 5 client with clean start 0 and no
// Session Expiry Interval (0: the session ends with the connection) is
// persistent to guard_client_persistent (!clean_session), so its
// DISCONNECT keeps an offline entry at its handle (cgo/main.go:322-323,
// plugin/conns.go DisconnectedKeepSession), while Mosquitto frees the
// client at once (the guard never hears of the free). The next client is
// likely allocated at one of those handles: of 40 such sessions, gdb on the
// broker showed 34 at one address and the others each at its own, all
// freed, so the guard holds several stale entries naming id.
func atk54StaleSession(t *testing.T, e *env, id string) {
	for i := 0; i < 40; i++ {
		c, code := atk54Dial(t, e, "127.0.54.1", id, "alice-pw", true, true, 0)
		require.EqualValues(t, accepted, code)
		_ = c.Disconnect()
		time.Sleep(20 * time.Millisecond)
	}
}

// DEFECT (6 of 6 runs; new with dba19f7: passes on its parent, where the
// re-check too was refused while Redis was down). dba19f7,
// plugin/connect.go: "Not the re-check after a reload ...
// New clients are refused as before" (commit message: "New clients are
// refused as before"); README, Redis down: with deny every (new) client is
// refused. With per_listener_settings true on 2.0.11 (no TICK, the walk
// stays open after the SIGHUP), a new CONNECT whose client ID is that of
// a stale offline entry at the handle it is given is taken for the
// re-check (plugin/reloadwalk.go InWalk: known(n) via Guard.ReloadVisit,
// plugin/conns.go, which accepts an offline entry with the same client ID
// that the walk has not visited): Reauthenticate lets it in while Redis is
// down under redis_unavailable deny, and admits nothing.
func TestAtk54NewConnectTakenForReCheckWhileRedisDown(t *testing.T) {
	e := perListenerEnv(t, "auth_opt_redis_unavailable deny")
	const id = "atk54-dev"
	atk54StaleSession(t, e, id)
	// The attacker's TCP connection, its CONNECT not sent yet: Mosquitto
	// allocates its client now, likely at the handle just freed (a client
	// that has sent no CONNECT is in no walk).
	raw := atk54Raw(t, e, "127.0.54.2")
	e.redis.Stop()
	time.Sleep(time.Second) // seen down (700 ms)
	e.broker.Reload()
	e.logLine("Reloading config.")
	time.Sleep(300 * time.Millisecond)
	code := raw.connect(t, id, "alice", "alice-pw")
	time.Sleep(200 * time.Millisecond)
	// Control, after: a new CONNECT of another client ID is refused.
	_, ctl := atk54Dial(t, e, "127.0.54.3", "atk54-other", "alice-pw", false, false, 0)
	t.Logf("code=%d ctl=%d\n%s", code, ctl, atk54Lines(e))
	assert.NotEqualValues(t, accepted, ctl, "control: a new CONNECT while Redis is down under deny")
	assert.NotEqualValues(t, accepted, code,
		"dba19f7: a new CONNECT must still be refused while Redis is down under deny; let in as a re-check:\n%s", atk54Lines(e))
}

// atk54Lines is the broker's guard event lines and reloads.
func atk54Lines(e *env) string {
	var b strings.Builder
	for _, l := range strings.Split(e.broker.Output(), "\n") {
		if strings.Contains(l, "event=") || strings.Contains(l, "Reloading") {
			if len(l) > 300 {
				l = l[:300] + "..."
			}
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// atk54RawConn is a TCP connection to the broker whose MQTT 3.1.1 CONNECT
// is sent later (connect).
type atk54RawConn struct{ c net.Conn }

func atk54Raw(t *testing.T, e *env, ip string) *atk54RawConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", e.broker.Addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return &atk54RawConn{c}
}

// connect sends a clean-session CONNECT and returns the CONNACK's code
// (0xff: none).
func (r *atk54RawConn) connect(t *testing.T, id, user, pass string) byte {
	t.Helper()
	pkt := mqttConnect(0x02|0x80|0x40, id, user, pass)
	_ = r.c.SetDeadline(time.Now().Add(5 * time.Second))
	_, err := r.c.Write(pkt)
	require.NoError(t, err)
	ack := make([]byte, 4)
	if _, err := io.ReadFull(r.c, ack); err != nil || ack[0] != 0x20 {
		return 0xff
	}
	return ack[3]
}

// DEFECT (6 of 6 runs; older than today's commits: fails on dba19f7's
// parent too). README, Reloads: "mosquitto-guard recognises these re-checks"
// (Mosquitto's re-check of every client it holds after a reload); 648f3ea
// made that re-check refuse by operators' bans only, so a new CONNECT
// taken for it slips past automatic bans (atk52's
// TestAtk52WalkDoesNotTakeNewConnects guards exactly this). With
// per_listener_settings true on 2.0.11, an address banned automatically
// connects after a SIGHUP with the client ID of stale offline entries
// (MQTT 5 sessions with clean start 0 and no expiry, which the broker
// freed at their DISCONNECT): let in, and, never admitted (Reauthenticate
// admits nothing), it is unknown to the guard, so an operator's ban of its
// client ID made afterwards does not disconnect it.
func TestAtk54BannedAddressTakenForReCheck(t *testing.T) {
	e := perListenerEnv(t, "auth_opt_fail_limit 1", "auth_opt_fail_window 1m")
	const banned, id = "127.0.54.30", "atk54-walk"
	for i := 0; i < 3; i++ {
		e.connect(as(banned, "atk54-stranger", "bob", "guess"))
	}
	eventually(t, 3*time.Second, func() bool { return e.redis.CLI("EXISTS", "guard:block:ip:"+banned) == "1" }, "no automatic ban")
	atk54StaleSession(t, e, id)
	raw := atk54Raw(t, e, banned)
	e.broker.Reload()
	e.logLine("Reloading config.")
	time.Sleep(300 * time.Millisecond)
	code := raw.connect(t, id, "alice", "alice-pw")
	// A control admitted before the SIGHUP (a clean session).
	ctl, ctlCode := atk54Dial(t, e, "127.0.54.31", "atk54-ctl", "alice-pw", false, false, 0)
	require.EqualValues(t, accepted, ctlCode)
	if !assert.NotEqualValues(t, accepted, code, "README: an automatically banned address is refused; a new CONNECT taken for the re-check after the SIGHUP:\n%s", atk54Lines(e)) {
		// And the guard does not know it: an operator bans both client
		// IDs; a CONNECT lets the queued kicks run (no TICK here).
		e.redis.CLI("SET", "guard:block:clientid:"+id, "operator")
		e.redis.CLI("SET", "guard:block:clientid:atk54-ctl", "operator")
		time.Sleep(300 * time.Millisecond)
		e.connect(as("127.0.54.32", "atk54-someone", "bob", "bob-pw"))
		require.True(t, ctl.Closed(3*time.Second), "control: the admitted client banned by client ID is kicked")
		_ = raw.c.SetReadDeadline(time.Now().Add(time.Second))
		_, err := raw.c.Read(make([]byte, 16))
		var ne net.Error
		timedOut := errors.As(err, &ne) && ne.Timeout()
		assert.False(t, err == nil || timedOut, "an operator's ban of the client ID did not disconnect the connection let in (never recorded):\n%s", atk54Lines(e))
	}
}

// HOLDS. The same attack without per_listener_settings (TICK delivered:
// the first TICK after the RELOAD ends the walk exactly): the CONNECT,
// read in a later loop iteration, is a new CONNECT, refused by the
// automatic ban, and not logged as a re-check.
func TestAtk54BannedAddressNotTakenWithTick(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 1", "auth_opt_fail_window 1m")
	const banned, id = "127.0.54.33", "atk54-walk"
	for i := 0; i < 3; i++ {
		e.connect(as(banned, "atk54-stranger", "bob", "guess"))
	}
	eventually(t, 3*time.Second, func() bool { return e.redis.CLI("EXISTS", "guard:block:ip:"+banned) == "1" }, "no automatic ban")
	atk54StaleSession(t, e, id)
	raw := atk54Raw(t, e, banned)
	e.broker.Reload()
	e.logLine("Reloading config.")
	time.Sleep(300 * time.Millisecond)
	code := raw.connect(t, id, "alice", "alice-pw")
	assert.NotEqualValues(t, accepted, code, "an automatically banned address let in after the SIGHUP:\n%s", atk54Lines(e))
	e.logLine("event=refused", "ip="+banned, `rule="guard:block:ip:`+banned+`"`, `client_id="`+id+`"`)
}

// HOLDS (not reproduced: 11 runs, the CONNECT sent 0 to 400 ms after the
// SIGHUP; on this machine Mosquitto ran the reload 60 to 150 ms after the
// signal, and the CONNECT was always read outside the walk's window).
// plugin/reloadwalk.go
// InWalk: "Even with TICK, a client that is none of these is a new
// CONNECT: in 2.0.x loop.c serves the websocket listeners (lws_service)
// after the walk and before the TICK, so a new websocket client can be
// authenticated inside the window; it is counted and admitted as any
// other". With TICK (no per_listener_settings), a websockets client whose
// handshake was done after the stale offline entries were left (its
// client allocated at one of their handles), sends its CONNECT right
// after the SIGHUP: lws_service reads it in the loop iteration of the
// walk, before the TICK, and known(n) (plugin/conns.go ReloadVisit) takes
// it for the re-check: let in while Redis is down under deny.
func TestAtk54WebsocketsInWalkWindowWhileRedisDown(t *testing.T) {
	e, ws := atk48WSBroker(t, "auth_opt_redis_unavailable deny")
	const id = "atk54-ws"
	atk54StaleSession(t, e, id)
	nc, br := atk54WSOpen(t, ws, "127.0.54.60")
	e.redis.Stop()
	time.Sleep(time.Second) // seen down (700 ms)
	e.broker.Reload()
	code := atk54WSConnect(t, nc, br, id, "alice", "alice-pw")
	e.logLine("Reloading config.")
	_, ctl := atk54Dial(t, e, "127.0.54.61", "atk54-other", "alice-pw", false, false, 0)
	assert.NotEqualValues(t, accepted, ctl, "control: a new CONNECT while Redis is down under deny")
	assert.NotEqualValues(t, accepted, code,
		"a new websockets CONNECT must be refused while Redis is down under deny; let in as a re-check:\n%s", atk54Lines(e))
}

// atk54WSOpen opens a websockets connection (the handshake done, no
// CONNECT sent).
func atk54WSOpen(t *testing.T, addr, ip string) (net.Conn, *bufio.Reader) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 3 * time.Second}
	nc, err := d.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(nc, "GET /mqtt HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n", addr)
	br := bufio.NewReader(nc)
	for {
		l, err := br.ReadString('\n')
		require.NoError(t, err)
		if l == "\r\n" {
			break
		}
	}
	return nc, br
}

// atk54WSConnect sends the CONNECT frame and returns the CONNACK's code
// (0xff: none).
func atk54WSConnect(t *testing.T, nc net.Conn, br *bufio.Reader, id, user, pass string) byte {
	t.Helper()
	payload := atk48Connect(id, user, pass)
	require.Less(t, len(payload), 126)
	frame := []byte{0x82, 0x80 | byte(len(payload)), 1, 2, 3, 4}
	for i, b := range payload {
		frame = append(frame, b^frame[2+i%4])
	}
	_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
	_, err := nc.Write(frame)
	require.NoError(t, err)
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(br, hdr); err != nil {
		return 0xff
	}
	body := make([]byte, hdr[1]&0x7f)
	if _, err := io.ReadFull(br, body); err != nil || len(body) < 4 {
		return 0xff
	}
	return body[3]
}

// atk54FreePort is a free loopback port (closed again: the broker binds it).
func atk54FreePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// atk54StopTimes: a broker with per_listener_settings true and listeners
// listeners (one plugin instance, one Guard, each), a device of alice's
// connected on each; Redis SIGSTOPped (hung) or stopped (refusing) 1 s
// before the SIGTERM. It returns SIGTERM to exit.
func atk54StopTime(t *testing.T, listeners int, hung bool) time.Duration {
	e := envWithoutBroker(t)
	conf := "per_listener_settings true\nlistener {{PORT}} 127.0.0.1\n" + e.conf()
	var ports []int
	for i := 1; i < listeners; i++ {
		p := atk54FreePort(t)
		ports = append(ports, p)
		conf += fmt.Sprintf("listener %d 127.0.0.1\n", p) + e.conf()
	}
	e.broker = startBroker(t, conf)
	addrs := []string{e.broker.Addr}
	for _, p := range ports {
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", p))
	}
	for i, a := range addrs {
		require.NoError(t, e.broker.WaitPort(a, 5*time.Second))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: a, SourceIP: "127.0.54.50", ClientID: fmt.Sprintf("atk54-stop-%d", i),
			Username: str("alice"), Password: str("alice-pw")})
		cancel()
		require.NoError(t, err)
		require.EqualValues(t, accepted, code)
		t.Cleanup(func() { c.Close() })
	}
	time.Sleep(300 * time.Millisecond) // the connects are written
	r := e.redis.Process
	if hung {
		require.NoError(t, r.Signal(syscall.SIGSTOP))
		t.Cleanup(func() { _ = r.Signal(syscall.SIGCONT) })
	} else {
		e.redis.Stop()
	}
	time.Sleep(time.Second)
	start := time.Now()
	require.NoError(t, e.broker.Signal(syscall.SIGTERM))
	_, done := e.broker.Wait(12 * time.Second)
	took := time.Since(start)
	if !done {
		e.broker.Kill()
	}
	t.Logf("%d listeners, Redis hung=%v: SIGTERM to exit %v; last lines:\n%s", listeners, hung, took.Round(10*time.Millisecond), atk52Tail(e.broker.Output(), 8))
	return took
}

// README, Redis down: "An unreachable Redis at start does not stop the
// broker, and one at exit does not hold it: the plugin's cleanup waits at
// most 1.5 s ... Measured: SIGTERM to exit 2.5 s or less with Redis
// refusing, hung, every sentinel down or a sentinel hung". With
// per_listener_settings true each listener is a plugin instance with its
// own Guard, which the broker closes one after the other (plugin cleanup,
// cgo/main.go guardCleanup), each bounded by closeBound alone
// (plugin/guard.go Close).

// DEFECT (3 of 3 runs; new with 70a56d8). Three listeners, Redis hung (SIGSTOP) 1 s
// before the SIGTERM: every Guard.Close now tries the reap whatever the
// health probe saw (plugin/guard.go:316-318), which the hung Redis holds
// to the 1.5 s bound, one instance after the other: 4.5 s (1.06 s on the
// parent, 0247798). Expected: 2.5 s or less.
func TestAtk54StopBoundedPerListenerHung(t *testing.T) {
	took := atk54StopTime(t, 3, true)
	assert.LessOrEqual(t, took, 2500*time.Millisecond, "README: SIGTERM to exit 2.5 s or less with Redis hung (3 listeners, per_listener_settings true)")
}

// DEFECT (3 of 3 runs; older than today's commits: 3.8 s on 70a56d8's
// parent too). Three
// listeners, Redis refusing (stopped) 1 s before the SIGTERM: each
// Guard.Close waits its full 1.5 s for background work ("stopping without
// waiting more than 1.5s" three times), one after the other: 3.7 s.
func TestAtk54StopBoundedPerListenerRefusing(t *testing.T) {
	took := atk54StopTime(t, 3, false)
	assert.LessOrEqual(t, took, 2500*time.Millisecond, "README: SIGTERM to exit 2.5 s or less with Redis refusing (3 listeners, per_listener_settings true)")
}

// HOLDS (control). One listener, Redis hung: 1.5 s (the reap held to
// closeBound), within the README's 2.5 s.
func TestAtk54StopBoundedOneListenerHung(t *testing.T) {
	took := atk54StopTime(t, 1, true)
	assert.LessOrEqual(t, took, 2500*time.Millisecond, "README: SIGTERM to exit 2.5 s or less with Redis hung")
}
