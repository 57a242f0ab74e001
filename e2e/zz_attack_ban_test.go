// Hostile tests of the failed-authentication limits (branch atk-ban), from
// the README only. Failing here on 3280750 (each run 3 or more times):
//
//   - TestZZOwnSuccessForgottenWhileRedisDown: a known IP is refused as
//     username-throttled while Redis is down (29 of 40 tries). Cause:
//     knownSources.write deleted a success it could not write from recent,
//     which is also the broker's own knowledge. Fixed.
//   - TestZZKnownSourceLostInAnEmptyRestart: after an empty restart of
//     Redis a device reconnecting was not written again for knownRefresh
//     (1 h): guard:known:bob stayed empty and the other broker refused it.
//     Fixed (knownSources.forgetWritten).
//   - TestZZThrottlePacedPastTheEpisode: bursts 26 s apart (past the
//     episode record) at two brokers got 39, 44, 44 checks in 78 s against
//     one per fail_window across brokers. Fixed (episodeFor: until the
//     username's count has expired): 14.
//   - TestZZKnownSourceAtAnotherBrokerWhileRedisDown (0, 8, 0, 8 of 30 let
//     in at B) and TestZZTwoBrokersShortBansSteadyState (19 to 20 checks in
//     16 s at two brokers against 10 to 11 at one): limits, now stated in
//     the README; the tests hold them to what it states.
//
// The rest passed from the start: the attacks whose figures matched the README.

package e2e

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// zzMetrics returns a metrics_addr option line and its address.
func zzMetrics(t *testing.T) (opt, addr string) {
	addr = "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	return "auth_opt_metrics_addr " + addr, addr
}

// zzChecked is the number of failed password checks a broker made
// (bad-password and unknown-user refusals, logged or not).
func zzChecked(t *testing.T, addr string) int {
	f := scrape(t, addr)
	n := 0
	for _, r := range []string{"bad-password", "unknown-user"} {
		if v := value(f, "mosquitto_guard_connects_total", "rule", r); v > 0 {
			n += int(v)
		}
	}
	return n
}

// zzTry connects once and returns the CONNACK code (255 on a dial error).
func zzTry(addr, ip, id, user, pass string) byte {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	conn, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: addr, SourceIP: ip, ClientID: id, Username: str(user), Password: str(pass)})
	if err != nil {
		return 255
	}
	if conn != nil {
		conn.Close()
	}
	return code
}

// zzNoPassword fails t when a broker's log holds a guessed password.
func zzNoPassword(t *testing.T, es ...*env) {
	for _, e := range es {
		assert.NotContains(t, e.broker.Output(), "zzguess", "a password in the log")
	}
}

// zzBroker starts another broker on e's Redis and password file.
func zzBroker(t *testing.T, a *env, extra ...string) *env {
	b := &env{t: t, dir: a.dir, redis: a.redis, passwd: a.passwd}
	b.broker = startBroker(t, b.conf(extra...))
	return b
}

// README (Automatic bans): "fail_limit + 1 failures inside any fail_window
// always ban" and "on one broker, however many connections run in parallel,
// no more than fail_limit + 1 passwords are checked per counted key in any
// span shorter than fail_window". The key is the IP: lying about client IDs
// and switching between existing and made-up usernames must not help.
func TestZZPerIPClaimsRotated(t *testing.T) {
	mopt, maddr := zzMetrics(t)
	e := newEnv(t, mopt, "auth_opt_fail_limit 3", "auth_opt_fail_window 1m", "auth_opt_username_fail_limit 0")
	// Claims allowlisted: they lift no IP ban and stop no count.
	e.redis.CLI("SET", "guard:allow:username:bob", "")
	e.redis.CLI("SET", "guard:allow:clientid:zz-other", "")
	time.Sleep(300 * time.Millisecond)
	users := []string{"bob", "alice", "nosuch", "", "bob\x00x"}
	for i := 0; i < 40; i++ {
		zzTry(e.broker.Addr, "127.61.0.1", fmt.Sprint("zz-id-", i), users[i%len(users)]+fmt.Sprint(i%3), "zzguess"+fmt.Sprint(i))
		zzTry(e.broker.Addr, "127.61.0.1", fmt.Sprint("zz-id-", i), users[i%2], "zzguess"+fmt.Sprint(i))
	}
	e.waitKey("guard:block:ip:127.61.0.1", true, 3*time.Second)
	c := zzChecked(t, maddr)
	pttl, _ := strconv.Atoi(e.redis.CLI("PTTL", "guard:block:ip:127.61.0.1"))
	t.Logf("80 attempts, 40 client IDs, 5 usernames: %d passwords checked; ban PTTL %d ms", c, pttl)
	assert.LessOrEqual(t, c, 4, "fail_limit+1")
	assert.EqualValues(t, refused, zzTry(e.broker.Addr, "127.61.0.1", "zz-other", "bob", "bob-pw"), "banned IP, right password, allowlisted client ID and username")
	assert.InDelta(t, 600000, pttl, 5000)
	zzNoPassword(t, e)
}

