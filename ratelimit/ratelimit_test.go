package ratelimit

import (
	"context"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// Every client kind fits the interface.
var (
	_ rediser = (*redis.Client)(nil)
	_ rediser = (*redis.ClusterClient)(nil)
	_ rediser = (*redis.Ring)(nil)
	_ rediser = redis.UniversalClient(nil)
)

// tolerance is how far a PTTL may be below the ban it was set to.
const tolerance = 2 * time.Second

func TestBanDuration(t *testing.T) {
	p := Policy{BanTime: 10 * time.Minute, BanMax: 24 * time.Hour}
	tests := []struct {
		offence int
		want    time.Duration
	}{
		{math.MinInt, 10 * time.Minute},
		{0, 10 * time.Minute},
		{1, 10 * time.Minute},
		{2, 20 * time.Minute},
		{3, 40 * time.Minute},
		{4, 80 * time.Minute},
		{5, 160 * time.Minute},
		{6, 320 * time.Minute},
		{7, 640 * time.Minute},
		{8, 1280 * time.Minute},
		{9, 24 * time.Hour}, // 2560m is over the cap
		{10, 24 * time.Hour},
		{62, 24 * time.Hour},
		{63, 24 * time.Hour},
		{64, 24 * time.Hour},
		{65, 24 * time.Hour},
		{1000, 24 * time.Hour},
		{math.MaxInt, 24 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.offence), func(t *testing.T) {
			assert.Equal(t, tt.want, p.BanDuration(tt.offence))
		})
	}

	// With no practical cap, the doubling still never wraps negative.
	huge := Policy{BanTime: time.Nanosecond, BanMax: math.MaxInt64}
	assert.Equal(t, time.Duration(1)<<62, huge.BanDuration(63))
	for _, n := range []int{64, 65, 1000, math.MaxInt} {
		assert.Equal(t, time.Duration(math.MaxInt64), huge.BanDuration(n), "offence %d", n)
	}
	// A cap below BanTime caps the first ban too.
	assert.Equal(t, time.Minute, Policy{BanTime: time.Hour, BanMax: time.Minute}.BanDuration(1))
}

func TestPolicyDefaults(t *testing.T) {
	l := New(nil, keys.Builder{}, Policy{})
	want := Policy{Limit: 5, Window: time.Minute, BanTime: 10 * time.Minute, BanMax: 24 * time.Hour}
	assert.Equal(t, want, l.Policy())
	assert.Equal(t, "5 failures per 1m0s, then a ban of 10m0s doubling up to 24h0m0s", want.String())
}

func TestBanString(t *testing.T) {
	exp := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	b := Ban{Scope: keys.ClientID, Value: "evil\n\x1b[31m", Key: "guard:block:clientid:evil\n\x1b[31m",
		Offence: 2, Duration: 20 * time.Minute, Expires: exp}
	s := b.String()
	assert.Equal(t, `automatic ban of clientid "evil\n\x1b[31m" for 20m0s until 2025-01-02T03:04:05Z (offence 2)`, s)

	b.Value = strings.Repeat("x", 20000)
	s = b.String()
	assert.Contains(t, s, `"`+strings.Repeat("x", 200)+`"...(20000 bytes)`)
	assert.NotContains(t, s, strings.Repeat("x", 201))
	assert.Less(t, len(s), 400)
}

// setup starts a Redis and returns a client for it.
func setup(t *testing.T) (*testenv.Redis, *redis.Client) {
	t.Helper()
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })
	// The writes' scripts loaded: a proxy cutting the first request that
	// carries a ban's value cuts the write, not an EVALSHA that meets
	// NOSCRIPT before go-redis sends the script whole.
	for _, s := range []*redis.Script{clockScript, setUntil, incrExpire} {
		require.NoError(t, s.Load(context.Background(), rdb).Err())
	}
	return r, rdb
}

// allKeys lists every key in the database (with SCAN, in the test only).
func allKeys(t *testing.T, rdb *redis.Client) []string {
	t.Helper()
	var out []string
	iter := rdb.Scan(context.Background(), 0, "", 1000).Iterator()
	for iter.Next(context.Background()) {
		out = append(out, iter.Val())
	}
	require.NoError(t, iter.Err())
	sort.Strings(out)
	return out
}

// failUntilBan calls Fail until it returns a ban, at most max times.
func failUntilBan(t *testing.T, l *Limiter, scope keys.Scope, value string, max int) *Ban {
	t.Helper()
	for i := 0; i < max; i++ {
		b, err := l.Fail(context.Background(), scope, value)
		require.NoError(t, err)
		if b != nil {
			return b
		}
	}
	t.Fatalf("no ban after %d failures", max)
	return nil
}

