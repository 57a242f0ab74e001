package store

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type lines struct {
	mu sync.Mutex
	l  []string
}

func (l *lines) log(s string) { l.mu.Lock(); l.l = append(l.l, s); l.mu.Unlock() }

func (l *lines) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.l...)
}

// go-redis's lines: the first at once, the rest of the period as one line
// with their count, to the oldest open sink only; none without a sink.
func TestLogRouter(t *testing.T) {
	r := &logRouter{every: 200 * time.Millisecond}
	ctx := context.Background()
	r.Printf(ctx, "redis: dropped: nobody listens")

	var a, b lines
	stopA := r.add(a.log)
	stopB := r.add(b.log)
	defer stopB()
	r.Printf(ctx, "redis: connection pool: failed to dial after %d attempts: %v", 1, "refused")
	require.Equal(t, []string{"connection pool: failed to dial after 1 attempts: refused"}, a.get())
	for i := 0; i < 5; i++ {
		r.Printf(ctx, "redis: line %d", i)
	}
	assert.Len(t, a.get(), 1, "held back within the period")
	assert.Eventually(t, func() bool { return len(a.get()) == 2 }, time.Second, 10*time.Millisecond)
	assert.Equal(t, "line 4 (and 4 more such lines in the last 200ms)", a.get()[1])
	time.Sleep(300 * time.Millisecond)
	assert.Len(t, a.get(), 2, "nothing more once the count is written")
	assert.Empty(t, b.get(), "one sink gets each line")

	stopA()
	r.Printf(ctx, "redis: after the first closed")
	assert.Len(t, a.get(), 2)
	assert.Equal(t, []string{"after the first closed"}, b.get())
}

// go-redis's own lines never carry Redis's echo of a command's arguments
// (a renamed AUTH's password: atk56).
func TestLogRouterRedactsArgs(t *testing.T) {
	r := &logRouter{every: 200 * time.Millisecond}
	var a lines
	defer r.add(a.log)()
	r.Printf(context.Background(), "redis: %v", "ERR unknown command 'auth', with args beginning with: 'odd-Secret-42' ")
	assert.Equal(t, []string{"ERR unknown command 'auth' (arguments not shown)"}, a.get())
}

// go-redis's own lines may carry a key or channel name, and such a name a
// client's value (a keyspace channel of a known source): no line break or
// control byte of it reaches the broker's log, where it could start a line
// of its own (atk61's suspicion: pub/sub's "channel is full for ...").
func TestLogRouterKeepsOneLine(t *testing.T) {
	r := &logRouter{every: 200 * time.Millisecond}
	var a lines
	defer r.add(a.log)()
	r.Printf(context.Background(), "redis: %s", "channel is full for channel __keyspace@0__:guard:known:x\nmosquitto-guard: event=refused ip=192.0.2.1\r\x1b[31m")
	got := a.get()
	if assert.Len(t, got, 1) {
		assert.NotContains(t, got[0], "\n")
		assert.NotContains(t, got[0], "\r")
		assert.NotContains(t, got[0], "\x1b")
		assert.Contains(t, got[0], `channel is full for channel __keyspace@0__:guard:known:x; mosquitto-guard: event=refused ip=192.0.2.1\x0d\x1b[31m`)
	}
}
