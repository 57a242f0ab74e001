package plugin

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/internal/logline"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/ratelimit"
)

// failqGuard is a guard whose failure worker is stuck in its first count
// until the test ends: every later failure waits in the queue, as while
// Redis hangs before the health probe marks it down. Its lines are
// dropped (a sink keeping them would grow with the failures).
// With rdb, the username throttle is on (knownSources): its local count
// (Guard.localUser) counts every failure; Redis is down (nothing queued).
func failqGuard(t *testing.T, scopes string, rdb *redis.Client) *Guard {
	t.Helper()
	cfg, err := config.Parse(map[string]string{"password_file": passwdFile(t), "fail_scopes": scopes})
	require.NoError(t, err)
	ct := &fakeCounter{gate: make(chan struct{})}
	st := newFakeStore()
	d := Deps{Store: st, Counter: ct}
	if rdb != nil {
		d.Redis = rdb // not a nil *redis.Client in the interface
		// Redis down (the start does not wait 10 s for the replica to
		// load from rdb, which does not answer): failures are counted on
		// this broker only, the username's included.
		st.down = true
	}
	g, err := NewWith(cfg, Output{Log: func(Level, string) {}}, d)
	require.NoError(t, err)
	t.Cleanup(g.Close)
	t.Cleanup(func() { close(ct.gate) }) // first: Close waits for the worker
	return g
}

// A refused CONNECT's client ID and username are slices of one allocation
// (cgo's connectStrings.get; cl does the same): a queued failure that kept
// either, or a short Tracking form of either (the value itself), kept the
// whole of it, up to 128 KB of unverified bytes per failure and
// failureQueueSize failures: ~0.5 GB of heap from a stranger while Redis
// hangs. Each queued failure now holds its own copies of a few hundred
// bytes. Before: ~120 KB a failure in every shape.
func TestFailureQueueHoldsNoClientStrings(t *testing.T) {
	const n = 2000 // under failureQueueSize: all queued
	for _, c := range []struct {
		name, scopes string
		idLen        int
	}{
		{"long id and username", "ip", 60000},
		{"long id and username, every scope", "ip,clientid,username", 60000},
		// The client ID's Tracking form is the ID itself: a slice too.
		{"short id, long username", "ip,clientid,username", 100},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := failqGuard(t, c.scopes, nil)
			userLen := min(120000-c.idLen, 65535) // MQTT's most: longer is refused (username_max_bytes)
			id0, user0 := strings.Repeat("i", c.idLen), strings.Repeat("u", userLen)
			before := liveHeap()
			for i := range n {
				tag := fmt.Sprintf("%06d", i)
				cli := cl(uintptr(i+1), fmt.Sprintf("10.1.%d.%d", i/250, i%250+1), tag+id0[6:], tag+user0[6:], "wrong")
				require.Equal(t, Deny, g.Authenticate(cli).Result)
			}
			grown := liveHeap() - before
			require.Greater(t, len(g.failures.ch), n-10, "the failures are queued")
			t.Logf("%d queued failures: heap grew %d bytes, %d a failure", len(g.failures.ch), grown, grown/n)
			assert.Less(t, grown, int64(n*2048), "a queued failure holds a few hundred bytes, not the client's strings")
		})
	}
}

// The username throttle's local count (Guard.localUser) keyed a username
// of up to 64 bytes by the CONNECT's own slice of it (ratelimit.Local keeps
// a short key as it is), which kept the whole CONNECT's strings: a stranger
// refused with a 120 KB client ID and a new short username each time kept
// ~120 KB a CONNECT, with Redis well, for up to DefaultLocalKeys (65 536)
// usernames: ~8 GB. Before: ~120 KB of live heap a failure.
func TestLocalUsernameCountHoldsNoClientStrings(t *testing.T) {
	const n = 2000
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1}) // never dialled here
	t.Cleanup(func() { rdb.Close() })
	g := failqGuard(t, "ip", rdb)
	require.NotNil(t, g.known, "the username throttle is on")
	id0 := strings.Repeat("i", 65535) // MQTT's most: longer is refused (clientid_max_bytes)
	before := liveHeap()
	for i := range n {
		tag := fmt.Sprintf("%06d", i)
		cli := cl(uintptr(i+1), fmt.Sprintf("10.2.%d.%d", i/250, i%250+1), tag+id0[6:], "user-"+tag, "wrong")
		require.Equal(t, Deny, g.Authenticate(cli).Result)
	}
	grown := liveHeap() - before
	require.Equal(t, n, g.localUser.Len(), "every username counted here")
	t.Logf("%d usernames counted: heap grew %d bytes, %d a failure", n, grown, grown/n)
	assert.Less(t, grown, int64(n*2048), "a local count holds its key, not the client's strings")
}