// README (The allowlist): a claim (clientid, username allow entry) lifts
// only clientid and username bans; "its failures count like anyone's, in
// every fail scope"; the throttle is lifted only by an allow entry on proof
// ("where the connection comes from ... exempt ... from the failure limits
// and the username throttle"). So an operator allowlisting the username bob
// or a gateway's client ID must not open bob to a botnet.
func TestZZClaimAllowEntriesDoNotLiftTheThrottle(t *testing.T) {
	mopt, maddr := zzMetrics(t)
	e := newEnv(t, mopt, "auth_opt_fail_limit 100", "auth_opt_fail_window 1m", "auth_opt_username_fail_limit 2")
	e.redis.CLI("SET", "guard:allow:username:bob", "")
	e.redis.CLI("SET", "guard:allow:clientid:zz-gw", "")
	time.Sleep(300 * time.Millisecond)
	for i := 0; i < 30; i++ {
		id := fmt.Sprint("zz-", i)
		if i%2 == 0 {
			id = "zz-gw"
		}
		zzTry(e.broker.Addr, fmt.Sprintf("127.62.%d.%d", i/200, 1+i%200), id, "bob", "zzguess"+fmt.Sprint(i))
	}
	c := zzChecked(t, maddr)
	t.Logf("30 fresh IPs guessing bob (allowlisted username, half with an allowlisted client ID): %d checked", c)
	assert.LessOrEqual(t, c, 3, "username_fail_limit+1")
	zzNoPassword(t, e)
}

// README (Automatic bans): "the ban is ban_time doubled for each earlier
// offence still remembered, capped at ban_max"; offences are "forgotten
// ban_max after the last ban ends".
func TestZZBanLengths(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 1", "auth_opt_fail_window 1s", "auth_opt_ban_time 1s", "auth_opt_ban_max 4s",
		"auth_opt_username_fail_limit 0")
	ip := "127.63.0.1"
	key := "guard:block:ip:" + ip
	var got []int
	ban := func() int {
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			zzTry(e.broker.Addr, ip, "zz-b", "bob", "zzguess")
			if p, _ := strconv.Atoi(e.redis.CLI("PTTL", key)); p > 0 {
				return p
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("no ban")
		return 0
	}
	for i := 0; i < 5; i++ {
		got = append(got, ban())
		e.waitKey(key, false, 6*time.Second)
	}
	t.Logf("successive ban PTTLs (ms): %v; offences key TTL %s", got, e.redis.CLI("PTTL", "guard:offences:ip:"+ip))
	want := []int{1000, 2000, 4000, 4000, 4000}
	for i := range want {
		assert.InDelta(t, want[i], got[i], 300, "ban %d", i+1)
	}
	// Forgotten ban_max after the last ban ends.
	time.Sleep(4500 * time.Millisecond)
	p := ban()
	t.Logf("after 4.5 s quiet: %d ms", p)
	assert.InDelta(t, 1000, p, 300)
	zzNoPassword(t, e)
}

// zzGuessOneIP has four workers guess from one IP at the brokers' addresses
// (round robin) for span, and returns the passwords checked in all.
func zzGuessOneIP(t *testing.T, ip string, span time.Duration, addrs []string, metrics []string) int {
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; time.Since(start) < span; i++ {
				zzTry(addrs[w%len(addrs)], ip, fmt.Sprint("zz-s", w), "bob", fmt.Sprint("zzguess", w, i))
			}
		}(w)
	}
	wg.Wait()
	n := 0
	for _, m := range metrics {
		n += zzChecked(t, m)
	}
	return n
}