func assertPTTL(t *testing.T, rdb *redis.Client, key string, want time.Duration) {
	t.Helper()
	got, err := rdb.PTTL(context.Background(), key).Result()
	require.NoError(t, err)
	assert.LessOrEqual(t, got, want, "PTTL of %q", key)
	assert.Greater(t, got, want-tolerance, "PTTL of %q", key)
}

func TestFirstBan(t *testing.T) {
	ctx := context.Background()
	_, rdb := setup(t)
	kb := keys.Builder{Prefix: "guard:"}
	p := Policy{Limit: 3, Window: time.Minute, BanTime: 10 * time.Second, BanMax: 80 * time.Second}
	l := New(rdb, kb, p)

	for i := 1; i <= 3; i++ {
		b, err := l.Fail(ctx, keys.IP, "192.0.2.7")
		require.NoError(t, err)
		require.Nil(t, b, "failure %d is within the limit", i)
	}
	exists, err := rdb.Exists(ctx, "guard:block:ip:192.0.2.7").Result()
	require.NoError(t, err)
	require.Zero(t, exists, "no ban before the limit is passed")

	before := time.Now()
	b, err := l.Fail(ctx, keys.IP, "192.0.2.7")
	require.NoError(t, err)
	require.NotNil(t, b, "the 4th failure bans")
	assert.Equal(t, keys.IP, b.Scope)
	assert.Equal(t, "192.0.2.7", b.Value)
	assert.Equal(t, "guard:block:ip:192.0.2.7", b.Key)
	assert.Equal(t, 1, b.Offence)
	assert.Equal(t, 10*time.Second, b.Duration)
	assert.WithinDuration(t, before.Add(10*time.Second), b.Expires, tolerance)
	assert.Regexp(t, `^auto: over 3 failed authentications \(3 allowed, refilling 1 per 1m0s\) \(offence 1, 10s\) \(ban [0-9a-f]{16}\) at \S+Z$`, b.Reason)
	_, err = time.Parse(time.RFC3339, b.Reason[strings.LastIndex(b.Reason, " ")+1:])
	assert.NoError(t, err, "reason ends with an RFC 3339 time: %s", b.Reason)

	got, err := rdb.Get(ctx, "guard:block:ip:192.0.2.7").Result()
	require.NoError(t, err)
	assert.Equal(t, b.Reason, got)
	assertPTTL(t, rdb, "guard:block:ip:192.0.2.7", 10*time.Second)

	off, err := rdb.Get(ctx, "guard:offences:ip:192.0.2.7").Int()
	require.NoError(t, err)
	assert.Equal(t, 1, off)
	assertPTTL(t, rdb, "guard:offences:ip:192.0.2.7", 90*time.Second)

	// Further failures while banned write nothing new.
	b, err = l.Fail(ctx, keys.IP, "192.0.2.7")
	require.NoError(t, err)
	assert.Nil(t, b)
	off, err = rdb.Get(ctx, "guard:offences:ip:192.0.2.7").Int()
	require.NoError(t, err)
	assert.Equal(t, 1, off)

	assert.Equal(t, []string{
		"guard:block:ip:192.0.2.7",
		"guard:offences:ip:192.0.2.7",
		"rate:guard:fail:ip:192.0.2.7",
	}, allKeys(t, rdb))
}

func TestEscalation(t *testing.T) {
	ctx := context.Background()
	_, rdb := setup(t)
	kb := keys.Builder{Prefix: "guard:"}
	l := New(rdb, kb, Policy{Limit: 3, Window: time.Minute, BanTime: 10 * time.Second, BanMax: 60 * time.Second})
	block := kb.List(keys.Block, keys.Username, "alice")
	offences := kb.Offences(keys.Username, "alice")

	want := []time.Duration{10 * time.Second, 20 * time.Second, 40 * time.Second, 60 * time.Second, 60 * time.Second}
	for i, d := range want {
		b := failUntilBan(t, l, keys.Username, "alice", 10)
		assert.Equal(t, i+1, b.Offence)
		assert.Equal(t, d, b.Duration, "offence %d", i+1)
		assert.Contains(t, b.Reason, "(offence "+strconv.Itoa(i+1)+", "+d.String()+")")
		assertPTTL(t, rdb, block, d)
		n, err := rdb.Get(ctx, offences).Int()
		require.NoError(t, err)
		assert.Equal(t, i+1, n)
		assertPTTL(t, rdb, offences, d+60*time.Second)

		// Simulate the ban running out.
		require.NoError(t, rdb.Del(ctx, block).Err())
	}
}

