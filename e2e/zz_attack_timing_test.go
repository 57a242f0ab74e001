package e2e

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"
)

// A network attacker's view of user enumeration, around the timing fix of
// TestZZUnknownUserTiming: what a client sees (the CONNACK code, how long it
// takes) for an existing username against a made-up one, through the
// throttle, long and look-alike usernames, and password closeness. Timing
// comparisons: the two kinds interleaved, medians and deciles, judged with
// the tolerance of TestZZUnknownUserTiming (10% + 0.1 ms); the machine is
// shared, so a failure is rerun before it is called a finding.

// zzTimed connects c and returns its CONNACK code and how long the CONNECT
// took, dial to CONNACK.
func (e *env) zzTimed(c client) (byte, time.Duration) {
	e.t.Helper()
	s := time.Now()
	code := e.connect(c)
	return code, time.Since(s)
}

// zzDeciles is d's 10th, 25th, 50th, 75th and 90th percentiles (d sorted).
func zzDeciles(d []time.Duration) string {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	r := func(x time.Duration) time.Duration { return x.Round(10 * time.Microsecond) }
	return fmt.Sprint(r(d[len(d)/10]), r(d[len(d)/4]), r(d[len(d)/2]), r(d[3*len(d)/4]), r(d[9*len(d)/10]))
}

// zzCompare times n CONNECTs of each of a and b, interleaved (the order of
// each pair alternating), expects every CONNACK to be want, logs the
// deciles and reports whether the medians are within 10% + 0.1 ms of a's.
func (e *env) zzCompare(tag string, n int, want byte, a, b func(i int) client) bool {
	e.t.Helper()
	var da, db []time.Duration
	for i := 0; i < n; i++ {
		for j := 0; j < 2; j++ {
			if (i+j)%2 == 0 {
				code, d := e.zzTimed(a(i))
				require.EqualValues(e.t, want, code, "%s: a, sample %d", tag, i)
				da = append(da, d)
			} else {
				code, d := e.zzTimed(b(i))
				require.EqualValues(e.t, want, code, "%s: b, sample %d", tag, i)
				db = append(db, d)
			}
		}
	}
	qa, qb := zzDeciles(da), zzDeciles(db)
	ma, mb := da[len(da)/2], db[len(db)/2]
	e.t.Logf("%s: deciles 10/25/50/75/90: a %s; b %s", tag, qa, qb)
	tol := ma/10 + 100*time.Microsecond
	diff := ma - mb
	if diff < 0 {
		diff = -diff
	}
	return diff <= tol
}

// zzTimingEnv starts a broker whose users all have $7$ hashes of rounds
// rounds (one class: nothing documented to leak) under backend ("files" or
// "redis"), plus extra options.
func zzTimingEnv(t *testing.T, backend string, rounds int, users map[string]string, extra ...string) *env {
	t.Helper()
	e := envWithoutBroker(t)
	var lines []string
	for u, p := range users {
		h := mosquittoHash(p, rounds)
		lines = append(lines, u+":"+h)
		e.redis.CLI("SET", "guard:user:"+u, h)
	}
	e.zzWriteUsers(0, lines...)
	if backend == "redis" {
		extra = append(extra, "auth_opt_backend redis")
	}
	e.broker = startBroker(t, e.conf(extra...))
	require.True(t, e.broker.WaitOutput("mosquitto-guard: ready", 10*time.Second), "not ready")
	if backend == "redis" {
		require.True(t, e.broker.WaitOutput("replica loaded", 10*time.Second))
	}
	return e
}

// zzLong is a username over 256 bytes (tracked by its SHA-256 in the
// throttle's keys).
func zzLong(c string) string { return strings.Repeat(c, 300) }