// README (Automatic bans): "a key that keeps failing more often than once
// per fail_window is banned once its spare failures are spent: over a day a
// guesser gets fail_limit + 1 440 tries at 1m"; "Across N brokers sharing a
// Redis, at most N × (fail_limit + 1) are checked before the first ban
// reaches them all". One IP, bans as long as the window (ban_time =
// ban_max = fail_window: an operator who wants short bans), one broker and
// then two.
func TestZZTwoBrokersShortBansSteadyState(t *testing.T) {
	const window = 2 * time.Second
	const span = 16 * time.Second
	opts := []string{"auth_opt_fail_limit 2", "auth_opt_fail_window 2s", "auth_opt_ban_time 2s", "auth_opt_ban_max 2s",
		"auth_opt_username_fail_limit 0"}
	ma, aa := zzMetrics(t)
	mb, ab := zzMetrics(t)
	a := newEnv(t, append([]string{ma, "auth_opt_broker_name zz-a"}, opts...)...)
	one := zzGuessOneIP(t, "127.64.0.1", span, []string{a.broker.Addr}, []string{aa})
	b := zzBroker(t, a, append([]string{mb, "auth_opt_broker_name zz-b"}, opts...)...)
	before := zzChecked(t, aa)
	two := zzGuessOneIP(t, "127.64.0.2", span, []string{a.broker.Addr, b.broker.Addr}, []string{aa, ab}) - before
	t.Logf("%s of guessing from one IP: one broker %d checked (%d bans); two brokers %d checked (A %d, B %d; bans A %d, B %d)",
		span, one, a.countLines("event=banned", "127.64.0.1"), two, zzChecked(t, aa)-before, zzChecked(t, ab),
		a.countLines("event=banned", "127.64.0.2"), b.countLines("event=banned", "127.64.0.2"))
	// fail_limit + 1, then one per window, on each broker: bans that do not
	// grow give N brokers N times one broker's checks (README, Automatic
	// bans; 19 to 20 here against 10 to 11 at one, in the attacker's runs).
	bound := 2 + 1 + int(span/window)
	assert.LessOrEqual(t, one, bound, "one broker")
	assert.LessOrEqual(t, two, 2*bound, "two brokers: each broker's own count, no more")
	zzNoPassword(t, a, b)
}

