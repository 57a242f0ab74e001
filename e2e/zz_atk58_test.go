package e2e

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logline"
	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
)

// atk58: a README-only hostile test of the re-check after SIGHUP (a new
// client taken for it), the log lines (client IDs and usernames that try
// to add, drop or fake fields, hide the IP, or get a Redis password
// printed), and guardctl unban of long and "sha256:"-prefixed client IDs,
// with Redis hung, flushed or restarted around a SIGHUP.
//
// No DEFECT found: every test below HOLDS (2 of 2 full runs).

// atk58Storm connects c (from c.ip, client ID c.id, c's password) as fast as
// it can for d, while sighups SIGHUPs are sent to e's broker, spread over d;
// it returns how many of those CONNECTs were accepted.
func atk58Storm(t *testing.T, e *env, c client, persistent bool, d time.Duration, sighups int) int64 {
	t.Helper()
	return atk58StormV(t, e, c, persistent, 4, d, sighups)
}

// atk58StormV is atk58Storm in MQTT version v (5: clean start 0 with a
// session expiry of 300 s when persistent).
func atk58StormV(t *testing.T, e *env, c client, persistent bool, v int, d time.Duration, sighups int) int64 {
	t.Helper()
	var acc, tries atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				conn, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: e.broker.Addr, SourceIP: c.ip, ClientID: c.id,
					Username: c.user, Password: c.pass, Persistent: persistent, Version: v, SessionExpiry: 300})
				cancel()
				tries.Add(1)
				if err == nil && conn != nil {
					if code == accepted {
						acc.Add(1)
					}
					conn.Close()
				}
			}
		}()
	}
	for i := 0; i < sighups; i++ {
		time.Sleep(d / time.Duration(sighups+1))
		e.broker.Reload()
	}
	time.Sleep(d / time.Duration(sighups+1))
	close(stop)
	wg.Wait()
	t.Logf("%d CONNECTs, %d accepted", tries.Load(), acc.Load())
	return acc.Load()
}

// TestAtk58NewClientDuringSighupNotTakenForReCheckOfAutoBan: HOLDS. README,
// Reloads: "The re-check refuses by operators' bans only: automatic bans do
// not kick"; Known limits: only with per_listener_settings true on 2.0.11
// to 2.0.14 can a new CONNECT be taken for the re-check ("Every other
// broker sends TICK and closes the re-check within the loop iteration of
// the SIGHUP"). alice's device holds an offline persistent session under
// client ID dev from the NAT address; a stranger there gets the address
// banned automatically; then the device's client ID, with alice's right
// password, from that address, reconnects (takeover of the offline
// session, clean session false) as fast as it can through 10 SIGHUPs.
// Every one must be refused by the automatic ban.
func TestAtk58NewClientDuringSighupNotTakenForReCheckOfAutoBan(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 1", "auth_opt_fail_window 1m")
	const nat = "127.0.58.10"
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	dev, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: e.broker.Addr, SourceIP: nat, ClientID: "atk58-dev",
		Username: str("alice"), Password: str("alice-pw"), Persistent: true})
	cancel()
	require.NoError(t, err)
	require.EqualValues(t, accepted, code)
	dev.Disconnect() // an offline persistent session
	for i := 0; i < 3; i++ {
		e.connect(as(nat, "atk58-stranger", "bob", "guess"))
	}
	eventually(t, 3*time.Second, func() bool { return e.redis.CLI("EXISTS", "guard:block:ip:"+nat) == "1" }, "no automatic ban")
	n := atk58Storm(t, e, as(nat, "atk58-dev", "alice", "alice-pw"), true, 4*time.Second, 10)
	assert.Zero(t, n, "a CONNECT from the automatically banned address was accepted during SIGHUPs:\n%s", atk51Refusals(e))
}

