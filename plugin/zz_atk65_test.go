package plugin

import (
	"bufio"
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

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// atk65FakeRedis answers RESP2 requests: HELLO unknown (go-redis falls
// back to RESP2), PING with PONG, anything else with the error reply.
func atk65FakeRedis(t *testing.T, reply string) string {
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
					out := "-" + reply + "\r\n"
					switch strings.ToLower(args[0]) {
					case "hello":
						out = "-ERR unknown command 'HELLO'\r\n"
					case "ping":
						out = "+PONG\r\n"
					}
					if _, err := c.Write([]byte(out)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}

// DEFECT (low). Since atk64, knownSources' load takes any error reply for
// an answer (refusedBy "reading", logged at most once per 10 minutes), not
// Redis down. But a Redis Cluster with slots uncovered (CLUSTERDOWN), one
// in motion (TRYAGAIN), a replica cut from its master (MASTERDOWN) or a
// Redis still loading its data (LOADING) is an outage, which PING on a
// cluster does not see (any node answers PONG): the failure queue
// (plugin/failures.go notRun) and the known sources' own writer
// (rewriteRetryable) take these replies as "not run"; the load alone logs
// "redis refused reading known sources" and leaves Redis up, so
// redis_unavailable never applies for it. Cause: plugin/known.go
// startLoad (store.IsReply without the outage replies).
func TestAtk65KnownLoadHidesOutageReplies(t *testing.T) {
	for _, reply := range []string{"CLUSTERDOWN The cluster is down", "TRYAGAIN Multiple keys request during rehashing of slot",
		"MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", "LOADING Redis is loading the dataset in memory"} {
		addr := atk65FakeRedis(t, reply)
		rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
		stop := make(chan struct{})
		downs := make(chan error, 4)
		logs := make(chan string, 4)
		k := newKnownSources(knownDeps{rdb: rdb, kb: keys.Builder{Prefix: "guard:"}, max: 100, window: time.Hour, failWindow: time.Minute, userLimit: 20,
			down: func(err error) { downs <- err },
			log:  func(_ Level, s string) { logs <- s },
			spawn: func(name string, fn func()) {
				if name == "known sources load" {
					go fn()
				}
			}, stop: stop})
		k.known("alice", netip.MustParseAddr("192.0.2.7"), "dev-1", time.Now())
		select {
		case err := <-downs:
			assert.Contains(t, err.Error(), strings.Fields(reply)[0])
		case l := <-logs:
			assert.Fail(t, "an outage reply to the known sources' load was logged as a refusal, Redis left up", "%s: %s", reply, l)
		case <-time.After(3 * time.Second):
			assert.Fail(t, "no answer", reply)
		}
		close(stop)
		rdb.Close()
	}
}