func TestBanExpires(t *testing.T) {
	ctx := context.Background()
	_, rdb := setup(t)
	kb := keys.Builder{Prefix: "guard:"}
	l := New(rdb, kb, Policy{Limit: 1, Window: time.Minute, BanTime: 150 * time.Millisecond, BanMax: 300 * time.Millisecond})

	b := failUntilBan(t, l, keys.IP, "198.51.100.1", 3)
	assert.Equal(t, 150*time.Millisecond, b.Duration)
	require.Eventually(t, func() bool {
		return rdb.Exists(ctx, b.Key).Val() == 0
	}, 2*time.Second, 20*time.Millisecond, "the ban key expires")

	b = failUntilBan(t, l, keys.IP, "198.51.100.1", 3)
	assert.Equal(t, 2, b.Offence)
	assert.Equal(t, 300*time.Millisecond, b.Duration)

	// The offence record is forgotten BanMax after the ban ends.
	require.Eventually(t, func() bool {
		return rdb.Exists(ctx, kb.Offences(keys.IP, "198.51.100.1")).Val() == 0
	}, 3*time.Second, 20*time.Millisecond, "the offences key expires")
}

func TestOperatorKeyKept(t *testing.T) {
	ctx := context.Background()
	_, rdb := setup(t)
	kb := keys.Builder{Prefix: "guard:"}
	l := New(rdb, kb, Policy{Limit: 2, Window: time.Minute, BanTime: 10 * time.Second, BanMax: time.Minute})
	block := kb.List(keys.Block, keys.ClientID, "sensor-1")
	require.NoError(t, rdb.Set(ctx, block, "stolen credentials, ticket 42", 0).Err())

	for i := 0; i < 6; i++ {
		b, err := l.Fail(ctx, keys.ClientID, "sensor-1")
		require.NoError(t, err)
		assert.Nil(t, b, "failure %d", i+1)
	}
	got, err := rdb.Get(ctx, block).Result()
	require.NoError(t, err)
	assert.Equal(t, "stolen credentials, ticket 42", got)
	ttl, err := rdb.PTTL(ctx, block).Result()
	require.NoError(t, err)
	assert.Equal(t, time.Duration(-1), ttl, "the operator's key keeps no TTL")
	assert.Zero(t, rdb.Exists(ctx, kb.Offences(keys.ClientID, "sensor-1")).Val(), "no offence counted")
}

func TestConcurrentBrokers(t *testing.T) {
	ctx := context.Background()
	_, rdb := setup(t)
	kb := keys.Builder{Prefix: "guard:"}
	p := Policy{Limit: 3, Window: time.Minute, BanTime: 10 * time.Second, BanMax: time.Minute}

	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		bans  []*Ban
		errs  []error
		start = make(chan struct{})
	)
	for g := 0; g < 20; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each goroutine is a broker of its own, with its own connection pool.
			c := redis.NewClient(&redis.Options{Addr: rdb.Options().Addr})
			defer c.Close()
			l := New(c, kb, p)
			<-start
			for i := 0; i < 5; i++ {
				b, err := l.Fail(ctx, keys.IP, "203.0.113.9")
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				}
				if b != nil {
					bans = append(bans, b)
				}
				mu.Unlock()
			}
		}()
	}
	close(start)
	wg.Wait()

	require.Empty(t, errs)
	require.Len(t, bans, 1, "exactly one ban")
	assert.Equal(t, 1, bans[0].Offence)
	n, err := rdb.Get(ctx, kb.Offences(keys.IP, "203.0.113.9")).Int()
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	got, err := rdb.Get(ctx, bans[0].Key).Result()
	require.NoError(t, err)
	assert.Equal(t, bans[0].Reason, got)
}