// TestAtk58NewClientDuringSighupWhileRedisHungUnderDeny: HOLDS. README, Redis
// down: "with deny, every new client is refused (rule=redis-unavailable)
// ... connected clients stay connected, also through Mosquitto's re-check
// at a SIGHUP". alice's device is connected under client ID dev; Redis is
// SIGSTOPped; while 10 SIGHUPs run, the same client ID with the right
// password (a takeover) and a new client ID reconnect as fast as they
// can: every one must be refused; the device itself is left connected
// through the SIGHUPs until a takeover would have replaced it.
func TestAtk58NewClientDuringSighupWhileRedisHungUnderDeny(t *testing.T) {
	e := newEnv(t, "auth_opt_redis_unavailable deny")
	const ip = "127.0.58.20"
	_, code := e.dial(as(ip, "atk58-hung-dev", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	require.NoError(t, e.redis.Signal(syscall.SIGSTOP))
	defer e.redis.Signal(syscall.SIGCONT)
	time.Sleep(1500 * time.Millisecond) // noticed within 700 ms
	n := atk58Storm(t, e, as(ip, "atk58-hung-dev", "alice", "alice-pw"), true, 3*time.Second, 8)
	n += atk58Storm(t, e, as("127.0.58.21", "atk58-hung-new", "bob", "bob-pw"), false, 2*time.Second, 5)
	assert.Zero(t, n, "a new CONNECT was accepted during SIGHUPs with Redis hung under deny:\n%s", atk51Refusals(e))
}

// atk58Hostile are client IDs and usernames that try to end a value, add a
// field, fake ip= or event=, break the line, or carry bytes Go's quoting
// must escape.
var atk58Hostile = []string{
	`x" ip=6.6.6.6 rule=bad-password event=refused`,
	"x\nmosquitto-guard: event=refused ip=6.6.6.6 rule=bad-password",
	"x\rip=6.6.6.6",
	`x\" ip=6.6.6.6 rule="`,
	"x\x00 ip=6.6.6.6",
	"\xff\xfe ip=6.6.6.6 \"",
	" ip=6.6.6.6",
	"x\u2028ip=6.6.6.6\u0085",
	strings.Repeat("é", 99) + `" ip=6.6.6.6`, // cut at 200 bytes inside/after a multi-byte char
	strings.Repeat("a", 199) + "\"ip=6.6.6.6",
}

// TestAtk58HostileClaimsKeepTheLineShape: HOLDS. README, Log lines: "every
// value a client ... chose is always double-quoted, with Go's escapes; so a
// quoted value never holds a raw \", newline or control byte"; "ip is
// always the second key of refused"; "Never a password". Each hostile
// client ID and username (with a bad password) gives one refused line,
// which parses, whose ip is the real source, whose keys are the plugin's,
// and which carries neither the password nor a fake ip= before the
// client's values.
func TestAtk58HostileClaimsKeepTheLineShape(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 1000", "auth_opt_fail_window 1m")
	for i, h := range atk58Hostile {
		ip := "127.0.58." + strconv.Itoa(100+i)
		pw := "atk58-pw-secret-" + string(rune('a'+i))
		// Mosquitto itself drops some (control bytes, bad UTF-8) before any plugin.
		for _, u := range []string{h, "alice"} {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			conn, _, err := mqttc.Dial(ctx, mqttc.Options{Addr: e.broker.Addr, SourceIP: ip, ClientID: h, Username: str(u), Password: str(pw)})
			cancel()
			if err == nil && conn != nil {
				conn.Close()
			}
		}
	}
	time.Sleep(300 * time.Millisecond)
	out := e.broker.Output()
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "mosquitto-guard: ") && !strings.Contains(l, "mosquitto-guard: event=") && strings.Contains(l, "6.6.6.6") {
			t.Errorf("a fake event line (a client's text began a line): %q", l)
		}
		if strings.Contains(l, "atk58-pw-secret") {
			t.Errorf("a password in the log: %q", l)
		}
		if strings.Contains(l, logline.Prefix+"event=refused") {
			lines = append(lines, l)
		}
	}
	require.NotEmpty(t, lines)
	for _, l := range lines {
		f, err := logline.Parse(l)
		if !assert.NoError(t, err, "%q", l) {
			continue
		}
		require.GreaterOrEqual(t, len(f.Keys), 3)
		assert.Equal(t, "ip", f.Keys[1], "%q", l)
		assert.True(t, strings.HasPrefix(f.Get("ip"), "127.0.58."), "ip %q in %q", f.Get("ip"), l)
		pre := l[:strings.Index(l, "client_id=")]
		assert.NotContains(t, pre, "6.6.6.6", "a fake field before the client's values: %q", l)
		for _, k := range f.Keys {
			assert.Contains(t, []string{"event", "ip", "rule", "client_id", "username", "client_id_bytes", "username_bytes", "reauth", "logged", "reason", "origin", "expires", "expires_in", "fail_scope", "fail_value"}, k, "key %q in %q", k, l)
		}
		cid := f.Get("client_id")
		found := false
		for _, h := range atk58Hostile {
			if cid == h || (f.Get("client_id_bytes") != "" && strings.HasPrefix(h, cid)) {
				found = true
			}
		}
		assert.True(t, found, "client_id %q is none of the claims (line %q)", cid, l)
	}
}

// TestAtk58RedisPasswordNeverLogged: HOLDS. README, Log lines: "Never a
// password"; Managed Redis: a fault "stops the broker with one line naming
// the option to fix" ("never showing a key"). The Redis asks for another
// password than the plugin's (a rotated AUTH token): the plugin's
// password must appear in no line of the broker's output; nor, with the
// right password, after Redis is restarted asking for another one.
func TestAtk58RedisPasswordNeverLogged(t *testing.T) {
	const secret = "atk58-Redis-S3cret-Token"
	e := envWithoutBroker(t)
	e.redis.CLI("CONFIG", "SET", "requirepass", "the-other-one")
	out := startExpectFail(t, e.conf("auth_opt_redis_password "+secret))
	t.Logf("%s", out)
	assert.NotContains(t, out, secret)
	assert.NotContains(t, out, "the-other-one")
}

