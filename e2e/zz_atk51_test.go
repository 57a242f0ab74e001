package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// atk51: a README-only hostile test of the hashed tracking form (values
// over 256 bytes or starting with "sha256:") in automatic bans, the
// username throttle and known sources, and of client-ID conflicts under
// deny with two brokers, with Redis flushed or SIGSTOPped and brokers
// sent SIGHUP.
//
// DEFECT found: an automatic ban, which does not kick, disconnects the
// connected clients it matches at the next SIGHUP (the broker's re-check
// is refused by it): TestAtk51AutoBanOf{NATAddress,LongID,ShortID}ThenSighup.
// The same refusal line lacks reauth=true, which README's Log lines gives
// a re-check's refusal (observed in those tests' output, not asserted).
//
// SUSPECTED, not tested: in TestAtk51DenyIntruderWhileRedisHungLeavesNoGhost
// alice's first claim, just after SIGCONT, was refused once (accepted 0.10
// s after), within the README's "answers again within 200 ms".

// atk51Form is the README's tracking form of a value over 256 bytes.
func atk51Form(v string) string {
	h := sha256.Sum256([]byte(v))
	return "sha256:" + hex.EncodeToString(h[:])
}

// atk51Long returns a value of n bytes: prefix, then 'p' padding, then tail
// (the same n-len(tail) first bytes for every tail).
func atk51Long(n int, tail string) string {
	return strings.Repeat("p", n-len(tail)) + tail
}

// TestAtk51LongClientIDsShareNoFailureCount: HOLDS. README, Automatic bans: "A
// failed authentication ... is counted for each scope in fail_scopes,
// under ... its client ID"; Redis keys: "An automatic ban under
// fail_scopes clientid ... names a value that has a hashed tracking form
// ... by that form". Two 1 000-byte client IDs that differ only in their
// last bytes are two keys. An attacker failing under one (from his own
// address) must not get the other refused: the victim's correct password
// from another address is accepted, on the broker that counted the
// attacker (its own count is "consulted on the broker thread before a
// password is checked").
func TestAtk51LongClientIDsShareNoFailureCount(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_scopes clientid", "auth_opt_fail_limit 2", "auth_opt_fail_window 1m")
	attacker := atk51Long(1000, "-attacker")
	victim := atk51Long(1000, "-victim")
	for i := 0; i < 4; i++ {
		e.connect(as("127.0.51.1", attacker, "alice", "guess"))
	}
	eventually(t, 3*time.Second, func() bool {
		return e.redis.CLI("EXISTS", "guard:block:clientid:"+atk51Form(attacker)) == "1"
	}, "the attacker's long client ID was not banned by its form")
	assert.Equal(t, "0", e.redis.CLI("EXISTS", "guard:block:clientid:"+atk51Form(victim)))
	assert.EqualValues(t, accepted, e.connect(as("127.0.51.2", victim, "alice", "alice-pw")),
		"a victim whose long client ID shares the attacker's first 991 bytes was refused:\n%s", atk51Refusals(e))
}

