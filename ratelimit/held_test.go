package ratelimit

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/rediserr"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// heldWriteLimiter is a Limiter whose first request carrying trigger
// reaches Redis hold late (testenv.HoldingProxy), its try having given up
// after 300 ms: as a write waits in the socket of a Redis stopped
// meanwhile, which runs it when it resumes.
func heldWriteLimiter(t *testing.T, r *testenv.Redis, p Policy, trigger string, hold time.Duration) (*Limiter, <-chan struct{}) {
	t.Helper()
	addr, ran := testenv.HoldingProxy(t, r.Addr, trigger, hold)
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, ReadTimeout: 300 * time.Millisecond})
	t.Cleanup(func() { c.Close() })
	return New(c, keys.Builder{Prefix: "guard:"}, p), ran
}

// neverThere asserts key is not in Redis at any of a few readings over d.
func neverThere(t *testing.T, r *testenv.Redis, key string, d time.Duration) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if !assert.Equal(t, "0", r.CLI("EXISTS", key), "written after its time") {
			return
		}
	}
}

// A ban whose write Redis runs after the ban's time is over writes
// nothing, and one it runs late writes what is left of it: the ban ends
// its length after Redis's clock was read on its key's node, however late
// its write runs. Before, the write's expiry was relative: a 1 s ban sent
// before a 6 s SIGSTOP held for 1 s from the SIGCONT, unlogged (its try
// had lapsed: event=ban_lapsed), against an operator's view of it as over
// (atk97's H).
func TestBanWrittenLateHoldsOnlyWhatIsLeft(t *testing.T) {
	ctx := context.Background()
	r, rdb := setup(t)
	kb := keys.Builder{Prefix: "guard:"}
	p := Policy{Limit: 1, Window: time.Minute, BanTime: time.Second, BanMax: time.Hour}
	direct := New(rdb, kb, p)

	// Held past its end: never written.
	_, err := direct.Fail(ctx, keys.IP, "192.0.2.70") // the allowance spent
	require.NoError(t, err)
	l, ran := heldWriteLimiter(t, r, p, "(ban ", 1500*time.Millisecond)
	var a Attempt
	b, err := l.FailAttempt(ctx, keys.IP, "192.0.2.70", &a)
	require.Error(t, err, "the try gave up")
	require.Nil(t, b)
	<-ran
	neverThere(t, r, "guard:block:ip:192.0.2.70", 300*time.Millisecond)
	b, err = direct.FailAttempt(ctx, keys.IP, "192.0.2.70", &a)
	assert.ErrorIs(t, err, ErrLapsed)
	assert.Nil(t, b)
	assert.Equal(t, "0", r.CLI("EXISTS", "guard:offences:ip:192.0.2.70"), "no offence counted")

	// Held for part of it: what is left.
	p.BanTime = 3 * time.Second
	direct = New(rdb, kb, p)
	_, err = direct.Fail(ctx, keys.IP, "192.0.2.71")
	require.NoError(t, err)
	l, ran = heldWriteLimiter(t, r, p, "(ban ", time.Second)
	a = Attempt{}
	read := time.Now()
	_, err = l.FailAttempt(ctx, keys.IP, "192.0.2.71", &a)
	require.Error(t, err, "the try gave up")
	<-ran
	pttl := rdb.PTTL(ctx, "guard:block:ip:192.0.2.71").Val()
	require.Positive(t, pttl, "control: the late write wrote it")
	// Its length from when Redis's clock was read, a round trip or two
	// after the try began (written whole when it ran: 1 s later).
	ends := time.Now().Add(pttl)
	assert.WithinDuration(t, read.Add(p.BanTime), ends, 100*time.Millisecond, "ends %s after its length from the try", ends.Sub(read.Add(p.BanTime)))
	b, err = direct.FailAttempt(ctx, keys.IP, "192.0.2.71", &a)
	require.NoError(t, err)
	require.NotNil(t, b, "the try again finds its write")
	assert.False(t, b.Expires.After(ends.Add(20*time.Millisecond)), "reported to end %s after its key", b.Expires.Sub(ends))
}

