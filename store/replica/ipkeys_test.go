package replica

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// neverMatch lists list keys the plugin can never match, with what Put says.
var neverMatch = []struct{ key, why string }{
	{"guard:block:ip:0:0:0:0:0:0:0:1", `ip key "guard:block:ip:0:0:0:0:0:0:0:1" can never match: expected guard:block:ip:::1`},
	{"guard:allow:ip:::ffff:1.2.3.4", `ip key "guard:allow:ip:::ffff:1.2.3.4" can never match: expected guard:allow:ip:1.2.3.4`},
	{"guard:block:ip:2001:DB8::1", `ip key "guard:block:ip:2001:DB8::1" can never match: expected guard:block:ip:2001:db8::1`},
	{"guard:block:ip:fe80::1%eth0", `ip key "guard:block:ip:fe80::1%eth0" can never match: expected guard:block:ip:fe80::1`},
	{"guard:block:ip:127.000.0.1", `ip key "guard:block:ip:127.000.0.1" can never match: keys: bad IP address "127.000.0.1": expected an address such as 192.0.2.1 or 2001:db8::1`},
	{"guard:allow:ip:not-an-ip", `ip key "guard:allow:ip:not-an-ip" can never match: keys: bad IP address "not-an-ip": expected an address such as 192.0.2.1 or 2001:db8::1`},
	{"guard:block:ip:", `ip key "guard:block:ip:" can never match: keys: bad IP address "": expected an address such as 192.0.2.1 or 2001:db8::1`},
	{"guard:block:cidr:203.0.113.5/24", `range key "guard:block:cidr:203.0.113.5/24" can never match: keys: bad range "203.0.113.5/24": expected the canonical network 203.0.113.0/24`},
}

func TestNonCanonicalKeysAreRefused(t *testing.T) {
	r := New(kb)
	now := time.Now()
	for _, c := range neverMatch {
		err := r.Put(c.key, "typo", time.Time{})
		require.Error(t, err, c.key)
		assert.Equal(t, c.why, err.Error())
		r.Delete(c.key) // a no-op, as for any key not held
	}
	assert.Equal(t, 0, r.Len(), "keys that can never match are not held")

	// The canonical forms are held, and match the clients they name.
	for _, k := range []string{"guard:block:ip:::1", "guard:allow:ip:1.2.3.4", "guard:block:ip:2001:db8::1"} {
		require.NoError(t, r.Put(k, "ok", time.Time{}), k)
	}
	assert.Equal(t, 3, r.Len())
	assert.Equal(t, "guard:block:ip:::1", r.Lookup(q("a", "0:0:0:0:0:0:0:1", ""), now).Block.Key)
	assert.Equal(t, "guard:allow:ip:1.2.3.4", r.Lookup(q("a", "1.2.3.4", ""), now).Allow.Key)
	assert.Equal(t, "guard:block:ip:2001:db8::1", r.Lookup(q("a", "2001:DB8::1", ""), now).Block.Key)
}

// logSink collects a Sync's notices.
type logSink struct {
	mu    sync.Mutex
	lines []string
}

func (l *logSink) log(_ bool, m string) { l.mu.Lock(); l.lines = append(l.lines, m); l.mu.Unlock() }

func (l *logSink) has(line string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range l.lines {
		if m == line {
			return true
		}
	}
	return false
}

func (l *logSink) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// Keys that can never match are reported whether the load finds them or a
// change brings them, with the key expected.
func TestSyncReportsNonCanonicalKeys(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	ctx := context.Background()
	atStart, live := neverMatch[:4], neverMatch[4:]
	for _, c := range atStart {
		require.NoError(t, rdb.Set(ctx, c.key, "typo", 0).Err())
	}
	require.NoError(t, rdb.Set(ctx, "guard:block:ip:198.51.100.9", "fine", 0).Err())

	r := New(kb)
	logs := &logSink{}
	s := NewSync(r, rdb, Options{ResyncEvery: time.Hour, Log: logs.log})
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { s.Run(runCtx); close(done) }()
	defer func() { cancel(); <-done }()
	require.Eventually(t, s.Healthy, 5*time.Second, 5*time.Millisecond)
	for _, c := range atStart {
		assert.True(t, logs.has(c.why), "load: no %q in:\n%s", c.why, logs)
	}
	assert.Equal(t, 1, r.Len())

	for _, c := range live {
		require.NoError(t, rdb.Set(ctx, c.key, "typo", 0).Err())
	}
	for _, c := range live {
		require.Eventually(t, func() bool { return logs.has(c.why) }, 2*time.Second, time.Millisecond, "change: no %q in:\n%s", c.why, logs)
	}
	assert.NotContains(t, logs.String(), "198.51.100.9", "a canonical key is not reported")
	assert.Equal(t, 1, r.Len())
}