// TestZZThrottleTellsNoUsernameApart: README, Automatic bans: "Unknown
// usernames are counted and throttled the same way: a throttle (a fast,
// unchecked refusal) must not tell an attacker which usernames exist". An
// attacker from sources the username never authenticated from guesses an
// existing username (alice; and one of 300 bytes) and made-up ones until
// each is throttled, and counts the slow (checked) refusals before the
// fast (throttled) ones: alike. Then times throttled refusals, interleaved:
// existing ones go through the known-sources path (known.go: a look-up and
// a background load of the set), made-up ones do not. Files and redis
// backends.
func TestZZThrottleTellsNoUsernameApart(t *testing.T) {
	for _, backend := range []string{"files", "redis"} {
		t.Run(backend, func(t *testing.T) {
			long := zzLong("L")
			e := zzTimingEnv(t, backend, 5000, map[string]string{"alice": "alice-pw", long: "long-pw"},
				"auth_opt_fail_limit 1000000", "auth_opt_username_fail_limit 3", "auth_opt_fail_window 1m")
			// How many checked (slow) refusals before the throttle: a made-up
			// username must take as many as an existing one.
			targets := []string{"alice", "nobody-zz", long, zzLong("N")}
			checked := make([]int, len(targets))
			for k, u := range targets {
				var ds []time.Duration
				for i := 0; i < 10; i++ {
					code, d := e.zzTimed(as(fmt.Sprintf("127.0.90.%d", 1+k*20+i), fmt.Sprintf("g%d-%d", k, i), u, "zzguess"))
					require.EqualValues(t, refused, code)
					ds = append(ds, d)
				}
				// What was checked: the broker's refusal lines (the timing
				// above is the attacker's view of the same).
				out := e.broker.Output()
				for _, rule := range []string{"rule=bad-password", "rule=unknown-user"} {
					for i := 0; i < 10; i++ {
						if hasLine(out, "event=refused", rule, fmt.Sprintf("client_id=\"g%d-%d\"", k, i)) {
							checked[k]++
						}
					}
				}
				t.Logf("%.20q: %v", u, ds)
			}
			t.Logf("checked refusals before the throttle: alice %d, made-up %d, long existing %d, long made-up %d", checked[0], checked[1], checked[2], checked[3])
			assert.Equal(t, checked[0], checked[1], "existing and made-up usernames throttled after different numbers of checks")
			assert.Equal(t, checked[2], checked[3], "long existing and made-up usernames throttled after different numbers of checks")
			time.Sleep(300 * time.Millisecond) // the throttle keys in Redis and the replica

			ip := func(i int) string { return fmt.Sprintf("127.0.91.%d", 1+i%250) }
			user := func(u string) func(i int) client {
				return func(i int) client { return as(ip(i), fmt.Sprintf("t%d", i), u, "zzguess") }
			}
			ok := true
			for round := 0; round < 3; round++ {
				ok = e.zzCompare(fmt.Sprintf("%s throttled: a alice, b made-up", backend), 200, refused, user("alice"), user("nobody-zz")) &&
					e.zzCompare(fmt.Sprintf("%s throttled: a long existing, b long made-up", backend), 200, refused, user(long), user(zzLong("N")))
				if ok {
					break
				}
			}
			assert.True(t, ok, "throttled refusals tell existing usernames apart in 3 rounds out of 3")
			zzNoPassword(t, e)
		})
	}
}

// TestZZLookAlikeAndLongUsernamesCostAlike: the known user's wrong password
// against made-up usernames that look like it (case, spaces, a combining
// accent, a zero-width space, a prefix, an over-long one), and a long
// existing username against a long made-up one; then the password side:
// a near miss of alice's password (one character off, a prefix, a trailing
// space) against a far one, which must cost alike (no early exit on a
// partly right password). Every user a $7$ 5000-round hash; no throttle.
func TestZZLookAlikeAndLongUsernamesCostAlike(t *testing.T) {
	for _, backend := range []string{"files", "redis"} {
		t.Run(backend, func(t *testing.T) {
			long := zzLong("L")
			e := zzTimingEnv(t, backend, 5000, map[string]string{"alice": "alice-pw", long: "long-pw"},
				"auth_opt_fail_limit 1000000", "auth_opt_username_fail_limit 0")
			ip := func(i int) string { return fmt.Sprintf("127.0.92.%d", 1+i%250) }
			looks := []string{"Alice", "ALICE", "alice ", " alice", "alic", "alice-", "ali\u0301ce", "alic\u00e9", "alice\u200b", "аlice" /* Cyrillic а */, zzLong("a")}
			alice := func(i int) client { return as(ip(i), "k", "alice", "zzguess") }
			look := func(i int) client { return as(ip(i), "u", looks[i%len(looks)], "zzguess") }
			near := []string{"alice-pX", "alice-p", "alice-pw ", "Alice-pw", "alice-pw\u200b"}
			nearPw := func(i int) client { return as(ip(i), "n", "alice", near[i%len(near)]) }
			farPw := func(i int) client { return as(ip(i), "f", "alice", "zzguess-far") }
			longKnown := func(i int) client { return as(ip(i), "l", long, "zzguess") }
			longMadeUp := func(i int) client { return as(ip(i), "m", zzLong("N"), "zzguess") }
			for _, c := range []struct {
				tag  string
				a, b func(int) client
			}{
				{"a alice, b look-alike made-up usernames", alice, look},
				{"a long existing, b long made-up", longKnown, longMadeUp},
				{"a alice far password, b near misses", farPw, nearPw},
			} {
				ok := false
				for round := 0; round < 3 && !ok; round++ {
					ok = e.zzCompare(backend+": "+c.tag, 200, refused, c.a, c.b)
				}
				assert.True(t, ok, "%s: %s: told apart in 3 rounds out of 3", backend, c.tag)
			}
			zzNoPassword(t, e)
		})
	}
}

