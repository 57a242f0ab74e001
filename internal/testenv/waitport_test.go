package testenv

import (
	"net"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A port that answers is not enough: it must be the program's own socket.
// Before, WaitPort took another process's listener on the port for the
// program's (a redis-server that had failed to bind it was then "started",
// and its test talked to another test's Redis).
func TestWaitPortNeedsItsOwnSocket(t *testing.T) {
	Need(t, "sleep")
	l, err := net.Listen("tcp", "127.0.0.1:0") // another server holds the port
	require.NoError(t, err)
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	port := l.Addr().(*net.TCPAddr).Port
	owns, known := listens(os.Getpid(), port)
	assert.True(t, known, "/proc readable here")
	assert.True(t, owns, "the test process holds the listener")

	p := StartProcess(t, t.TempDir(), "sleep", "5")
	assert.Error(t, p.WaitPort(l.Addr().String(), 300*time.Millisecond), "the port answers, but from another process")
	owns, _ = listens(p.PID(), port)
	assert.False(t, owns)
}

// A redis-server started by StartRedis answers on its own socket.
func TestStartRedisOwnsItsPort(t *testing.T) {
	r := StartRedis(t)
	owns, known := listens(r.PID(), r.Port)
	assert.True(t, known)
	assert.True(t, owns)
}

// A shell that runs the server as its child is started once the child
// listens: start gives each program a process group of its own, and the
// group's sockets count (the README walk-through runs mosquitto so).
func TestWaitPortCountsChildren(t *testing.T) {
	Need(t, "bash", "redis-server")
	port := FreePort(t)
	p := StartProcess(t, t.TempDir(), "bash", "-c", "redis-server --port "+strconv.Itoa(port)+" --bind 127.0.0.1 --save '' --appendonly no & wait")
	t.Cleanup(func() { _ = syscall.Kill(-p.PID(), syscall.SIGKILL) }) // the group: bash and its redis-server
	start := time.Now()
	require.NoError(t, p.WaitPort("127.0.0.1:"+strconv.Itoa(port), 10*time.Second))
	assert.Less(t, time.Since(start), 5*time.Second)
}