// README (Automatic bans, Redis down): failures that Redis refused (it is
// stopped) are retried up to 30 s; "every counter and throttle key expires
// within username_fail_limit × fail_window of its last failure", and the
// throttle lasts "as long as its allowance needs to admit one more
// failure". A real user from a new address, right password, after the
// attack ended and Redis came back.
func TestZZThrottleAfterRedisReturns(t *testing.T) {
	mopt, maddr := zzMetrics(t)
	e := newEnv(t, mopt, "auth_opt_fail_limit 100", "auth_opt_fail_window 2s", "auth_opt_username_fail_limit 2")
	e.redis.Stop()
	eventually(t, 3*time.Second, func() bool { return value(scrape(t, maddr), "mosquitto_guard_redis_up") == 0 }, "redis not seen down")
	for i := 0; i < 6; i++ {
		zzTry(e.broker.Addr, fmt.Sprintf("127.65.0.%d", 1+i), "zz-r", "bob", "zzguess")
	}
	last := time.Now()
	// The real user, a new address each time, right password, every 100 ms
	// for 12 s; Redis comes back 4 s after the last failure.
	restarted := false
	var refusals []time.Duration
	for i := 0; time.Since(last) < 12*time.Second; i++ {
		if !restarted && time.Since(last) > 4*time.Second {
			e.redis.Restart()
			restarted = true
		}
		if zzTry(e.broker.Addr, fmt.Sprintf("127.65.%d.%d", 1+i/200, 1+i%200), "zz-real", "bob", "bob-pw") != accepted {
			refusals = append(refusals, time.Since(last).Round(10*time.Millisecond))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("checked %d; throttled lines %d; the real user refused at %v after the last failure", zzChecked(t, maddr),
		e.countLines("event=throttled"), refusals)
	require.NotEmpty(t, refusals)
	assert.Less(t, refusals[len(refusals)-1], 2*2*time.Second, "username_fail_limit × fail_window of the last failure")
	// README (the throttle): while Redis is down no throttle key is
	// written, and the first refusal on each broker tells of the episode.
	// Its ttl is then one fail_window: at most one line per window.
	n := e.countLines("logged=first-of-throttle")
	assert.True(t, n >= 1 && n <= 2, "the episode told while Redis was down: %d lines", n)
	zzNoPassword(t, e)
}

// README (Automatic bans): "A ban that disappears in a FLUSHALL or an empty
// restart of Redis is not lifted on the brokers that counted it: each
// broker's own count is kept, so flushing Redis gives a guesser no fresh
// checks there."
func TestZZEmptyRestartGivesNoFreshChecks(t *testing.T) {
	mopt, maddr := zzMetrics(t)
	e := newEnv(t, mopt, "auth_opt_fail_limit 3", "auth_opt_fail_window 1m", "auth_opt_username_fail_limit 0")
	for i := 0; i < 6; i++ {
		zzTry(e.broker.Addr, "127.66.0.1", "zz-f", "bob", "zzguess")
	}
	e.waitKey("guard:block:ip:127.66.0.1", true, 3*time.Second)
	before := zzChecked(t, maddr)
	e.redis.Restart()
	eventually(t, 5*time.Second, func() bool { return value(scrape(t, maddr), "mosquitto_guard_replica_in_step") == 1 }, "replica not back")
	for i := 0; i < 20; i++ {
		zzTry(e.broker.Addr, "127.66.0.1", fmt.Sprint("zz-f", i), "bob", "zzguess")
		time.Sleep(50 * time.Millisecond)
	}
	after := zzChecked(t, maddr)
	t.Logf("checked before the restart %d, after %d", before, after)
	assert.Equal(t, before, after)
	zzNoPassword(t, e)
}

// README (Automatic bans, the throttle): "all the sources of a username that
// are known only by their client ID ... share, on each broker, a budget of
// one failed password per fail_window (two checks)"; "Under a sustained
// attack an unknown source gets one guess per fail_window for the username,
// across all brokers"; a known IP "goes on as usual". Five devices known by
// client ID; a botnet from fresh addresses claims their IDs, and made-up
// IDs, for 12 s.
func TestZZKnownClientIDsSustained(t *testing.T) {
	const window = 2 * time.Second
	const span = 12 * time.Second
	mopt, maddr := zzMetrics(t)
	e := newEnv(t, mopt, "auth_opt_fail_limit 100000", "auth_opt_fail_window 2s", "auth_opt_username_fail_limit 2")
	for d := 0; d < 5; d++ {
		require.EqualValues(t, accepted, zzTry(e.broker.Addr, fmt.Sprintf("127.67.0.%d", 1+d), fmt.Sprint("zz-dev", d), "bob", "bob-pw"))
	}
	eventually(t, 3*time.Second, func() bool { return e.redis.CLI("ZCARD", "guard:known:bob") == "10" }, "known sources recorded")
	start := time.Now()
	var wg sync.WaitGroup
	var n atomic.Int64
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; time.Since(start) < span; i++ {
				id := fmt.Sprint("zz-dev", i%5)
				if w%2 == 1 {
					id = fmt.Sprint("zz-x", w, i)
				}
				zzTry(e.broker.Addr, fmt.Sprintf("127.%d.%d.%d", 70+w, (i/250)%250, 1+i%250), id, "bob", fmt.Sprint("zzguess", w, i))
				n.Add(1)
			}
		}(w)
	}
	// The real devices at their known addresses meanwhile.
	known, tries := 0, 0
	for time.Since(start) < span {
		tries++
		if zzTry(e.broker.Addr, "127.67.0.3", "zz-dev2", "bob", "bob-pw") == accepted {
			known++
		}
		time.Sleep(500 * time.Millisecond)
	}
	wg.Wait()
	c := zzChecked(t, maddr)
	t.Logf("%d attempts in %s: %d passwords checked; the known device let in %d times; throttled lines %d",
		n.Load(), span, c, known, e.countLines("event=throttled"))
	// username_fail_limit+1, one per window for unknown sources, and the
	// client-ID budget: two checks, then one per window.
	bound := 3 + int(span/window) + 2 + int(span/window)
	assert.LessOrEqual(t, c, bound)
	// Each of its tries (about 22, fewer when the flood slows a CONNECT:
	// the count is of tries made, not of the ones the span could hold); a
	// throttled known device would get about one in per window (6).
	assert.GreaterOrEqual(t, known, tries-1, "the device at its known address: %d tries", tries)
	zzNoPassword(t, e)
}