// The same for a username throttle: its write run after the allowance's
// wait is over writes nothing.
func TestThrottleWrittenLateHoldsOnlyWhatIsLeft(t *testing.T) {
	ctx := context.Background()
	r, rdb := setup(t)
	kb := keys.Builder{Prefix: "guard:"}
	p := Policy{Limit: 1, Window: time.Second}
	_, err := New(rdb, kb, p).ThrottleFailTracked(ctx, "bob", 1) // the allowance spent
	require.NoError(t, err)
	l, ran := heldWriteLimiter(t, r, p, "(throttle ", 1500*time.Millisecond)
	var a Attempt
	th, err := l.ThrottleFailAttempt(ctx, "bob", 1, &a)
	require.Error(t, err, "the try gave up")
	require.Nil(t, th)
	<-ran
	neverThere(t, r, "guard:throttle:username:bob", 300*time.Millisecond)
}

// A write never holds longer than its length, whatever Redis's clock did
// since the end was set (here an end an hour ahead, as after a step back
// of Redis's clock or a failover to a node whose clock is behind): a
// review of ebd7f99.
func TestBanWriteNeverOutlastsItsLength(t *testing.T) {
	ctx := context.Background()
	_, rdb := setup(t)
	l := New(rdb, keys.Builder{Prefix: "guard:"}, Policy{Limit: 1, Window: time.Minute, BanTime: time.Minute})
	own, left, err := l.setOwn(ctx, "guard:block:ip:192.0.2.72", "auto: ours", time.Now().Add(time.Hour).UnixMicro(), time.Second, 0)
	require.NoError(t, err)
	assert.True(t, own)
	assert.Equal(t, time.Second, left)
	assert.LessOrEqual(t, rdb.PTTL(ctx, "guard:block:ip:192.0.2.72").Val(), time.Second)
}

// A write whose read of the key Redis refuses (an ACL that lets the
// user write the block keys and not read them; here GET refused) is an error, not "banned
// already": taken for another's ban, no ban was written and nothing
// said so (a review of ebd7f99). A key of another type is still someone
// else's.
func TestBanWriteRefusedReadIsAnError(t *testing.T) {
	ctx := context.Background()
	r, rdb := setup(t)
	l := New(rdb, keys.Builder{Prefix: "guard:"}, Policy{Limit: 1, Window: time.Minute, BanTime: time.Minute})
	require.NoError(t, rdb.HSet(ctx, "guard:block:ip:192.0.2.74", "f", "v").Err())
	own, _, err := l.setOwn(ctx, "guard:block:ip:192.0.2.74", "auto: ours", time.Now().Add(time.Minute).UnixMicro(), time.Minute, 0)
	require.NoError(t, err, "control: a hash there")
	assert.False(t, own)

	r.CLI("ACL", "SETUSER", "default", "-get")
	t.Cleanup(func() { r.CLI("ACL", "SETUSER", "default", "+get") })
	own, _, err = l.setOwn(ctx, "guard:block:ip:192.0.2.73", "auto: ours", time.Now().Add(time.Minute).UnixMicro(), time.Minute, 0)
	assert.False(t, own)
	require.Error(t, err)
	assert.True(t, rediserr.IsReply(err), "Redis's refusal, not %v", err) // Redis 7.0: "ERR The user executing the script can't run this command"
	assert.NotErrorIs(t, err, ErrLapsed)
}

// A copy of a try's write that Redis runs after the try gave up writes
// nothing: here the first try's write is held on its way 1.5 s, its try
// gives up at 400 ms, a second try writes the ban (logged: event=banned),
// and an operator deletes it; the held copy then reaches Redis. Before,
// it found the key gone and time left, and put the ban back (atk100: a
// DEL 1.7 s after event=banned undone, the ban held 26 s more).
func TestLateCopyOfAWriteDoesNotUndoADel(t *testing.T) {
	ctx := context.Background()
	r, rdb := setup(t)
	kb := keys.Builder{Prefix: "guard:"}
	p := Policy{Limit: 1, Window: time.Minute, BanTime: 30 * time.Second, BanMax: time.Hour}
	direct := New(rdb, kb, p)
	_, err := direct.Fail(ctx, keys.IP, "192.0.2.75") // the allowance spent
	require.NoError(t, err)
	l, ran := heldWriteLimiter(t, r, p, "(ban ", 1500*time.Millisecond)

	var a Attempt
	try, cancel := context.WithTimeout(ctx, 400*time.Millisecond)
	_, err = l.FailAttempt(try, keys.IP, "192.0.2.75", &a)
	cancel()
	require.Error(t, err, "the first try gave up")
	try, cancel = context.WithTimeout(ctx, 2*time.Second)
	b, err := direct.FailAttempt(try, keys.IP, "192.0.2.75", &a)
	cancel()
	require.NoError(t, err)
	require.NotNil(t, b, "the second try wrote it")
	require.Equal(t, "1", r.CLI("DEL", "guard:block:ip:192.0.2.75"), "an operator's DEL")
	<-ran
	neverThere(t, r, "guard:block:ip:192.0.2.75", 300*time.Millisecond)
}