func TestOddValues(t *testing.T) {
	ctx := context.Background()
	_, rdb := setup(t)
	kb := keys.Builder{Prefix: "guard:"}
	p := Policy{Limit: 1, Window: time.Minute, BanTime: 10 * time.Second, BanMax: time.Minute}
	l := New(rdb, kb, p)

	values := []struct{ name, value string }{
		{"colon", ":"},
		{"star", "*"},
		{"glob", "a*b?[c]"},
		{"space newline", "a b\nc"},
		{"empty", ""},
		{"binary", "\x00\xff\r\n"},
		{"20000 bytes", strings.Repeat("c:*", 6667)[:20000]},
	}
	for _, v := range values {
		t.Run(v.name, func(t *testing.T) {
			require.NoError(t, rdb.FlushAll(ctx).Err())
			// Bystanders whose keys a pattern built from v.value could hit.
			for _, other := range []string{"x", "a", "a b", "c", "192.0.2.1"} {
				if other != v.value {
					require.NoError(t, rdb.Set(ctx, kb.List(keys.Block, keys.ClientID, other), "operator", 0).Err())
				}
			}
			before := allKeys(t, rdb)

			b := failUntilBan(t, l, keys.ClientID, v.value, 3)
			assert.Equal(t, v.value, b.Value)
			assert.Equal(t, kb.List(keys.Block, keys.ClientID, v.value), b.Key)
			assert.NotContains(t, b.Reason, "\n", "the reason stays one line")
			assert.LessOrEqual(t, len(b.String()), 400)

			got, err := rdb.Get(ctx, b.Key).Result()
			require.NoError(t, err)
			assert.Equal(t, b.Reason, got)
			assert.True(t, keys.IsAutoBan(got))

			want := append(slices.Clone(before),
				kb.List(keys.Block, keys.ClientID, v.value),
				kb.Offences(keys.ClientID, v.value),
				"rate:"+kb.Fail(keys.ClientID, v.value))
			sort.Strings(want)
			assert.Equal(t, want, allKeys(t, rdb), "only this value's keys were written")
			for _, k := range before {
				assert.Equal(t, "operator", rdb.Get(ctx, k).Val(), "bystander %s untouched", logval.Quote(k))
			}
		})
	}
}

func TestIndependentKeysAndPrefix(t *testing.T) {
	ctx := context.Background()
	_, rdb := setup(t)
	kb := keys.Builder{Prefix: "t1:"}
	l := New(rdb, kb, Policy{Limit: 2, Window: time.Minute, BanTime: 10 * time.Second, BanMax: time.Minute})

	// Two failures for each of several keys: all within their own limit.
	targets := []struct {
		scope keys.Scope
		value string
	}{
		{keys.IP, "192.0.2.7"},
		{keys.ClientID, "192.0.2.7"},
		{keys.Username, "192.0.2.7"},
		{keys.IP, "192.0.2.8"},
	}
	for _, tg := range targets {
		for i := 0; i < 2; i++ {
			b, err := l.Fail(ctx, tg.scope, tg.value)
			require.NoError(t, err)
			require.Nil(t, b, "%s %s failure %d", tg.scope, tg.value, i+1)
		}
	}
	// The third failure of one key bans that key only.
	b, err := l.Fail(ctx, keys.ClientID, "192.0.2.7")
	require.NoError(t, err)
	require.NotNil(t, b)
	assert.Equal(t, "t1:block:clientid:192.0.2.7", b.Key)

	got := allKeys(t, rdb)
	assert.Equal(t, []string{
		"rate:t1:fail:clientid:192.0.2.7",
		"rate:t1:fail:ip:192.0.2.7",
		"rate:t1:fail:ip:192.0.2.8",
		"rate:t1:fail:username:192.0.2.7",
		"t1:block:clientid:192.0.2.7",
		"t1:offences:clientid:192.0.2.7",
	}, got)

	// The others are still counted on their own and banned on their own.
	b, err = l.Fail(ctx, keys.Username, "192.0.2.7")
	require.NoError(t, err)
	require.NotNil(t, b)
	assert.Equal(t, "t1:block:username:192.0.2.7", b.Key)
	assert.Equal(t, 1, b.Offence, "offences are per key")
}

func TestUnknownScope(t *testing.T) {
	l := New(redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}), keys.Builder{}, Policy{})
	_, err := l.Fail(context.Background(), keys.Scope("bogus"), "x")
	require.Error(t, err)
	assert.True(t, strings.HasPrefix(err.Error(), "ratelimit: "), err.Error())
}

func TestRedisDown(t *testing.T) {
	r, rdb := setup(t)
	l := New(rdb, keys.Builder{Prefix: "guard:"}, Policy{Limit: 1})
	b, err := l.Fail(context.Background(), keys.IP, "192.0.2.7")
	require.NoError(t, err)
	require.Nil(t, b)

	r.Stop()
	for i := 0; i < 3; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		start := time.Now()
		b, err = l.Fail(ctx, keys.IP, "192.0.2.7")
		cancel()
		require.Error(t, err)
		assert.Nil(t, b)
		assert.True(t, strings.HasPrefix(err.Error(), "ratelimit: "), err.Error())
		assert.Less(t, time.Since(start), 2*time.Second, "fails quickly")
	}

	// A context already done is refused before any command.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = l.Fail(ctx, keys.IP, "192.0.2.7")
	require.ErrorIs(t, err, context.Canceled)
}