// atk51Refusals returns the broker's refusal lines.
func atk51Refusals(e *env) string {
	var b strings.Builder
	for _, l := range strings.Split(e.broker.Output(), "\n") {
		if strings.Contains(l, "event=refused") || strings.Contains(l, "event=throttled") || strings.Contains(l, "event=banned") {
			if len(l) > 400 {
				l = l[:400] + "..."
			}
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// TestAtk51LongUsernamesShareNoThrottle: HOLDS. README, Many sources, one
// username: failures "of each existing username are also counted from
// every source and broker"; "Unknown usernames are counted and throttled
// the same way ... Their keys use the tracking form (a username over 256
// bytes by its SHA-256)". A stranger throttling a made-up 400-byte
// username must not throttle a real user whose 400-byte username shares
// its first 390 bytes: the real user, from a new address, with his right
// password, is accepted.
func TestAtk51LongUsernamesShareNoThrottle(t *testing.T) {
	e := envWithoutBroker(t)
	victim := atk51Long(400, "-victimuser")
	e.addUser(victim, "victim-pw")
	atk48Start(t, e, "auth_opt_username_fail_limit 2", "auth_opt_fail_window 1m", "auth_opt_fail_limit 50")
	fake := atk51Long(400, "-madeupuser")
	for i := 0; i < 6; i++ {
		e.connect(as(fmt.Sprintf("127.0.51.%d", 10+i), "atk51-fake-"+strconv.Itoa(i), fake, "guess"))
	}
	eventually(t, 3*time.Second, func() bool {
		return e.redis.CLI("EXISTS", "guard:throttle:username:"+atk51Form(fake)) == "1"
	}, "the made-up username was not throttled by its form:\n%s", atk51Refusals(e))
	assert.EqualValues(t, accepted, e.connect(as("127.0.51.30", "atk51-victim", victim, "victim-pw")),
		"a real 400-byte username sharing a throttled made-up one's first 390 bytes was refused:\n%s", atk51Refusals(e))
}

// TestAtk51KnownSourcesOfLongClientIDsStaySmall: HOLDS. README, Redis keys: "the
// known-sources record adds about 100 bytes per new (username, source)
// pair"; "What a client can make Redis keep": a client chooses its client
// ID (up to 65 535 bytes) "so their size must not decide what Redis
// keeps". A client with alice's password connecting with 40 client IDs of
// 60 000 bytes each: guard:known:alice must not grow by their size.
func TestAtk51KnownSourcesOfLongClientIDsStaySmall(t *testing.T) {
	e := newEnv(t)
	const n = 40
	for i := 0; i < n; i++ {
		require.EqualValues(t, accepted, e.connect(as("127.0.51.40", atk51Long(60000, fmt.Sprintf("-%03d", i)), "alice", "alice-pw")))
	}
	var card int
	eventually(t, 5*time.Second, func() bool {
		card, _ = strconv.Atoi(e.redis.CLI("ZCARD", "guard:known:alice"))
		return card >= n
	}, "alice's sources not written")
	mem, _ := strconv.Atoi(e.redis.CLI("MEMORY", "USAGE", "guard:known:alice"))
	longest := 0
	for _, m := range strings.Split(e.redis.CLI("ZRANGE", "guard:known:alice", "0", "-1"), "\n") {
		if len(m) > longest {
			longest = len(m)
		}
	}
	t.Logf("guard:known:alice: %d members, %d bytes, longest member %d bytes", card, mem, longest)
	assert.Less(t, longest, 400, "a known-source member holds a client-chosen client ID whole")
	assert.Less(t, mem, n*1000, "guard:known:alice grew with the client IDs' size: %d bytes for %d sources", mem, card)
}

// TestAtk51AllowLongClientIDLiftsItsAutoBan: HOLDS. README: an allow
// entry on clientid lifts "only clientid and username bans", and "an allow
// key matches the value alone". An automatic ban of a 300-byte client ID
// is keyed by its form; an allow key on the client ID itself must lift it
// for that client ID, and not for another long one.
func TestAtk51AllowLongClientIDLiftsItsAutoBan(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_scopes clientid", "auth_opt_fail_limit 1", "auth_opt_fail_window 1m")
	id := atk51Long(300, "-gw")
	for i := 0; i < 3; i++ {
		e.connect(as("127.0.51.50", id, "alice", "guess"))
	}
	eventually(t, 3*time.Second, func() bool {
		return e.redis.CLI("EXISTS", "guard:block:clientid:"+atk51Form(id)) == "1"
	}, "no ban by the form")
	e.expect(as("127.0.51.51", id, "alice", "alice-pw"), refused, "banned by its form")
	e.redis.CLI("SET", "guard:allow:clientid:"+id, "gateway")
	e.expect(as("127.0.51.51", id, "alice", "alice-pw"), accepted, "an allow key on the client ID itself")
}

// TestAtk51DenyLiteralFormIsAnotherClientID: HOLDS. README: tracking keeps
// "sha256:" and 64 hex digits for a client ID over 256 bytes "and for one
// starting with sha256:, so that no client ID reads as another's hash".
// Under clientid_conflict deny with two brokers, alice holds a 300-byte
// client ID on broker-a; bob claiming the literal string of its form on
// broker-b is another client ID (accepted), and bob claiming the long
// client ID itself is refused.
func TestAtk51DenyLiteralFormIsAnotherClientID(t *testing.T) {
	a, b := twoBrokers(t, "auth_opt_clientid_conflict deny")
	id := atk51Long(300, "-held")
	_, code := a.dial(as("127.0.51.60", id, "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	a.waitLive(atk51Form(id), 1)
	assert.EqualValues(t, accepted, b.connect(as("127.0.51.61", atk51Form(id), "bob", "bob-pw")), "the literal form is another client ID")
	assert.EqualValues(t, refused, b.connect(as("127.0.51.61", id, "bob", "bob-pw")), "alice holds it on broker-a")
}

// TestAtk51DenyLongIDHeldThroughFlush: HOLDS. README: after a flush the
// relist records "every connection it holds" again (its live entry, in
// the tracking form). alice holds a 300-byte client ID on broker-a under
// deny; Redis is flushed; once the relist has written the form's live
// entry again, bob claiming the long client ID on broker-b is refused.
func TestAtk51DenyLongIDHeldThroughFlush(t *testing.T) {
	a, b := twoBrokers(t, "auth_opt_clientid_conflict deny", "auth_opt_broker_lease 6s")
	id := atk51Long(300, "-flushed")
	_, code := a.dial(as("127.0.51.70", id, "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	a.waitLive(atk51Form(id), 1)
	a.redis.CLI("FLUSHALL")
	a.waitLive(atk51Form(id), 1)
	time.Sleep(3 * time.Second) // past a renewal of each broker
	for i := 0; i < 5; i++ {
		assert.EqualValues(t, refused, b.connect(as("127.0.51.71", id, "bob", "bob-pw")), "try %d after the flush: alice holds it", i)
		time.Sleep(200 * time.Millisecond)
	}
}

// TestAtk51DenyOneShotIntruderThenDevice: HOLDS. README, Client-ID conflicts:
// under deny "a new connection whose client ID is live under another
// principal ... is refused"; an intruder's one-shot connection is not live
// once it has ended. bob connects with a 300-byte client ID on broker-b
// and leaves at once, five times; each time alice's device claims it on
// broker-a once bob's end is in Redis (the tracker's 100 ms batch) and
// must be accepted.
func TestAtk51DenyOneShotIntruderThenDevice(t *testing.T) {
	a, b := twoBrokers(t, "auth_opt_clientid_conflict deny")
	id := atk51Long(300, "-oneshot")
	refusedN := 0
	for i := 0; i < 5; i++ {
		c, code := b.dial(as("127.0.51.81", id, "bob", "bob-pw"))
		require.EqualValues(t, accepted, code, "round %d: bob", i)
		_ = c.Disconnect()
		c.Close()
		// Its end in Redis: a fixed 300 ms was the tracker's 100 ms batch
		// and room, which a loaded machine can take. Within a second.
		ended := time.Now()
		b.waitLive(atk51Form(id), 0)
		assert.Less(t, time.Since(ended), time.Second, "round %d: bob's end reached Redis late", i)
		if a.connect(as("127.0.51.80", id, "alice", "alice-pw")) != accepted {
			refusedN++
		}
		a.waitLive(atk51Form(id), 0) // alice's end too, before bob's next claim
	}
	assert.Zero(t, refusedN, "alice's device refused %d of 5 times after bob's one-shot connection ended", refusedN)
}

// TestAtk51DenyIntruderEndsWhileRedisHung: HOLDS. README, Redis down: a Redis
// SIGSTOPped is noticed within 700 ms and "one that answers again within
// 200 ms"; stalls delay background work "but lose none of it": "the
// disconnect cleared guard:conn". bob holds a 300-byte client ID on
// broker-b; Redis is stopped; bob leaves; Redis is resumed after 2 s.
// alice's device, claiming the client ID on broker-a, must be accepted
// within 3 s of Redis answering (bob is not live), not refused as if bob
// held it.
func TestAtk51DenyIntruderEndsWhileRedisHung(t *testing.T) {
	a, b := twoBrokers(t, "auth_opt_clientid_conflict deny")
	id := atk51Long(300, "-hung")
	c, code := b.dial(as("127.0.51.91", id, "bob", "bob-pw"))
	require.EqualValues(t, accepted, code)
	b.waitLive(atk51Form(id), 1)
	r := a.redis.Process
	require.NoError(t, r.Signal(syscall.SIGSTOP))
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			_ = r.Signal(syscall.SIGCONT)
		}
	})
	time.Sleep(300 * time.Millisecond)
	_ = c.Disconnect()
	c.Close()
	time.Sleep(2 * time.Second)
	require.NoError(t, r.Signal(syscall.SIGCONT))
	resumed = true
	back := time.Now()
	var got byte = refused
	for time.Since(back) < 3*time.Second {
		if got = a.connect(as("127.0.51.90", id, "alice", "alice-pw")); got == accepted {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("alice after %.2f s: %d; live %s", time.Since(back).Seconds(), got, a.redis.CLI("HLEN", "guard:conn:"+atk51Form(id)))
	assert.EqualValues(t, accepted, got, "alice refused for 3 s after Redis answered, bob gone since the hang:\n%s", atk51Refusals(a))
}

// TestAtk51FlushKeepsLocalCountOfLongClientID: HOLDS. README, Lifting a ban early:
// "A ban that disappears in a FLUSHALL ... is not lifted on the brokers
// that counted it: each broker's own count is kept, so flushing Redis
// gives a guesser no fresh checks there." A guesser with a 1 000-byte
// client ID (fail_scopes clientid) is banned by its form; Redis is
// flushed; his further guesses on the same broker are not checked.
func TestAtk51FlushKeepsLocalCountOfLongClientID(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_scopes clientid", "auth_opt_fail_limit 2", "auth_opt_fail_window 1m")
	id := atk51Long(1000, "-guesser")
	for i := 0; i < 3; i++ {
		e.connect(as(fmt.Sprintf("127.0.51.%d", 100+i), id, "alice", "guess"))
	}
	eventually(t, 3*time.Second, func() bool {
		return e.redis.CLI("EXISTS", "guard:block:clientid:"+atk51Form(id)) == "1"
	}, "no ban by the form")
	e.redis.CLI("FLUSHALL")
	time.Sleep(time.Second)
	before := strings.Count(e.broker.Output(), "rule=bad-password")
	for i := 0; i < 4; i++ {
		e.connect(as(fmt.Sprintf("127.0.51.%d", 110+i), id, "alice", "guess"))
	}
	time.Sleep(200 * time.Millisecond)
	after := strings.Count(e.broker.Output(), "rule=bad-password")
	assert.Zero(t, after-before, "guesses checked after the flush:\n%s", atk51Refusals(e))
}

// TestAtk51SighupKeepsDenyOfLongID: HOLDS. README, Reloads: the broker's
// re-check after a SIGHUP "admits nothing". alice holds a 300-byte client
// ID on broker-a under deny; both brokers get SIGHUP; bob claiming it on
// broker-b is still refused, and alice stays connected.
func TestAtk51SighupKeepsDenyOfLongID(t *testing.T) {
	a, b := twoBrokers(t, "auth_opt_clientid_conflict deny")
	id := atk51Long(300, "-hup")
	c, code := a.dial(as("127.0.51.120", id, "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	a.waitLive(atk51Form(id), 1)
	a.broker.Reload()
	b.broker.Reload()
	time.Sleep(500 * time.Millisecond)
	assert.EqualValues(t, refused, b.connect(as("127.0.51.121", id, "bob", "bob-pw")))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	require.NoError(t, c.Ping(ctx), "alice dropped by the reload")
	a.waitLive(atk51Form(id), 1)
}

// TestAtk51MidLengthUsernamesShareNoThrottle: HOLDS. as
// TestAtk51LongUsernamesShareNoThrottle with 200-byte usernames (under the
// 256-byte bound: kept whole, not hashed) that share their first 189
// bytes. README, Known limits: what is kept of a stranger's claimed
// username in the local counts and the throttle's memory is "a copy of at
// most 64 or 256 bytes": a copy must not make two usernames one.
func TestAtk51MidLengthUsernamesShareNoThrottle(t *testing.T) {
	e := envWithoutBroker(t)
	victim := atk51Long(200, "-victimuser")
	e.addUser(victim, "victim-pw")
	atk48Start(t, e, "auth_opt_username_fail_limit 2", "auth_opt_fail_window 1m", "auth_opt_fail_limit 50")
	fake := atk51Long(200, "-madeupuser")
	for i := 0; i < 6; i++ {
		e.connect(as(fmt.Sprintf("127.0.51.%d", 130+i), "atk51-mfake-"+strconv.Itoa(i), fake, "guess"))
	}
	eventually(t, 3*time.Second, func() bool {
		return e.redis.CLI("EXISTS", "guard:throttle:username:"+fake) == "1"
	}, "the made-up username was not throttled:\n%s", atk51Refusals(e))
	assert.EqualValues(t, accepted, e.connect(as("127.0.51.150", "atk51-mvictim", victim, "victim-pw")),
		"a real 200-byte username sharing a throttled made-up one's first 189 bytes was refused:\n%s", atk51Refusals(e))
}

// TestAtk51MidLengthClientIDsShareNoFailureCount: HOLDS. as
// TestAtk51LongClientIDsShareNoFailureCount with 200-byte client IDs
// (kept whole) sharing their first 191 bytes.
func TestAtk51MidLengthClientIDsShareNoFailureCount(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_scopes clientid", "auth_opt_fail_limit 2", "auth_opt_fail_window 1m")
	attacker := atk51Long(200, "-attacker")
	victim := atk51Long(200, "-victim")
	for i := 0; i < 4; i++ {
		e.connect(as("127.0.51.151", attacker, "alice", "guess"))
	}
	eventually(t, 3*time.Second, func() bool {
		return e.redis.CLI("EXISTS", "guard:block:clientid:"+attacker) == "1"
	}, "the attacker's client ID was not banned")
	assert.EqualValues(t, accepted, e.connect(as("127.0.51.152", victim, "alice", "alice-pw")),
		"a victim whose client ID shares the attacker's first 191 bytes was refused:\n%s", atk51Refusals(e))
}

// TestAtk51LongIDTakeoversCounted: HOLDS. README: a duplicate-connection
// finding when "one principal's connections with the same ID displace each
// other, on this broker ... takeover_limit times in takeover_window", with
// the client ID in its tracking form. alice's two devices displace each
// other 6 times on one broker with a 300-byte client ID (takeover_limit 3).
func TestAtk51LongIDTakeoversCounted(t *testing.T) {
	e := newEnv(t, "auth_opt_takeover_limit 3", "auth_opt_takeover_window 1m")
	id := atk51Long(300, "-twins")
	for i := 0; i < 6; i++ {
		_, code := e.dial(as(fmt.Sprintf("127.0.51.%d", 160+i%2), id, "alice", "alice-pw"))
		require.EqualValues(t, accepted, code)
		time.Sleep(300 * time.Millisecond)
	}
	eventually(t, 5*time.Second, func() bool {
		for _, f := range e.findings() {
			if f["clientid"] == atk51Form(id) && f["kind"] == "duplicate-connection" {
				return true
			}
		}
		return false
	}, "no duplicate-connection finding for the long client ID; takeovers %q; findings %v",
		e.redis.CLI("HLEN", "guard:takeoverconns:"+atk51Form(id)), atk37Kinds(e, atk51Form(id)))
}

// TestAtk51HugeClaimsKeepSmallBanKeys: HOLDS. README, Redis keys: "a stranger's
// failures with 65 535-byte claims write 71-byte key names", and "their
// size must not decide what Redis keeps". Under fail_scopes clientid
// username, 10 strangers each fail 3 times with another 65 535-byte client
// ID and username: every key's name and value in Redis stays small.
func TestAtk51HugeClaimsKeepSmallBanKeys(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_scopes ip clientid username", "auth_opt_fail_limit 1", "auth_opt_fail_window 1m", "auth_opt_username_fail_limit 1")
	for i := 0; i < 10; i++ {
		id := atk51Long(65535, fmt.Sprintf("-id%02d", i))
		u := atk51Long(65535, fmt.Sprintf("-user%02d", i))
		for j := 0; j < 3; j++ {
			e.connect(as(fmt.Sprintf("127.0.52.%d", 1+i), id, u, "guess"))
		}
	}
	time.Sleep(time.Second)
	keys := strings.Split(strings.TrimSpace(e.redis.CLI("--scan")), "\n")
	longest, biggest, bigKey := 0, 0, ""
	for _, k := range keys {
		if len(k) > longest {
			longest = len(k)
		}
		m, _ := strconv.Atoi(e.redis.CLI("MEMORY", "USAGE", k))
		if m > biggest {
			biggest, bigKey = m, k
		}
	}
	info := e.redis.CLI("INFO", "memory")
	used := ""
	for _, l := range strings.Split(info, "\n") {
		if strings.HasPrefix(l, "used_memory:") {
			used = strings.TrimSpace(l)
		}
	}
	t.Logf("%d keys; longest name %d bytes; biggest %s (%d bytes); %s", len(keys), longest, bigKey[:min(len(bigKey), 80)], biggest, used)
	assert.Less(t, longest, 200, "a key name holds a client-chosen value")
	assert.Less(t, biggest, 4096, "a key %q holds %d bytes", bigKey[:min(len(bigKey), 80)], biggest)
}

// TestAtk51DenyIntruderWhileRedisHungLeavesNoGhost: HOLDS. README, Bounds: "a
// disconnect of a connection whose connect it took is never lost ... so no
// ended connection stays live in guard:conn:<id>"; deny: "If Redis does
// not answer in time, the client is let in". Redis is SIGSTOPped; bob
// connects with a 300-byte client ID on broker-b (let in: no answer) and
// leaves; Redis resumes 2 s later. alice's device claiming the client ID
// on broker-a must be accepted within 3 s of Redis answering.
func TestAtk51DenyIntruderWhileRedisHungLeavesNoGhost(t *testing.T) {
	a, b := twoBrokers(t, "auth_opt_clientid_conflict deny")
	id := atk51Long(300, "-hung2")
	r := a.redis.Process
	require.NoError(t, r.Signal(syscall.SIGSTOP))
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			_ = r.Signal(syscall.SIGCONT)
		}
	})
	c, code := atk29Dial(b, as("127.0.51.171", id, "bob", "bob-pw"))
	t.Logf("bob during the hang: %d", code)
	if c != nil {
		time.Sleep(300 * time.Millisecond)
		_ = c.Disconnect()
		c.Close()
	}
	time.Sleep(2 * time.Second)
	require.NoError(t, r.Signal(syscall.SIGCONT))
	resumed = true
	back := time.Now()
	var got byte = refused
	for time.Since(back) < 3*time.Second {
		if got = a.connect(as("127.0.51.170", id, "alice", "alice-pw")); got == accepted {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("alice after %.2f s: %d; live %s", time.Since(back).Seconds(), got, a.redis.CLI("HGETALL", "guard:conn:"+atk51Form(id)))
	assert.EqualValues(t, accepted, got, "alice refused for 3 s after Redis answered, bob gone during the hang:\n%s", atk51Refusals(a))
}

// atk51StaysAfterAutoBan: alice's device holds id from ip; a stranger from
// badIP fails under the same client ID until the automatic ban (by the
// client ID's form under fail_scopes clientid) is written; then, if
// sighup, the broker is sent SIGHUP. alice's device must stay connected.
func atk51StaysAfterAutoBan(t *testing.T, id string, sighup bool) {
	e := newEnv(t, "auth_opt_fail_scopes clientid", "auth_opt_fail_limit 1", "auth_opt_fail_window 1m")
	c, code := e.dial(as("127.0.53.1", id, "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	key := "guard:block:clientid:" + id
	if len(id) > 256 {
		key = "guard:block:clientid:" + atk51Form(id)
	}
	for i := 0; i < 3; i++ {
		// the stranger's one-shot connects: never displace alice, each
		// refused at the password (or, after the ban, by it).
		e.connect(as("127.0.53.2", id, "alice", "guess"))
	}
	eventually(t, 3*time.Second, func() bool { return e.redis.CLI("EXISTS", key) == "1" }, "no automatic ban")
	t.Logf("ban: %.120s", e.redis.CLI("GET", key))
	if sighup {
		e.broker.Reload()
	}
	time.Sleep(time.Second)
	assert.False(t, c.Closed(500*time.Millisecond), "alice's device, which proved its password, was disconnected by an automatic ban (sighup %v):\n%s", sighup, atk51Refusals(e))
}

// TestAtk51AutoBanOfLongIDDoesNotKick: HOLDS. README, Kicks: "Automatic bans do
// not kick: the clients still connected ... proved their password". A
// stranger's failures under a 300-byte client ID held by alice's device
// ban it by its form; alice's device stays.
func TestAtk51AutoBanOfLongIDDoesNotKick(t *testing.T) {
	atk51StaysAfterAutoBan(t, atk51Long(300, "-held-dev"), false)
}

// TestAtk51AutoBanOfLongIDThenSighup: DEFECT (5 of 5 runs). As
// TestAtk51AutoBanOfLongIDDoesNotKick,
// then the broker is sent SIGHUP (README, Reloads: the broker "re-checks
// every client it holds after a reload ... a refusal then is logged but
// never counted"; "A password rotation plus SIGHUP cannot ban a fleet's NAT
// address"). Expected: alice's device stays connected, as without the
// SIGHUP. Observed: at the SIGHUP the broker's re-check of alice's device
// is refused by the automatic ban ("event=refused ip=127.0.53.1
// rule=\"guard:block:clientid:sha256:...\" origin=auto", with no
// reauth=true) and Mosquitto disconnects it: a stranger's wrong passwords
// plus any SIGHUP (a logrotate) disconnect the device. Explained after the
// failure (plugin/connect.go authenticate): a block entry refuses before
// the reauth branch, and is logged with reauth false.
func TestAtk51AutoBanOfLongIDThenSighup(t *testing.T) {
	atk51StaysAfterAutoBan(t, atk51Long(300, "-held-hup"), true)
}

// TestAtk51AutoBanOfShortIDThenSighup: DEFECT (5 of 5 runs). As
// TestAtk51AutoBanOfLongIDThenSighup with a short client ID: not the
// hashed form's doing, the same refusal by the automatic ban at the
// re-check.
func TestAtk51AutoBanOfShortIDThenSighup(t *testing.T) {
	atk51StaysAfterAutoBan(t, "atk51-short-hup", true)
}

// TestAtk51AutoBanOfNATAddressThenSighup: DEFECT (5 of 5 runs). README, Kicks: "Automatic bans
// do not kick: the clients still connected from that IP proved their
// password (think NAT)". A stranger behind alice's NAT address guesses
// until the address is banned (fail_scopes ip); the broker is then sent
// SIGHUP; alice's device, connected from that address, must stay.
// Observed: before the SIGHUP it stays (the automatic ban does not kick);
// at the SIGHUP the re-check is refused by guard:block:ip:127.0.53.10
// origin=auto (logged without reauth=true) and the broker disconnects
// it, and it cannot come back until the ban ends. So one stranger behind
// a NAT address, with wrong passwords, gets every device behind it
// dropped at the operator's next SIGHUP.
func TestAtk51AutoBanOfNATAddressThenSighup(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 1", "auth_opt_fail_window 1m")
	const nat = "127.0.53.10"
	c, code := e.dial(as(nat, "atk51-nat-dev", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	for i := 0; i < 3; i++ {
		e.connect(as(nat, "atk51-nat-stranger", "bob", "guess"))
	}
	eventually(t, 3*time.Second, func() bool { return e.redis.CLI("EXISTS", "guard:block:ip:"+nat) == "1" }, "no automatic ban")
	time.Sleep(500 * time.Millisecond)
	require.False(t, c.Closed(300*time.Millisecond), "kicked before the SIGHUP")
	e.broker.Reload()
	time.Sleep(time.Second)
	assert.False(t, c.Closed(500*time.Millisecond), "alice's device behind the NAT address was disconnected at SIGHUP by the automatic ban:\n%s", atk51Refusals(e))
}