// TestZZRedisBackendMixedCostsWarned: README, Timing: "A file that mixes
// hash costs still lets an attacker tell its cheaper-hash users from absent
// ones; the plugin warns at load". The redis backend's unknown users cost
// its most expensive user: a cheaper user is told apart in the same way
// (measured here: bob, mosquitto_passwd's default $7$ 101 rounds, against
// made-up usernames, with alice at 20 000 rounds). The operator must hear of
// it in both backends.
func TestZZRedisBackendMixedCostsWarned(t *testing.T) {
	for _, backend := range []string{"files", "redis"} {
		t.Run(backend, func(t *testing.T) {
			e := zzAliceAndBob(t, backend, mosquittoHash("alice-pw", 20000), zzHash(t, "bob-pw"))
			ip := func(i int) string { return fmt.Sprintf("127.0.93.%d", 1+i%250) }
			told := !e.zzCompare(backend+": a bob (101 rounds), b made-up (alice: 20 000 rounds)", 200, refused,
				func(i int) client { return as(ip(i), "b", "bob", "zzguess") },
				func(i int) client { return as(ip(i), "u", fmt.Sprintf("nobody%d", i), "zzguess") })
			t.Logf("%s: bob told from made-up usernames: %v; %s", backend, told, findLine(e.broker.Output(), "mixes hash costs"))
			assert.True(t, strings.Contains(e.broker.Output(), "mixes hash costs"),
				"%s backend: users whose hash is far cheaper than the most expensive one are told from unknown users, and no warning says so", backend)
			if backend == "redis" {
				// A cheap user added later: told apart as soon as it exists.
				e.redis.CLI("SET", "guard:user:dave", zzHash(t, "dave-pw"))
				e.logLine("mixes hash costs", "guard:user:dave")
				// A costlier one is no mix of costs.
				e.redis.CLI("SET", "guard:user:erin", mosquittoHash("erin-pw", 40000))
				eventually(t, 2*time.Second, func() bool { return e.connect(as("127.0.93.251", "e", "erin", "erin-pw")) == accepted }, "erin")
				assert.NotContains(t, e.broker.Output(), "guard:user:erin")
			}
			zzNoPassword(t, e)
		})
	}
}

// TestZZRedisBackendModelUserExpires: the redis backend's unknown users
// cost its most expensive user (the model). README: it follows "every user
// key added, changed or deleted as the replica hears of it". A user key
// with a TTL that expires, and one deleted, is such a change: once the
// 20 000-round user is gone, the 5000-round users must not be told apart
// from made-up usernames by costing a quarter of them.
func TestZZRedisBackendModelUserExpires(t *testing.T) {
	e := zzTimingEnv(t, "redis", 5000, map[string]string{"bob": "bob-pw", "carol": "carol-pw"},
		"auth_opt_fail_limit 1000000", "auth_opt_username_fail_limit 0")
	ip := func(i int) string { return fmt.Sprintf("127.0.94.%d", 1+i%250) }
	bob := func(i int) client { return as(ip(i), "b", "bob", "zzguess") }
	made := func(i int) client { return as(ip(i), "u", fmt.Sprintf("nobody%d", i), "zzguess") }
	for _, gone := range []string{"expired", "deleted"} {
		e.redis.CLI("SET", "guard:user:alice", mosquittoHash("alice-pw", 20000), "PX", "1500")
		eventually(t, 3*time.Second, func() bool { return e.connect(as("127.0.94.251", "a", "alice", "alice-pw")) == accepted }, "alice")
		if gone == "deleted" {
			e.redis.CLI("PERSIST", "guard:user:alice")
			e.redis.CLI("DEL", "guard:user:alice")
		}
		eventually(t, 5*time.Second, func() bool { return e.connect(as("127.0.94.252", "a", "alice", "alice-pw")) == refused }, "alice still there")
		time.Sleep(200 * time.Millisecond)
		ok := false
		for round := 0; round < 3 && !ok; round++ {
			ok = e.zzCompare("alice "+gone+": a bob, b made-up", 200, refused, bob, made)
		}
		assert.True(t, ok, "alice %s: bob told from made-up usernames in 3 rounds out of 3", gone)
	}
}

