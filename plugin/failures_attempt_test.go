package plugin

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/ratelimit"
)

// A ban whose SET ran but whose reply was lost, with an error that does
// not say "never ran" (here the lost connection itself; a reply timed out
// at countTimeout is another), is tried again with its Attempt: the try
// finds its own value, and the ban is logged and its offence counted.
// Before, the queue gave up at such an error: the ban held in Redis, no
// event=banned line, the offence uncounted, and Redis marked down (a
// review of b50b18d).
func TestBanWhoseReplyWasLostIsTriedAgain(t *testing.T) {
	r := testenv.StartRedis(t)
	direct := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { direct.Close() })
	// The ban's scripts loaded (a ban of another address): the request
	// cut is the ban's write, not an EVALSHA meeting NOSCRIPT.
	loader := ratelimit.New(direct, keys.Builder{Prefix: "guard:"}, ratelimit.Policy{Limit: 1, Window: time.Minute, BanTime: time.Second})
	for range 2 {
		_, err := loader.Fail(context.Background(), keys.IP, "198.51.100.1")
		require.NoError(t, err)
	}
	// No resend of go-redis's own: the lost reply is the try's error.
	cut := redis.NewClient(&redis.Options{Addr: testenv.ClosingProxy(t, r.Addr, "(ban ", true), MaxRetries: -1})
	t.Cleanup(func() { cut.Close() })
	cfg, err := config.Parse(map[string]string{"password_file": passwdFile(t), "fail_limit": "1", "fail_scopes": "ip"})
	require.NoError(t, err)
	ls := &logSink{}
	lim := ratelimit.New(cut, keys.Builder{Prefix: "guard:"}, cfg.Policy)
	g, err := NewWith(cfg, Output{Log: ls.log}, Deps{Store: newFakeStore(), Counter: lim})
	require.NoError(t, err)
	t.Cleanup(g.Close)

	for i := range 2 {
		assert.Equal(t, Deny, g.Authenticate(cl(uintptr(1+i), "192.0.2.77", "a", "alice", "bad")).Result)
	}
	require.Eventually(t, func() bool { return strings.Contains(ls.all(), "event=banned") }, 5*time.Second, 10*time.Millisecond,
		"the ban logged: %s", ls.all())
	assert.Equal(t, "1", r.CLI("GET", "guard:offences:ip:192.0.2.77"), "its offence counted once")
	assert.Equal(t, 1, strings.Count(ls.all(), "event=banned"))
	assert.NotContains(t, ls.all(), "not counted")
}

// A ban whose time was over before Redis answered is logged as such, and
// Redis, which answers, is not marked down. Before, the try returned no
// ban and no error: nothing said that the failure over its limit had no
// ban (a review of 210e1f4).
func TestLapsedBanIsLogged(t *testing.T) {
	lapsed := fmt.Errorf("ratelimit: write ban %q: %w", "guard:block:ip:192.0.2.78", ratelimit.ErrLapsed)
	ct := &flakyCounter{errs: []error{lapsed}}
	cfg, err := config.Parse(map[string]string{"password_file": passwdFile(t), "fail_scopes": "ip"})
	require.NoError(t, err)
	ls := &logSink{}
	g, err := NewWith(cfg, Output{Log: ls.log}, Deps{Store: newFakeStore(), Counter: ct})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	assert.Equal(t, Deny, g.Authenticate(cl(1, "192.0.2.78", "a", "alice", "bad")).Result)
	require.Eventually(t, func() bool { return strings.Contains(ls.all(), "event=ban_lapsed") }, 2*time.Second, 5*time.Millisecond)
	assert.Contains(t, ls.all(), `guard:block:ip:192.0.2.78`)
	assert.NotContains(t, ls.all(), "unreachable", "Redis not marked down")
	assert.Equal(t, 1, ct.tries(), "not tried again")
}
