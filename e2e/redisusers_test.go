package e2e

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// cheapUserHash is a well-formed $7$ hash (PBKDF2-SHA512, 101 iterations)
// that no password matches: the many users of the redis-backend timing
// tests, whose load and ranking take the time, not their checks.
var cheapUserHash = "$7$101$AAAAAAAAAAAAAAAA$" + strings.Repeat("A", 86) + "=="

// storeCheapUsers stores n redis-backend users u0, u1, ... with
// cheapUserHash, pipelined 10 000 at a time.
func (e *env) storeCheapUsers(n int) {
	e.t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: e.redis.Addr})
	defer rdb.Close()
	ctx := context.Background()
	for i := 0; i < n; i += 10_000 {
		p := rdb.Pipeline()
		for j := i; j < min(i+10_000, n); j++ {
			p.Set(ctx, fmt.Sprintf("guard:user:u%d", j), cheapUserHash, 0)
		}
		_, err := p.Exec(ctx)
		require.NoError(e.t, err)
	}
}

// startBrokerWhileRedisHangs starts e's broker with conf while its Redis is
// stopped (SIGSTOP: a failover, a slow disk), so that the start does not
// wait for the replica's first load, then lets Redis go on.
func (e *env) startBrokerWhileRedisHangs(t *testing.T, conf string) {
	t.Helper()
	require.NoError(t, e.redis.Signal(syscall.SIGSTOP))
	stopped := true
	t.Cleanup(func() {
		if stopped {
			_ = e.redis.Signal(syscall.SIGCONT)
		}
	})
	e.broker = startBroker(t, conf)
	require.NoError(t, e.redis.Signal(syscall.SIGCONT))
	stopped = false
}