// TestZZDeferBackendUnknownUserTiming: README, Timing: "An unknown user
// costs what a known one costs, in every backend". With backend defer the
// plugin checks no password: Mosquitto's own password_file does (README,
// Backends). Is an unknown username answered as slowly as a known one's
// wrong password there? ($7$ 20 000 rounds for every user.) No: Mosquitto
// 2.0.11 answers a username it does not have without hashing (a known
// user's wrong password 17.9 ms at the median, a made-up username 0.9 ms).
// That is Mosquitto's; the plugin checks no password in this mode. It now
// warns at start that backend defer leaves the passwords to such a check,
// and the README says so.
func TestZZDeferBackendUnknownUserTiming(t *testing.T) {
	e := envWithoutBroker(t)
	e.zzWriteUsers(0, "alice:"+mosquittoHash("alice-pw", 20000), "bob:"+mosquittoHash("bob-pw", 20000))
	e.broker = startBroker(t, e.conf("auth_opt_backend defer", "password_file "+e.passwd))
	require.True(t, e.broker.WaitOutput("mosquitto-guard: ready", 10*time.Second))
	require.EqualValues(t, accepted, e.connect(as("127.0.95.250", "a", "alice", "alice-pw")), "Mosquitto's own check")
	ip := func(i int) string { return fmt.Sprintf("127.0.95.%d", 1+i%240) }
	e.logLine("backend defer: passwords are left to Mosquitto's own password_file")
	told := !e.zzCompare("defer: a alice wrong password, b made-up", 200, refused,
		func(i int) client { return as(ip(i), "k", "alice", "zzguess") },
		func(i int) client { return as(ip(i), "u", fmt.Sprintf("nobody%d", i), "zzguess") })
	t.Logf("backend defer, Mosquitto's password_file: made-up usernames told apart: %v", told)

	// Without a password_file in the broker's config, no such line.
	o := envWithoutBroker(t)
	o.broker = startBroker(t, o.conf("auth_opt_backend defer"))
	require.True(t, o.broker.WaitOutput("mosquitto-guard: ready", 10*time.Second))
	assert.NotContains(t, o.broker.Output(), "backend defer: passwords are left")
}

// TestZZLapsedThrottleClaimAlike: README, the throttle: once a username's
// throttle lapses, "a source that is not known claims the guess in Redis
// first" (one round trip on the broker thread), for made-up usernames too
// ("Made-up usernames have episodes too"). An attacker probing alice and a
// made-up username, interleaved, through several lapses (fail_window 2 s):
// the passwords checked per username (the broker's lines) and the timing of
// the unchecked refusals must not tell them apart.
func TestZZLapsedThrottleClaimAlike(t *testing.T) {
	for _, backend := range []string{"files", "redis"} {
		t.Run(backend, func(t *testing.T) {
			e := zzTimingEnv(t, backend, 5000, map[string]string{"alice": "alice-pw"},
				"auth_opt_fail_limit 1000000", "auth_opt_username_fail_limit 2", "auth_opt_fail_window 2s")
			ip := func(i int) string { return fmt.Sprintf("127.0.96.%d", 1+i%250) }
			var da, dm []time.Duration
			start := time.Now()
			for i := 0; time.Since(start) < 9*time.Second; i++ {
				for j := 0; j < 2; j++ {
					if (i+j)%2 == 0 {
						code, d := e.zzTimed(as(ip(i), fmt.Sprintf("a-%d", i), "alice", "zzguess"))
						require.EqualValues(t, refused, code)
						da = append(da, d)
					} else {
						code, d := e.zzTimed(as(ip(i), fmt.Sprintf("m-%d", i), "nobody-zz", "zzguess"))
						require.EqualValues(t, refused, code)
						dm = append(dm, d)
					}
				}
				time.Sleep(5 * time.Millisecond)
			}
			out := e.broker.Output()
			count := func(rule, prefix string) int {
				n := 0
				for _, l := range strings.Split(out, "\n") {
					if strings.Contains(l, "event=refused") && strings.Contains(l, rule) && strings.Contains(l, `client_id="`+prefix) {
						n++
					}
				}
				return n
			}
			ca, cm := count("rule=bad-password", "a-"), count("rule=unknown-user", "m-")
			t.Logf("%s: %d probes each over 9 s; passwords checked: alice %d, made-up %d", backend, len(da), ca, cm)
			// The unchecked refusals: all but the slowest 2 % of each (the
			// checked ones, a few ms each, are some 7 of 1 000 and more).
			// Before, those under half the slowest decile: under the race
			// detector on a loaded machine the unchecked refusals spread
			// so wide that only 166 of 1 434 were left (a fresh-clone CI).
			fast := func(d []time.Duration) []time.Duration {
				s := append([]time.Duration(nil), d...)
				sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
				return s[:len(s)*98/100]
			}
			fa, fm := fast(da), fast(dm)
			require.Greater(t, len(fa), 200)
			require.Greater(t, len(fm), 200)
			t.Logf("%s: unchecked refusals, deciles 10/25/50/75/90: alice %s; made-up %s", backend, zzDeciles(fa), zzDeciles(fm))
			ma, mm := fa[len(fa)/2], fm[len(fm)/2]
			assert.InDelta(t, float64(ma), float64(mm), float64(ma)/10+float64(100*time.Microsecond), "unchecked refusals' medians")
			assert.InDelta(t, ca, cm, 2, "passwords checked per username")
			zzNoPassword(t, e)
		})
	}
}

