package e2e

import (
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// Mosquitto 2.0 listens with a backlog of 100: while its thread is busy
// (here: stopped), at most 101 handshakes wait to be accepted and the
// kernel drops every further SYN, each a 1 s wait for the device. The
// plugin gives the broker's listeners listen_backlog (4096 by default)
// once they are open: all 300 handshakes wait in the queue, and the broker
// takes every one of them when it runs again. listen_backlog 0 keeps
// Mosquitto's 100.
func TestListenBacklog(t *testing.T) {
	for _, c := range []struct {
		name     string
		extra    []string
		raised   bool
		logsLine string
	}{
		{"default", nil, true, "mosquitto-guard: listen_backlog 4096 on 2 listeners (Mosquitto's own: 100)"},
		{"off", []string{"auth_opt_listen_backlog 0"}, false, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := &env{t: t, dir: t.TempDir()}
			testenv.Need(t, "mosquitto", "mosquitto_passwd", "redis-server")
			e.redis = testenv.StartRedis(t)
			e.passwd = e.dir + "/passwd"
			e.addUser("alice", "alice-pw")
			port2 := testenv.FreePort(t)
			extra := append([]string{"listener {{PORT}} 127.0.0.1", "listener " + strconv.Itoa(port2) + " 127.0.0.1",
				"auth_opt_metrics_addr 127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))}, c.extra...)
			e.broker = testenv.StartMosquitto(t, e.conf(extra...))
			require.True(t, e.broker.WaitOutput("mosquitto-guard: ready", 5*time.Second))
			if c.logsLine != "" {
				require.True(t, e.broker.WaitOutput(c.logsLine, 5*time.Second), "the log says what was done:\n%s", e.broker.Output())
			} else {
				time.Sleep(200 * time.Millisecond) // the watcher's period is 10 ms
				assert.NotContains(t, e.broker.Output(), "listen_backlog")
			}

			const n = 300
			require.NoError(t, e.broker.Signal(syscall.SIGSTOP))
			got := testenv.Handshakes(e.broker.Addr, n, time.Second)
			got2 := testenv.Handshakes("127.0.0.1:"+strconv.Itoa(port2), n, time.Second)
			require.NoError(t, e.broker.Signal(syscall.SIGCONT))
			if c.raised {
				assert.Equal(t, n, got, "first listener: every handshake waits in the queue")
				assert.Equal(t, n, got2, "second listener too")
			} else {
				assert.Less(t, got, 150, "Mosquitto's backlog of 100")
				assert.Less(t, got2, 150, "Mosquitto's backlog of 100")
			}
			// The broker goes on: a real client connects through the
			// listener that held the queue.
			_, code := e.dial(as("127.9.1.1", "after-queue", "alice", "alice-pw"))
			assert.EqualValues(t, accepted, code)
		})
	}
}