// README (Redis down, the throttle): "Redis not answering, each broker's own
// count decides, as before": at most N × (username_fail_limit + 1) and then
// one per fail_window per broker. Redis restarted empty every 1.5 s under
// two brokers while fresh addresses guess bob.
func TestZZTwoBrokersRedisFlapping(t *testing.T) {
	const window = 2 * time.Second
	const span = 14 * time.Second
	opts := []string{"auth_opt_fail_limit 100000", "auth_opt_fail_window 2s", "auth_opt_username_fail_limit 2"}
	ma, aa := zzMetrics(t)
	mb, ab := zzMetrics(t)
	a := newEnv(t, append([]string{ma, "auth_opt_broker_name zz-a"}, opts...)...)
	b := zzBroker(t, a, append([]string{mb, "auth_opt_broker_name zz-b"}, opts...)...)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			addr := []string{a.broker.Addr, b.broker.Addr}[w%2]
			for i := 0; time.Since(start) < span; i++ {
				zzTry(addr, fmt.Sprintf("127.%d.%d.%d", 80+w, (i/250)%250, 1+i%250), "zz-f", "bob", fmt.Sprint("zzguess", w, i))
			}
		}(w)
	}
	flaps := 0
	for time.Since(start) < span-2*time.Second {
		time.Sleep(1500 * time.Millisecond)
		t0 := time.Now()
		if flaps%2 == 0 {
			a.redis.Kill()
			a.redis.Restart()
		} else {
			_ = a.redis.Signal(syscall.SIGSTOP)
			time.Sleep(700 * time.Millisecond)
			_ = a.redis.Signal(syscall.SIGCONT)
		}
		t.Logf("flap %d at %s took %s", flaps, time.Since(start).Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
		flaps++
	}
	wg.Wait()
	ca, cb := zzChecked(t, aa), zzChecked(t, ab)
	t.Logf("%s, %d flaps: checked A %d, B %d", span, flaps, ca, cb)
	per := 3 + int(span/window) + 1
	assert.LessOrEqual(t, ca, per, "broker A")
	assert.LessOrEqual(t, cb, per, "broker B")
	for _, e := range []*env{a, b} {
		require.False(t, e.broker.Exited(), "broker exited: %s", e.broker.Output())
	}
	zzNoPassword(t, a, b)
}

// Hostile usernames and passwords through the counting and the throttle:
// 65 535-byte usernames, control bytes, a password with a newline and
// what looks like an event line. Nothing may crash, and no password may
// reach the log.
func TestZZHostileNamesThroughTheLimits(t *testing.T) {
	mopt, maddr := zzMetrics(t)
	e := newEnv(t, mopt, "auth_opt_fail_limit 3", "auth_opt_fail_window 1m", "auth_opt_username_fail_limit 2",
		"auth_opt_fail_scopes ip clientid username")
	long := strings.Repeat("u", 65535)
	names := []string{long, "bob\n2026: mosquitto-guard: event=banned", "\x01\x7f\xff\xfe", "sha256:" + strings.Repeat("0", 64)}
	for i := 0; i < 60; i++ {
		u := names[i%len(names)]
		zzTry(e.broker.Addr, fmt.Sprintf("127.90.%d.%d", i/200, 1+i%200), u, u, "zzguess\nevent=banned ip=1.2.3.4 "+fmt.Sprint(i))
	}
	t.Logf("checked %d; keys: %s", zzChecked(t, maddr), e.redis.CLI("DBSIZE"))
	require.False(t, e.broker.Exited())
	assert.EqualValues(t, accepted, zzTry(e.broker.Addr, "127.90.9.9", "zz-ok", "alice", "alice-pw"))
	zzNoPassword(t, e)
}