// TestZZThrottleKnownSourceTellsUsernames: README, the throttle: while a
// username is throttled "its attempts are refused without a password check,
// except from a known source: an IP or a client ID that authenticated as
// that username". A made-up username has no known source, so it is always
// refused unchecked. An attacker who shares an address with a device (a
// carrier NAT, an office) or knows a device's client ID ("device IDs are
// rarely secret") throttles candidate usernames, then probes each from that
// address or with that client ID: a checked (slow) refusal says the
// username exists and that device is one of its.
//
// Found by the README-only timing attack (three runs): alice's first two
// probes by client ID checked (3.1 to 5.0 ms) then refused unchecked, every
// probe from her address checked (2.8 to 4.1 ms); the made-up username
// always 0.23 to 0.9 ms. Not fixed: a made-up username has no source to
// know, so hiding it would mean checking every throttled username's
// guesses from anywhere, which is what the throttle is for. Stated in the
// README (Known limits); this test holds the code to the bound stated
// there: by a client ID, at most two checks per fail_window on a broker;
// from a known address, every attempt checked, as for any source, which
// fail_limit bounds.
func TestZZThrottleKnownSourceTellsUsernames(t *testing.T) {
	mopt, maddr := zzMetrics(t)
	e := zzTimingEnv(t, "files", 5000, map[string]string{"alice": "alice-pw"},
		mopt, "auth_opt_fail_limit 1000000", "auth_opt_username_fail_limit 3", "auth_opt_fail_window 1m")
	require.EqualValues(t, accepted, e.connect(as("127.0.97.1", "sensor-1", "alice", "alice-pw")))
	for k, u := range []string{"alice", "nobody-zz"} {
		for i := 0; i < 6; i++ {
			require.EqualValues(t, refused, e.connect(as(fmt.Sprintf("127.0.97.%d", 100+k*10+i), "x", u, "zzguess")))
		}
	}
	time.Sleep(300 * time.Millisecond)
	// checked is how many of n probes had their password checked.
	checked := func(n int, c func(i int) client) int {
		before := zzChecked(t, maddr)
		for i := 0; i < n; i++ {
			require.EqualValues(t, refused, e.connect(c(i)))
		}
		return zzChecked(t, maddr) - before
	}
	byID := checked(4, func(i int) client { return as(fmt.Sprintf("127.0.97.%d", 50+i), "sensor-1", "alice", "zzguess") })
	byIDMade := checked(4, func(i int) client { return as(fmt.Sprintf("127.0.97.%d", 60+i), "sensor-1", "nobody-zz", "zzguess") })
	byIP := checked(4, func(i int) client { return as("127.0.97.1", fmt.Sprintf("p%d", i), "alice", "zzguess") })
	byIPMade := checked(4, func(i int) client { return as("127.0.97.1", fmt.Sprintf("q%d", i), "nobody-zz", "zzguess") })
	t.Logf("throttled, 4 probes each: checked with alice's client ID %d (made-up username %d); from alice's address %d (made-up %d)",
		byID, byIDMade, byIP, byIPMade)
	assert.LessOrEqual(t, byID, 2, "by a client ID: two checks per fail_window")
	assert.Zero(t, byIDMade, "a made-up username has no known source")
	assert.Equal(t, 4, byIP, "a known address goes on as usual (fail_limit bounds it)")
	assert.Zero(t, byIPMade)
	zzNoPassword(t, e)
}