// banningCounter bans at every failure and throttles at every throttle count.
type banningCounter struct {
	fakeCounter
	kb keys.Builder
}

func (b *banningCounter) FailAttempt(_ context.Context, scope keys.Scope, value string, _ *ratelimit.Attempt) (*ratelimit.Ban, error) {
	return &ratelimit.Ban{Scope: scope, Value: value, Key: b.kb.List(keys.Block, scope, value), Offence: 1, Duration: time.Minute}, nil
}

func (b *banningCounter) ThrottleFailAttempt(_ context.Context, tracked string, _ int, _ *ratelimit.Attempt) (*ratelimit.Throttle, error) {
	b.mu.Lock()
	b.throttles = append(b.throttles, tracked)
	b.mu.Unlock()
	return &ratelimit.Throttle{Username: tracked, Key: b.kb.ThrottleTracked(tracked), Duration: time.Minute}, nil
}

// The ban and throttle lines of a failure read as they did when the failure
// kept the client's strings whole: client_id and username quoted and cut at
// 200 bytes (where a character starts), with client_id_bytes=N and
// username_bytes=N; and the failure is counted under the same keys (the
// Tracking forms, hashed past 256 bytes).
func TestFailureLinesFromKeptParts(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	policy := ratelimit.Policy{Limit: 5, Window: time.Minute, BanTime: time.Minute, BanMax: time.Hour}
	ip := netip.MustParseAddr("192.0.2.7")
	for _, c := range []struct{ name, id, user string }{
		{"long", "x" + strings.Repeat("é", 30000), strings.Repeat("€", 20000) + "z"},
		{"short", "dev-1", "alice"},
		{"at the tracking bound", strings.Repeat("i", 256), strings.Repeat("u", 201)},
		{"hashed prefix", "sha256:x", "sha256:" + strings.Repeat("y", 300)},
		{"empty id", "", strings.Repeat("u", 70000)},
	} {
		t.Run(c.name, func(t *testing.T) {
			ct := &banningCounter{kb: keys.Builder{Prefix: "guard:"}}
			ls := &logSink{}
			q := &failureQueue{failureDeps: failureDeps{counter: ct, policy: policy, userLimit: 3, log: ls.log,
				now: func() time.Time { return now }, down: func(error) {}, listed: func(string, string, time.Time) {}}}
			cli := cl(1, ip.String(), c.id, c.user, "wrong")
			fk := []failKey{{keys.IP, ip.String()}}
			for _, s := range []keys.Scope{keys.ClientID, keys.Username} {
				_, v, _ := keys.FailKey(s, ip, 64, cli.ClientID, cli.Username)
				fk = append(fk, failKey{s, v})
			}
			want := append([]failKey(nil), fk...)
			q.count(newFailure(&cli, ip, fk, true))

			var lines []string
			for _, k := range want {
				l := clientLine("banned", &cli, ip).Tok("scope", string(k.scope)).Str("rule", ct.kb.List(keys.Block, k.scope, k.value)).
					Tok("origin", "auto").Expires(now, time.Minute).Int("offence", 1)
				lines = append(lines, clientFields(l, &cli).Str("value", k.value).Str("reason", policy.Rule()).String())
			}
			lines = append(lines, logline.Event("throttled").Tok("rule", RuleUsernameThrottled).Expires(now, time.Minute).
				Int("limit", 3).Dur("window", time.Minute).Str("username", cli.Username).
				Str("reason", "over 3 failed authentications of it from any source (3 allowed, refilling 1 per 1m0s)").String())
			got := strings.Split(ls.all(), "\n")
			assert.Equal(t, lines, got)
			assert.Equal(t, []string{keys.Tracking(cli.Username)}, ct.throttles, "counted toward the same throttle")
			if len(c.id) > 200 {
				assert.Contains(t, got[0], fmt.Sprintf("client_id_bytes=%d", len(c.id)))
			}
			if len(c.user) > 200 {
				assert.Contains(t, got[0], fmt.Sprintf("username_bytes=%d", len(c.user)))
			}
		})
	}
}