// README (Automatic bans): "the ban is ban_time doubled for each earlier
// offence still remembered, capped at ban_max ... when several brokers see
// the same flood only one ban is written". Two brokers see one IP's flood
// at once: each ban must be the next in 1 s, 2 s, 4 s, 8 s, not skip ahead.
func TestZZTwoBrokersBanLengths(t *testing.T) {
	opts := []string{"auth_opt_fail_limit 1", "auth_opt_fail_window 1s", "auth_opt_ban_time 1s", "auth_opt_ban_max 8s",
		"auth_opt_username_fail_limit 0"}
	a := newEnv(t, append([]string{"auth_opt_broker_name zz-a"}, opts...)...)
	b := zzBroker(t, a, append([]string{"auth_opt_broker_name zz-b"}, opts...)...)
	ip := "127.91.0.1"
	key := "guard:block:ip:" + ip
	var got []int
	var offences []string
	for round := 0; round < 4; round++ {
		start := time.Now()
		var stop atomic.Bool
		var wg sync.WaitGroup
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				addr := []string{a.broker.Addr, b.broker.Addr}[w%2]
				for !stop.Load() && time.Since(start) < 10*time.Second {
					zzTry(addr, ip, fmt.Sprint("zz-bl", w), "bob", "zzguess")
				}
			}(w)
		}
		p := 0
		for time.Since(start) < 10*time.Second {
			if p, _ = strconv.Atoi(a.redis.CLI("PTTL", key)); p > 0 {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		stop.Store(true)
		wg.Wait()
		got = append(got, p)
		offences = append(offences, a.redis.CLI("GET", "guard:offences:ip:"+ip))
		a.waitKey(key, false, 10*time.Second)
	}
	t.Logf("ban PTTLs %v ms, offences %v; ban lines A %d, B %d", got, offences,
		a.countLines("event=banned", ip), b.countLines("event=banned", ip))
	for i, want := range []int{1000, 2000, 4000, 8000} {
		assert.InDelta(t, want, got[i], 400, "ban %d", i+1)
	}
	zzNoPassword(t, a, b)
}

// README (the throttle): "Under a sustained attack an unknown source gets
// one guess per fail_window for the username, across all brokers: when a
// throttle lapses it lapses on every broker at once, so a broker that has
// seen the username throttled lately (its episode on record until 2 ×
// fail_window and up to 15 s more have passed since the username was last
// met throttled) first claims the guess". An attacker that comes back only
// after the episode is forgotten, in bursts at both brokers at once.
func TestZZThrottlePacedPastTheEpisode(t *testing.T) {
	const window = 5 * time.Second
	const limit = 6
	const pause = 2*window + 16*time.Second
	const bursts = 4
	opts := []string{"auth_opt_fail_limit 100000", "auth_opt_fail_window 5s", fmt.Sprint("auth_opt_username_fail_limit ", limit)}
	ma, aa := zzMetrics(t)
	mb, ab := zzMetrics(t)
	a := newEnv(t, append([]string{ma, "auth_opt_broker_name zz-a"}, opts...)...)
	b := zzBroker(t, a, append([]string{mb, "auth_opt_broker_name zz-b"}, opts...)...)
	start := time.Now()
	ip := 0
	var per []int
	for burst := 0; burst < bursts; burst++ {
		if burst > 0 {
			time.Sleep(time.Until(start.Add(time.Duration(burst) * pause)))
		}
		before := zzChecked(t, aa) + zzChecked(t, ab)
		var wg sync.WaitGroup
		for w := 0; w < 8; w++ {
			ip++
			wg.Add(1)
			go func(w, base int) {
				defer wg.Done()
				addr := []string{a.broker.Addr, b.broker.Addr}[w%2]
				for i := 0; i < 3; i++ {
					zzTry(addr, fmt.Sprintf("127.92.%d.%d", base%250, 1+i+10*w), "zz-p", "bob", fmt.Sprint("zzguess", w, i))
				}
			}(w, burst)
		}
		wg.Wait()
		per = append(per, zzChecked(t, aa)+zzChecked(t, ab)-before)
	}
	elapsed := time.Since(start)
	total := zzChecked(t, aa) + zzChecked(t, ab)
	t.Logf("%d bursts of 24 attempts, %s apart, over %s: checked per burst %v, total %d (A %d, B %d)",
		bursts, pause, elapsed.Round(time.Second), per, total, zzChecked(t, aa), zzChecked(t, ab))
	// Two brokers' first limit+1 each, then one per window across both.
	bound := 2*(limit+1) + int(elapsed/window) + 1
	assert.LessOrEqual(t, total, bound, "one guess per fail_window across all brokers after the first throttle")
	zzNoPassword(t, a, b)
}

