package plugin

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// atk64FakeRedis answers RESP2 requests: HELLO unknown (go-redis falls
// back to RESP2), PUBLISH with publishReply, anything else +OK.
func atk64FakeRedis(t *testing.T, publishReply string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil || !strings.HasPrefix(line, "*") {
						return
					}
					n, _ := strconv.Atoi(strings.TrimSpace(line[1:]))
					var args []string
					for i := 0; i < n; i++ {
						hdr, err := r.ReadString('\n')
						if err != nil {
							return
						}
						m, _ := strconv.Atoi(strings.TrimSpace(hdr[1:]))
						buf := make([]byte, m+2)
						if _, err := io64ReadFull(r, buf); err != nil {
							return
						}
						args = append(args, string(buf[:m]))
					}
					reply := "+OK\r\n"
					switch strings.ToLower(args[0]) {
					case "hello":
						reply = "-ERR unknown command 'HELLO'\r\n"
					case "ping":
						reply = "+PONG\r\n"
					case "publish":
						reply = "-" + publishReply + "\r\n"
					}
					if _, err := c.Write([]byte(reply)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}

func io64ReadFull(r *bufio.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// DEFECT (low; Redis 7.2 and later). publishChange tells a refused
// channel from a refused PUBLISH command by the word "command" anywhere in
// Redis's reply; Redis 7.2 names the user and the channel in it ("NOPERM
// User <user> has no permissions to access the '<channel>' channel"): a
// Redis user or a key_prefix holding "command" (mqtt-command, command:)
// refused the channel is told to give the user +publish, which it has.
// Cause: plugin/publish.go publishChange (strings.Contains(..., "command")).
func TestAtk64PublishChannelRefusalToldAsCommand(t *testing.T) {
	for _, c := range []struct{ user, prefix string }{{"mqtt-command", "guard:"}, {"guard", "command:"}} {
		ch := keys.Builder{Prefix: c.prefix}.Changes()
		reply := fmt.Sprintf("NOPERM User %s has no permissions to access the '%s' channel", c.user, ch)
		addr := atk64FakeRedis(t, reply)
		var lines []string
		g := &Guard{cfg: config.Options{KeyPrefix: c.prefix},
			bgStore: store.New(store.Options{Addrs: []string{addr}, Timeout: time.Second}, keys.Builder{Prefix: c.prefix}),
			log:     func(_ Level, s string) { lines = append(lines, s) }}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		g.publishChange(ctx, c.prefix+"block:ip:192.0.2.1")
		cancel()
		g.bgStore.Close()
		require.Len(t, lines, 1, "control: the refusal is logged (%+v)", c)
		require.Contains(t, lines[0], "NOPERM", "control")
		assert.Contains(t, lines[0], "&"+ch, "user %q, prefix %q: a channel refusal told as the command's: %s", c.user, c.prefix, lines[0])
		assert.NotContains(t, lines[0], "+publish", "user %q, prefix %q", c.user, c.prefix)
	}
}

// DEFECT. knownSources' load takes any error for Redis down: a refused
// ZRANGE (a user without it, which the start check lets start:
// store TestAtk64NoZrangeUserPassesKnownCheck; or Redis before 6.2, which
// has no ZRANGE ... BYSCORE and answers a syntax error) calls health.down
// with Redis's reply, so each load of a throttled username's known sources
// marks Redis down (redis_unavailable deny: every client refused until the
// next ping), where the writer (exec) keeps error replies from doing so
// ("An error reply ... is an answer: Redis is not down"). Cause:
// plugin/known.go startLoad (k.down(err) without store.IsReply).
func TestAtk64KnownLoadReplyMarksRedisDown(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("ACL", "SETUSER", "nozr", "on", ">pw", "~*", "&*", "+@all", "-zrange")
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr, Username: "nozr", Password: "pw"})
	defer rdb.Close()
	stop := make(chan struct{})
	defer close(stop)
	downs := make(chan error, 4)
	k := newKnownSources(knownDeps{rdb: rdb, kb: keys.Builder{Prefix: "guard:"}, max: 100, window: time.Hour, failWindow: time.Minute, userLimit: 20,
		down: func(err error) { downs <- err },
		log:  func(Level, string) {},
		spawn: func(name string, fn func()) {
			if name == "known sources load" {
				go fn()
			}
		}, stop: stop})
	k.known("alice", netip.MustParseAddr("192.0.2.7"), "dev-1", time.Now())
	select {
	case err := <-downs:
		assert.False(t, store.IsReply(err), "a reply of Redis (%v) taken for Redis down", err)
	case <-time.After(3 * time.Second):
	}
}