// No string a failure keeps points into the CONNECT's strings, whatever
// their shape: not a short value, not a Tracking form that is the value
// itself, not an empty one (an empty slice still points into them).
func TestNewFailureOwnsItsStrings(t *testing.T) {
	ip := netip.MustParseAddr("2001:db8::7")
	for _, c := range []struct{ id, user string }{
		{"dev-1", "alice"}, {"", "alice"}, {"dev-1", ""}, {"", ""},
		{strings.Repeat("i", 256), strings.Repeat("u", 257)}, {strings.Repeat("i", 60000), "bob"},
		{"sha256:abc", strings.Repeat("é", 30000)},
	} {
		for _, scopes := range [][]keys.Scope{{keys.IP}, {keys.IP, keys.ClientID, keys.Username}, {keys.Username}} {
			cli := cl(1, ip.String(), c.id, c.user, "wrong")
			var fk []failKey
			for _, s := range scopes {
				s, v, _ := keys.FailKey(s, ip, 64, cli.ClientID, cli.Username)
				fk = append(fk, failKey{s, v})
			}
			want := append([]failKey(nil), fk...)
			f := newFailure(&cli, ip, fk, true)
			lo := uintptr(unsafe.Pointer(unsafe.StringData(cli.IDs)))
			hi := lo + uintptr(len(cli.IDs))
			held := []string{f.clientID, f.username, f.userTracked}
			for _, k := range f.keys {
				held = append(held, k.value)
			}
			for _, s := range held {
				p := uintptr(unsafe.Pointer(unsafe.StringData(s)))
				assert.False(t, hi > lo && p >= lo && p <= hi, "%d bytes kept in the client's strings (id %d bytes, user %d, scopes %v)", len(s), len(c.id), len(c.user), scopes)
				assert.LessOrEqual(t, len(s), keys.TrackingMax)
			}
			assert.Equal(t, want, f.keys, "counted under the same keys")
			assert.Equal(t, keys.Tracking(cli.Username), f.userTracked)
			assert.Equal(t, logline.Kept(c.id), f.clientID)
			assert.Equal(t, logline.Kept(c.user), f.username)
			assert.Equal(t, len(c.id), f.clientIDBytes)
			assert.Equal(t, len(c.user), f.usernameBytes)
		}
	}
}

// A failure holds at most failureHeld bytes beyond its slot in the queue,
// in every shape of client (the longest: every fail scope, an IPv6
// network, both strings hashed).
func TestFailureHeldBound(t *testing.T) {
	const n = 2000
	ip := netip.MustParseAddr("2001:db8::7")
	for _, c := range []struct{ idLen, userLen int }{{60000, 60000}, {256, 256}, {200, 70000}, {5, 5}} {
		fs := make([]failure, n)
		before := liveHeap()
		for i := range fs {
			tag := fmt.Sprintf("%05d", i)
			cli := cl(1, ip.String(), tag+strings.Repeat("i", c.idLen-5), tag+strings.Repeat("u", c.userLen-5), "wrong")
			var fk []failKey
			for _, s := range []keys.Scope{keys.IP, keys.ClientID, keys.Username} {
				s, v, _ := keys.FailKey(s, ip, 64, cli.ClientID, cli.Username)
				fk = append(fk, failKey{s, v})
			}
			fs[i] = newFailure(&cli, ip, fk, true)
		}
		per := (liveHeap() - before) / n
		runtime.KeepAlive(fs)
		t.Logf("id %d bytes, username %d: %d bytes held a failure", c.idLen, c.userLen, per)
		assert.LessOrEqual(t, per, int64(failureHeld))
	}
}