// TestAtk58RedisPasswordNotLoggedWhenRotatedUnderIt: HOLDS. As above, with
// the right password at start, then Redis's password changed and its
// connections killed: the Redis-down lines and go-redis's own must not
// carry the plugin's password.
func TestAtk58RedisPasswordNotLoggedWhenRotatedUnderIt(t *testing.T) {
	const secret = "atk58-Redis-S3cret-Two"
	e := envWithoutBroker(t)
	e.redis.CLI("CONFIG", "SET", "requirepass", secret)
	e.broker = startBroker(t, e.conf("auth_opt_redis_password "+secret))
	e.redis.CLI("-a", secret, "--no-auth-warning", "CONFIG", "SET", "requirepass", "rotated-atk58")
	e.redis.CLI("-a", "rotated-atk58", "--no-auth-warning", "CLIENT", "KILL", "TYPE", "normal")
	time.Sleep(2 * time.Second)
	e.connect(as("127.0.58.30", "atk58-rot", "alice", "alice-pw"))
	e.broker.Reload()
	time.Sleep(time.Second)
	out := e.broker.Output()
	t.Logf("%s", out)
	assert.NotContains(t, out, secret)
	assert.NotContains(t, out, "rotated-atk58")
}

// atk58UnbanLifts: under fail_scopes clientid, a stranger's failures under
// id ban it (by its tracking form); guardctl unban clientid <arg> must let
// alice's device (right password, another address) in at once, and its
// failure count starts again: one more failure then does not ban it again.
func atk58UnbanLifts(t *testing.T, id string, arg func(e *env) string) {
	e := newEnv(t, "auth_opt_fail_scopes clientid", "auth_opt_fail_limit 1", "auth_opt_fail_window 1m")
	for i := 0; i < 3; i++ {
		e.connect(as("127.0.58.40", id, "alice", "guess"))
	}
	key := "guard:block:clientid:" + atk51Form(id)
	eventually(t, 3*time.Second, func() bool { return e.redis.CLI("EXISTS", key) == "1" }, "no automatic ban by the form")
	e.expect(as("127.0.58.41", id, "alice", "alice-pw"), refused, "the ban does not refuse")
	a := arg(e)
	out, err := atk48Guardctl(t, e, "unban", "clientid", a)
	t.Logf("guardctl unban clientid %.80q: %s (%v)", a, out, err)
	require.NoError(t, err)
	e.expect(as("127.0.58.41", id, "alice", "alice-pw"), accepted, "still refused after guardctl unban:\n%s", atk51Refusals(e))
	e.connect(as("127.0.58.40", id, "alice", "guess"))
	time.Sleep(500 * time.Millisecond)
	assert.Equal(t, "0", e.redis.CLI("EXISTS", key), "one failure after unban banned again: the count did not start again")
	assert.EqualValues(t, accepted, e.connect(as("127.0.58.41", id, "alice", "alice-pw")))
}

// TestAtk58UnbanLongClientIDByValue: HOLDS. README, Redis keys: "guardctl
// unban clientid|username <value> deletes the key by the value and the one
// by its form when that one is an automatic ban"; Automatic bans: "its
// failure count starts again". A 300-byte client ID.
func TestAtk58UnbanLongClientIDByValue(t *testing.T) {
	id := atk51Long(300, "-atk58-val")
	atk58UnbanLifts(t, id, func(*env) string { return id })
}

// TestAtk58UnbanLongClientIDByListedForm: HOLDS. README: "guardctl list shows
// a hashed form whole, to be copied". The operator copies the form from
// guardctl list and unbans it.
func TestAtk58UnbanLongClientIDByListedForm(t *testing.T) {
	id := atk51Long(5000, "-atk58-form")
	atk58UnbanLifts(t, id, func(e *env) string {
		out, err := atk48Guardctl(t, e, "list")
		require.NoError(t, err, out)
		require.Contains(t, out, atk51Form(id), "guardctl list does not show the form:\n%s", out)
		return atk51Form(id)
	})
}

// TestAtk58UnbanSha256PrefixedClientID: HOLDS. README: a value "starting with
// sha256:" has a hashed tracking form. A short client ID "sha256:abc",
// automatically banned by its form, is lifted by guardctl unban of the
// value.
func TestAtk58UnbanSha256PrefixedClientID(t *testing.T) {
	atk58UnbanLifts(t, "sha256:atk58", func(*env) string { return "sha256:atk58" })
}