// The rule the log line states: fail_limit+1 failures inside one fail_window
// always ban, however they are spread inside it. With redis_rate at Rate =
// Burst = fail_limit (before), 4 failures spread over 1 s of a 2 s window
// with fail_limit 3 did not ban.
func TestLimitPlusOneInsideWindowBans(t *testing.T) {
	ctx := context.Background()
	_, rdb := setup(t)
	kb := keys.Builder{Prefix: "guard:"}
	l := New(rdb, kb, Policy{Limit: 3, Window: 2 * time.Second, BanTime: time.Minute, BanMax: time.Hour})
	var ban *Ban
	for i := 0; i < 4; i++ {
		if i > 0 {
			time.Sleep(330 * time.Millisecond)
		}
		b, err := l.Fail(ctx, keys.IP, "192.0.2.44")
		require.NoError(t, err)
		if i < 3 {
			require.Nil(t, b, "failure %d of 3 allowed", i+1)
		}
		ban = b
	}
	require.NotNil(t, ban, "4 failures within 1 s of a 2 s window must ban")
}

func TestResetForgetsFailuresNotOffences(t *testing.T) {
	ctx := context.Background()
	_, rdb := setup(t)
	kb := keys.Builder{Prefix: "guard:"}
	l := New(rdb, kb, Policy{Limit: 2, Window: time.Minute, BanTime: time.Minute, BanMax: time.Hour})
	b := failUntilBan(t, l, keys.IP, "192.0.2.9", 5)
	require.NoError(t, rdb.Del(ctx, b.Key).Err())
	require.NoError(t, l.Reset(ctx, keys.IP, "192.0.2.9"))
	for i := 0; i < 2; i++ {
		b, err := l.Fail(ctx, keys.IP, "192.0.2.9")
		require.NoError(t, err)
		require.Nil(t, b, "a full allowance again after the reset")
	}
	b = failUntilBan(t, l, keys.IP, "192.0.2.9", 1)
	assert.Equal(t, 2, b.Offence, "offences are kept: the next ban escalates")
	assertPTTL(t, rdb, kb.Offences(keys.IP, "192.0.2.9"), 2*time.Minute+time.Hour)
}

func TestThrottleFail(t *testing.T) {
	ctx := context.Background()
	_, rdb := setup(t)
	kb := keys.Builder{Prefix: "guard:"}
	l := New(rdb, kb, Policy{Limit: 5, Window: 2 * time.Second, BanTime: time.Minute, BanMax: time.Hour})
	for i := 0; i < 3; i++ {
		th, err := l.ThrottleFail(ctx, "bob", 3)
		require.NoError(t, err)
		require.Nil(t, th)
	}
	th, err := l.ThrottleFail(ctx, "bob", 3)
	require.NoError(t, err)
	require.NotNil(t, th, "the 4th failure of the username throttles it")
	assert.Equal(t, "guard:throttle:username:bob", th.Key)
	assert.True(t, strings.HasPrefix(th.Reason, "auto: over 3 failed authentications of this username"), th.Reason)
	assert.LessOrEqual(t, th.Duration, 2*time.Second)
	th, err = l.ThrottleFail(ctx, "bob", 3)
	require.NoError(t, err)
	assert.Nil(t, th, "one episode is written once")
	n, err := rdb.Exists(ctx, "guard:block:username:bob").Result()
	require.NoError(t, err)
	assert.Zero(t, n, "a throttle is not a ban")
	require.Eventually(t, func() bool { return rdb.Exists(ctx, "guard:throttle:username:bob").Val() == 0 },
		3*time.Second, 50*time.Millisecond, "the throttle lifts by itself")
}

// ThrottleFailTracked counts a username given in its Tracking form under
// the keys ThrottleFail counts the username under, long or short.
func TestThrottleFailTrackedSameKeys(t *testing.T) {
	ctx := context.Background()
	_, rdb := setup(t)
	kb := keys.Builder{Prefix: "guard:"}
	l := New(rdb, kb, Policy{Limit: 5, Window: 2 * time.Second, BanTime: time.Minute, BanMax: time.Hour})
	for _, user := range []string{"carol", strings.Repeat("u", 60000), "sha256:short"} {
		for i := 0; i < 3; i++ {
			th, err := l.ThrottleFail(ctx, user, 3)
			require.NoError(t, err)
			require.Nil(t, th)
		}
		th, err := l.ThrottleFailTracked(ctx, keys.Tracking(user), 3)
		require.NoError(t, err)
		require.NotNil(t, th, "the 4th failure, given tracked, counts with the first three")
		assert.Equal(t, kb.Throttle(user), th.Key)
		assert.Equal(t, keys.Tracking(user), th.Username)
		assert.Equal(t, int64(1), rdb.Exists(ctx, kb.Throttle(user)).Val())
	}
}