// TestZZNearlyAsCostlyUsersWarned: the files backend warns of users whose
// hash costs "far" less than the most expensive one (under half). A user at
// 60% of it is told apart as well as one at 1%: an unknown username costs
// the full hash, some 40% more, far past the 10% + 0.1 ms a timing attacker
// needs. bob's $7$ at 12 000 rounds beside alice's 20 000: bob against
// made-up usernames, and the warning, in both backends.
func TestZZNearlyAsCostlyUsersWarned(t *testing.T) {
	for _, backend := range []string{"files", "redis"} {
		t.Run(backend, func(t *testing.T) {
			e := zzAliceAndBob(t, backend, mosquittoHash("alice-pw", 20000), mosquittoHash("bob-pw", 12000))
			ip := func(i int) string { return fmt.Sprintf("127.0.98.%d", 1+i%250) }
			told := !e.zzCompare(backend+": a bob (12 000 rounds), b made-up (alice: 20 000 rounds)", 200, refused,
				func(i int) client { return as(ip(i), "b", "bob", "zzguess") },
				func(i int) client { return as(ip(i), "u", fmt.Sprintf("nobody%d", i), "zzguess") })
			t.Logf("%s: bob told from made-up usernames: %v; %s", backend, told, findLine(e.broker.Output(), "mixes hash costs"))
			assert.True(t, !told || strings.Contains(e.broker.Output(), "mixes hash costs"),
				"%s backend: bob is told from unknown users, and no warning says so", backend)
		})
	}
}

// TestZZOtherFormatRankedAlikeWarned: the dummy copies the class Work ranks
// most expensive, and Work ranks formats only roughly: a bcrypt-8 (alice)
// and a $7$ of 34 560 rounds (bob) have the same Work, but not the same
// cost. Whichever is the dummy, the other format's user is told from
// made-up usernames, and the operator must hear of it.
func TestZZOtherFormatRankedAlikeWarned(t *testing.T) {
	b, err := bcrypt.GenerateFromPassword([]byte("alice-pw"), 8)
	require.NoError(t, err)
	for _, backend := range []string{"files", "redis"} {
		t.Run(backend, func(t *testing.T) {
			e := zzAliceAndBob(t, backend, string(b), mosquittoHash("bob-pw", 34560))
			ip := func(i int) string { return fmt.Sprintf("127.0.99.%d", 1+i%250) }
			made := func(i int) client { return as(ip(i), "u", fmt.Sprintf("nobody%d", i), "zzguess") }
			toldA := !e.zzCompare(backend+": a alice (bcrypt-8), b made-up", 200, refused,
				func(i int) client { return as(ip(i), "a", "alice", "zzguess") }, made)
			toldB := !e.zzCompare(backend+": a bob ($7$ 34 560 rounds), b made-up", 200, refused,
				func(i int) client { return as(ip(i), "b", "bob", "zzguess") }, made)
			t.Logf("%s: told from made-up usernames: alice %v, bob %v; %s", backend, toldA, toldB, findLine(e.broker.Output(), "mixes hash costs"))
			assert.True(t, strings.Contains(e.broker.Output(), "mixes hash costs"),
				"%s backend: two formats that Work ranks alike, and no warning", backend)
		})
	}
}

// zzAliceAndBob starts a broker whose users alice and bob have the hashes
// given, in the password file and in Redis, with backend files or redis,
// failure limits out of the way.
func zzAliceAndBob(t *testing.T, backend, alice, bob string) *env {
	t.Helper()
	e := envWithoutBroker(t)
	e.zzWriteUsers(0, "alice:"+alice, "bob:"+bob)
	e.redis.CLI("SET", "guard:user:alice", alice)
	e.redis.CLI("SET", "guard:user:bob", bob)
	extra := []string{"auth_opt_fail_limit 1000000", "auth_opt_username_fail_limit 0"}
	if backend == "redis" {
		extra = append(extra, "auth_opt_backend redis")
	}
	e.broker = startBroker(t, e.conf(extra...))
	require.True(t, e.broker.WaitOutput("mosquitto-guard: ready", 10*time.Second))
	return e
}