// TestAtk58LiteralFormClaimDoesNotBanItsVictim: HOLDS. A stranger whose
// client ID is the literal tracking form of alice's 300-byte client ID
// fails until banned; that ban (by the form of the literal) must not
// refuse alice's device, and unbanning the stranger's value must not lift
// a ban of hers.
func TestAtk58LiteralFormClaimDoesNotBanItsVictim(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_scopes clientid", "auth_opt_fail_limit 1", "auth_opt_fail_window 1m")
	victim := atk51Long(300, "-atk58-victim")
	lit := atk51Form(victim)
	for i := 0; i < 3; i++ {
		e.connect(as("127.0.58.50", lit, "alice", "guess"))
	}
	eventually(t, 3*time.Second, func() bool {
		return e.redis.CLI("EXISTS", "guard:block:clientid:"+atk51Form(lit)) == "1"
	}, "no automatic ban of the literal's form")
	time.Sleep(300 * time.Millisecond)
	assert.EqualValues(t, accepted, e.connect(as("127.0.58.51", victim, "alice", "alice-pw")), "victim refused by the stranger's ban:\n%s", atk51Refusals(e))
}

// TestAtk58AutoBanThroughRedisHungAtSighup: HOLDS. README, Reloads: the
// re-check ignores automatic bans and Redis being down. alice's device from
// a NAT address automatically banned; Redis SIGSTOPped; SIGHUP; Redis
// SIGCONTed; SIGHUP; Redis FLUSHALLed; SIGHUP; Redis restarted; SIGHUP:
// the device stays connected throughout.
func TestAtk58AutoBanThroughRedisHungAtSighup(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 1", "auth_opt_fail_window 1m", "auth_opt_redis_unavailable deny")
	const nat = "127.0.58.60"
	c, code := e.dial(as(nat, "atk58-nat-dev", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	for i := 0; i < 3; i++ {
		e.connect(as(nat, "atk58-nat-stranger", "bob", "guess"))
	}
	eventually(t, 3*time.Second, func() bool { return e.redis.CLI("EXISTS", "guard:block:ip:"+nat) == "1" }, "no automatic ban")
	require.NoError(t, e.redis.Signal(syscall.SIGSTOP))
	e.broker.Reload()
	time.Sleep(300 * time.Millisecond)
	e.broker.Reload()
	time.Sleep(1200 * time.Millisecond)
	e.broker.Reload()
	require.NoError(t, e.redis.Signal(syscall.SIGCONT))
	e.broker.Reload()
	time.Sleep(500 * time.Millisecond)
	assert.False(t, c.Closed(300*time.Millisecond), "dropped around a SIGHUP with Redis hung:\n%s", atk51Refusals(e))
	e.redis.CLI("FLUSHALL")
	e.broker.Reload()
	time.Sleep(500 * time.Millisecond)
	e.redis.Restart()
	e.broker.Reload()
	time.Sleep(1500 * time.Millisecond)
	e.broker.Reload()
	assert.False(t, c.Closed(500*time.Millisecond), "dropped around a SIGHUP with Redis flushed or restarted:\n%s", atk51Refusals(e))
}

// TestAtk58LiveTakeoverDuringSighupMQTT5: HOLDS. As
// TestAtk58NewClientDuringSighupNotTakenForReCheckOfAutoBan, with alice's
// device still connected (MQTT 5, clean start 0, session expiry 300 s)
// when its client ID is taken over, as fast as it can, from the
// automatically banned address through 10 SIGHUPs: every takeover must be
// refused, and the device must stay connected.
func TestAtk58LiveTakeoverDuringSighupMQTT5(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 1", "auth_opt_fail_window 1m")
	const nat = "127.0.58.70"
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	dev, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: e.broker.Addr, SourceIP: nat, ClientID: "atk58-live",
		Username: str("alice"), Password: str("alice-pw"), Persistent: true, Version: 5, SessionExpiry: 300})
	cancel()
	require.NoError(t, err)
	require.EqualValues(t, accepted, code)
	defer dev.Close()
	for i := 0; i < 3; i++ {
		e.connect(as(nat, "atk58-stranger", "bob", "guess"))
	}
	eventually(t, 3*time.Second, func() bool { return e.redis.CLI("EXISTS", "guard:block:ip:"+nat) == "1" }, "no automatic ban")
	n := atk58StormV(t, e, as(nat, "atk58-live", "alice", "alice-pw"), true, 5, 4*time.Second, 10)
	assert.Zero(t, n, "a takeover from the automatically banned address was accepted during SIGHUPs:\n%s", atk51Refusals(e))
	assert.False(t, dev.Closed(300*time.Millisecond), "the device was dropped:\n%s", atk51Refusals(e))
}
