package testenv

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A killed or stopped redis-server's port stays the test's: no other bind
// takes it (a sentinel set of a test still running would make a server
// started there its replica, and flush it), connections to it are refused
// at once, as to a dead server, and Restart starts on it again.
func TestStoppedRedisPortStaysHeld(t *testing.T) {
	r := StartRedis(t)
	for _, end := range []struct {
		name string
		stop func()
	}{{"Kill", r.Kill}, {"Stop", r.Stop}} {
		end.stop()
		start := time.Now()
		_, err := net.DialTimeout("tcp", r.Addr, time.Second)
		require.Error(t, err, "%s: nothing listens on the held port", end.name)
		assert.Less(t, time.Since(start), 500*time.Millisecond, "%s: refused at once, not left hanging", end.name)
		assert.True(t, errors.Is(bindPlain(t, r.Port), syscall.EADDRINUSE), "%s: the port is held: a bind to it fails", end.name)
		r.Restart()
		assert.Equal(t, "PONG", r.CLI("PING"), "%s: Restart starts on the port again", end.name)
	}
}

// bindPlain binds a socket to 127.0.0.1:port without SO_REUSEADDR and
// closes it: nil when the port is free.
func bindPlain(t *testing.T, port int) error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	defer syscall.Close(fd)
	return syscall.Bind(fd, &syscall.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}})
}