// A write Redis runs after its try's deadline (by Redis's clock as read
// before) writes nothing and says so, and the try after it reads the clock
// again (errLate: Redis's clock ran ahead of this broker's meanwhile).
func TestWriteAfterItsTryIsLate(t *testing.T) {
	ctx := context.Background()
	r, rdb := setup(t)
	l := New(rdb, keys.Builder{Prefix: "guard:"}, Policy{Limit: 1, Window: time.Minute, BanTime: time.Minute})
	own, _, err := l.setOwn(ctx, "guard:block:ip:192.0.2.76", "auto: ours", time.Now().Add(time.Minute).UnixMicro(), time.Minute,
		time.Now().Add(-time.Second).UnixMicro())
	assert.False(t, own)
	assert.ErrorIs(t, err, errLate)
	assert.Equal(t, "0", r.CLI("EXISTS", "guard:block:ip:192.0.2.76"))

	a := Attempt{clockUs: 1, clockAt: time.Now(), endUs: time.Now().Add(time.Minute).UnixMicro(), endBy: time.Now().Add(time.Minute)}
	require.NoError(t, l.anchor(ctx, "guard:block:ip:192.0.2.76", time.Minute, &a))
	assert.EqualValues(t, 1, a.clockUs, "control: read once")
	a.clockUs = 0 // as banAs does after errLate
	end := a.endUs
	require.NoError(t, l.anchor(ctx, "guard:block:ip:192.0.2.76", time.Minute, &a))
	assert.InDelta(t, time.Now().UnixMicro(), a.clockUs, float64(time.Second.Microseconds()), "read again")
	assert.Equal(t, end, a.endUs, "the end stays")
}

// A try whose write comes back late (errLate: Redis's clock ahead of the
// deadline moved onto it, here by a reading made to look 10 s old) reads
// the clock again, and the next try writes the ban or the throttle;
// without the new reading every try would come back late alike until the
// failure's tries ran out.
func TestTryAfterALateWriteReadsTheClockAgain(t *testing.T) {
	ctx := context.Background()
	kb := keys.Builder{Prefix: "guard:"}
	tracked := keys.Tracking("bob")
	cases := []struct {
		name, key string
		decided   func(a *Attempt) // the ban or throttle decided by an earlier step
		try       func(l *Limiter, ctx context.Context, a *Attempt) (written bool, err error)
	}{
		{"ban", "guard:block:ip:192.0.2.77",
			func(a *Attempt) { a.over = true },
			func(l *Limiter, ctx context.Context, a *Attempt) (bool, error) {
				b, err := l.FailAttempt(ctx, keys.IP, "192.0.2.77", a)
				return b != nil, err
			}},
		{"throttle", kb.ThrottleTracked(tracked),
			func(a *Attempt) {
				a.thr = &Throttle{Username: tracked, Key: kb.ThrottleTracked(tracked), Duration: time.Minute,
					Reason: keys.AutoBanMarker + " test (throttle 1)"}
				a.thrAt = time.Now()
			},
			func(l *Limiter, ctx context.Context, a *Attempt) (bool, error) {
				th, err := l.ThrottleFailAttempt(ctx, tracked, 1, a)
				return th != nil, err
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, rdb := setup(t)
			l := New(rdb, kb, Policy{Limit: 1, Window: time.Minute, BanTime: time.Minute, BanMax: time.Hour})
			now := time.Now()
			a := Attempt{endUs: now.Add(time.Minute).UnixMicro(), endBy: now.Add(time.Minute),
				clockUs: now.Add(-10 * time.Second).UnixMicro(), clockAt: now}
			c.decided(&a)
			try, cancel := context.WithTimeout(ctx, 2*time.Second)
			written, err := c.try(l, try, &a)
			cancel()
			require.ErrorIs(t, err, errLate, "control: the write came back late")
			require.False(t, written)
			require.Equal(t, "0", r.CLI("EXISTS", c.key))
			try, cancel = context.WithTimeout(ctx, 2*time.Second)
			written, err = c.try(l, try, &a)
			cancel()
			require.NoError(t, err)
			require.True(t, written, "written by the next try")
			assert.Equal(t, "1", r.CLI("EXISTS", c.key))
		})
	}
}