// README (the throttle): while a username is throttled its attempts are
// refused unchecked "except from a known source: an IP or a client ID that
// authenticated as that username, with a verified password, within
// conflict_window. A known IP goes on as usual"; (Redis down) "passwords
// are still checked". A device known through broker A, Redis stopped, a
// botnet throttling bob at broker B: the device connects to B from its
// known address with its password.
func TestZZKnownSourceAtAnotherBrokerWhileRedisDown(t *testing.T) {
	opts := []string{"auth_opt_fail_limit 100000", "auth_opt_fail_window 3s", "auth_opt_username_fail_limit 2"}
	mb, ab := zzMetrics(t)
	a := newEnv(t, append([]string{"auth_opt_broker_name zz-a"}, opts...)...)
	b := zzBroker(t, a, append([]string{mb, "auth_opt_broker_name zz-b"}, opts...)...)
	dev := as("127.93.0.1", "zz-dev", "bob", "bob-pw")
	require.EqualValues(t, accepted, a.connect(dev))
	eventually(t, 3*time.Second, func() bool { return a.redis.CLI("ZCARD", "guard:known:bob") == "2" }, "known sources recorded")
	// Kept through the restart below, as a Redis with persistence keeps
	// it. The test's Redis has none: restarted empty, bob's set was back
	// only if A's write of the device's success at A below (made while
	// Redis was down, its connection ended since) was tried after Redis
	// was back; tried before, it waits for the device's next success at A
	// (README), and B never let the device in (once in the local CI: run
	// 46, where A's tracking of that success also failed, "connection
	// refused", in the second before Redis came back).
	a.redis.CLI("SAVE")
	a.redis.Stop()
	eventually(t, 3*time.Second, func() bool { return value(scrape(t, ab), "mosquitto_guard_redis_up") == 0 }, "redis not seen down")
	start := time.Now()
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; !stop.Load(); i++ {
			zzTry(b.broker.Addr, fmt.Sprintf("127.93.%d.%d", 1+(i/250)%250, 1+i%250), "zz-x", "bob", fmt.Sprint("zzguess", i))
			time.Sleep(20 * time.Millisecond)
		}
	}()
	time.Sleep(500 * time.Millisecond)
	ok, tries := 0, 0
	for time.Since(start) < 8*time.Second {
		tries++
		if zzTry(b.broker.Addr, dev.ip, dev.id, "bob", "bob-pw") == accepted {
			ok++
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("the known device at broker B while Redis is down and bob throttled there: let in %d of %d; checked at B %d",
		ok, tries, zzChecked(t, ab))
	// README (the throttle): while Redis is down a broker knows the sources
	// it saw succeed itself and the sets it loaded before; B did neither.
	// At A, which saw the success itself, the device goes on as usual:
	assert.EqualValues(t, accepted, zzTry(a.broker.Addr, dev.ip, dev.id, "bob", "bob-pw"), "A knows what it saw")
	// and at B once Redis answers again (B loads bob's set), the botnet
	// still at it.
	a.redis.Restart()
	back := time.Now()
	eventually(t, 10*time.Second, func() bool { return zzTry(b.broker.Addr, dev.ip, dev.id, "bob", "bob-pw") == accepted },
		"the known device let in at B once Redis is back")
	t.Logf("the known device let in at B %s after Redis came back", time.Since(back).Round(10*time.Millisecond))
	stop.Store(true)
	wg.Wait()
	zzNoPassword(t, a, b)
}

// README (the throttle): "When a throttle starts, each broker loads the
// username's set into memory ...; it also knows the successes it saw
// itself." One broker, Redis down: the device succeeds at this broker,
// then a botnet throttles bob here; the device comes back from its
// address with its password.
func TestZZOwnSuccessForgottenWhileRedisDown(t *testing.T) {
	mopt, maddr := zzMetrics(t)
	e := newEnv(t, mopt, "auth_opt_fail_limit 100000", "auth_opt_fail_window 3s", "auth_opt_username_fail_limit 2")
	e.redis.Stop()
	eventually(t, 3*time.Second, func() bool { return value(scrape(t, maddr), "mosquitto_guard_redis_up") == 0 }, "redis not seen down")
	dev := as("127.94.0.1", "zz-dev", "bob", "bob-pw")
	require.EqualValues(t, accepted, e.connect(dev), "before the attack")
	for i := 0; i < 6; i++ {
		zzTry(e.broker.Addr, fmt.Sprintf("127.94.1.%d", 1+i), "zz-x", "bob", fmt.Sprint("zzguess", i))
	}
	got := e.connect(dev)
	t.Logf("the device, seen succeeding by this broker, right after bob's throttle: CONNACK %d; checked %d", got, zzChecked(t, maddr))
	assert.EqualValues(t, accepted, got, "a known IP goes on as usual")
	// The botnet goes on; the device comes back every 250 ms.
	start := time.Now()
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; !stop.Load(); i++ {
			zzTry(e.broker.Addr, fmt.Sprintf("127.94.%d.%d", 2+(i/250)%250, 1+i%250), "zz-x", "bob", fmt.Sprint("zzguess", i))
			time.Sleep(20 * time.Millisecond)
		}
	}()
	var refusedAt []time.Duration
	tries := 0
	for time.Since(start) < 10*time.Second {
		tries++
		if zzTry(e.broker.Addr, dev.ip, dev.id, "bob", "bob-pw") != accepted {
			refusedAt = append(refusedAt, time.Since(start).Round(10*time.Millisecond))
		}
		time.Sleep(250 * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("under a sustained attack: the device refused %d of %d times, at %v", len(refusedAt), tries, refusedAt)
	t.Logf("refused as username-throttled in all: %v", value(scrape(t, maddr), "mosquitto_guard_connects_total", "rule", "username-throttled"))
	for _, l := range strings.Split(e.broker.Output(), "\n") {
		if strings.Contains(l, "127.94.0.1") && strings.Contains(l, "mosquitto-guard") {
			t.Logf("%.250s", l)
		}
	}
	assert.Empty(t, refusedAt, "a known IP goes on as usual")
	zzNoPassword(t, e)
}

// README (the throttle): a known source is "an IP or a client ID that
// authenticated as that username, with a verified password, within
// conflict_window"; "When a throttle starts, each broker loads the
// username's set". Redis restarts empty (as in "A ban that disappears in a
// FLUSHALL or an empty restart of Redis"); the device reconnects at broker
// A with its password after it; then a botnet throttles bob at broker B.
func TestZZKnownSourceLostInAnEmptyRestart(t *testing.T) {
	opts := []string{"auth_opt_fail_limit 100000", "auth_opt_fail_window 3s", "auth_opt_username_fail_limit 2"}
	mb, ab := zzMetrics(t)
	a := newEnv(t, append([]string{"auth_opt_broker_name zz-a"}, opts...)...)
	b := zzBroker(t, a, append([]string{mb, "auth_opt_broker_name zz-b"}, opts...)...)
	dev := as("127.95.0.1", "zz-dev", "bob", "bob-pw")
	require.EqualValues(t, accepted, a.connect(dev))
	eventually(t, 3*time.Second, func() bool { return a.redis.CLI("ZCARD", "guard:known:bob") == "2" }, "known sources recorded")
	a.redis.Kill()
	a.redis.Restart()
	eventually(t, 5*time.Second, func() bool { return value(scrape(t, ab), "mosquitto_guard_replica_in_step") == 1 }, "B not back")
	time.Sleep(time.Second)
	require.EqualValues(t, accepted, a.connect(dev), "the device after the restart")
	time.Sleep(time.Second)
	known := a.redis.CLI("ZCARD", "guard:known:bob")
	for i := 0; i < 6; i++ {
		zzTry(b.broker.Addr, fmt.Sprintf("127.95.1.%d", 1+i), "zz-x", "bob", fmt.Sprint("zzguess", i))
	}
	got := zzTry(b.broker.Addr, dev.ip, dev.id, "bob", "bob-pw")
	time.Sleep(300 * time.Millisecond)
	got2 := zzTry(b.broker.Addr, dev.ip, dev.id, "bob", "bob-pw")
	t.Logf("guard:known:bob after the device's reconnect: %s members; the device at B during the throttle: CONNACK %d, %d", known, got, got2)
	assert.EqualValues(t, accepted, got2, "authenticated as bob within conflict_window: known")
	zzNoPassword(t, a, b)
}
