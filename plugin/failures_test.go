package plugin

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/ratelimit"
)

// redisErr is an error reply of Redis, as go-redis returns it.
type redisErr string

func (e redisErr) Error() string { return string(e) }
func (redisErr) RedisError()     {}

// flakyCounter fails its first calls with errs, in order, then counts.
type flakyCounter struct {
	fakeCounter
	mu       sync.Mutex
	errs     []error
	calls    int
	attempts map[*ratelimit.Attempt]bool // the Attempts the tries were given
}

func (f *flakyCounter) FailAttempt(ctx context.Context, scope keys.Scope, value string, a *ratelimit.Attempt) (*ratelimit.Ban, error) {
	f.mu.Lock()
	f.calls++
	if f.attempts == nil {
		f.attempts = map[*ratelimit.Attempt]bool{}
	}
	f.attempts[a] = true
	if len(f.errs) > 0 {
		err := f.errs[0]
		f.errs = f.errs[1:]
		f.mu.Unlock()
		return nil, err
	}
	f.mu.Unlock()
	return f.fakeCounter.FailAttempt(ctx, scope, value, a)
}

func (f *flakyCounter) tries() int { f.mu.Lock(); defer f.mu.Unlock(); return f.calls }

func TestNotRun(t *testing.T) {
	dial := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	read := &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	for _, c := range []struct {
		err  error
		want bool
	}{
		{dial, true},
		{errors.Join(errors.New("ratelimit: count failure"), dial), true},
		{redisErr("LOADING Redis is loading the dataset in memory"), true},
		{redisErr("READONLY You can't write against a read only replica."), true},
		{redisErr("ERR max number of clients reached"), true},
		{read, false}, // it may have run: counting it again could count it twice
		{context.DeadlineExceeded, false},
		{redisErr("ERR unknown command"), false},
		{errors.New("EOF"), false},
	} {
		assert.Equal(t, c.want, notRun(c.err), "%v", c.err)
	}
}

// A failure whose count Redis refused unrun (down, loading) is retried
// until counted; one whose count may have run is not sent again among its
// tries: it is given up on, Redis marked down, and held, to be counted once
// when Redis answers again (owedFailures). Until 86ebc24 it was never
// counted again: a source one failure short in Redis, gated by this
// broker's own count to the rate Redis's allowance refills at, was never
// banned (atk97). Counted twice, it is banned a failure early.

func TestFailureCountRetries(t *testing.T) {
	newGuardWith := func(ct FailCounter) (*Guard, *logSink) {
		cfg, err := config.Parse(map[string]string{"password_file": passwdFile(t)})
		require.NoError(t, err)
		ls := &logSink{}
		g, err := NewWith(cfg, Output{Log: ls.log}, Deps{Store: newFakeStore(), Counter: ct})
		require.NoError(t, err)
		t.Cleanup(g.Close)
		return g, ls
	}
	dial := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}

	ct := &flakyCounter{errs: []error{dial, redisErr("LOADING Redis is loading the dataset in memory")}}
	g, _ := newGuardWith(ct)
	assert.Equal(t, Deny, g.Authenticate(cl(1, "192.0.2.1", "a", "alice", "bad")).Result)
	assert.Equal(t, []string{"ip=192.0.2.1"}, waitCounted(t, &ct.fakeCounter, 1), "counted once Redis took it")
	assert.Equal(t, 3, ct.tries())
	ct.mu.Lock()
	assert.Len(t, ct.attempts, 1, "one failure's tries share its Attempt")
	ct.mu.Unlock()

	ct = &flakyCounter{errs: []error{&net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}}}
	g, ls := newGuardWith(ct)
	assert.Equal(t, Deny, g.Authenticate(cl(1, "192.0.2.2", "a", "alice", "bad")).Result)
	require.Eventually(t, func() bool { return ct.tries() == 1 }, time.Second, 5*time.Millisecond)
	require.Eventually(t, func() bool { return strings.Contains(ls.all(), "unreachable") }, time.Second, 5*time.Millisecond, "Redis is marked down")
	assert.Empty(t, ct.counted(), "not sent again among its tries")
	assert.Equal(t, []string{"ip=192.0.2.2"}, waitCounted(t, &ct.fakeCounter, 1), "counted once Redis answered again")
	all := ls.all()
	assert.Less(t, strings.Index(all, "unreachable"), strings.Index(all, "is back"), "after Redis was back: %s", all)
	time.Sleep(400 * time.Millisecond)
	assert.Equal(t, 2, ct.tries(), "and once only")
}
