package main

import (
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/plugin"
)

// listenLikeMosquitto opens a TCP listener on a free loopback port as
// Mosquitto 2.0 does (net.c: listen(sock, 100)), not through Go's net
// package (which asks for somaxconn).
func listenLikeMosquitto(t *testing.T, backlog int) (fd int, addr string) {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { syscall.Close(fd) })
	require.NoError(t, syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	require.NoError(t, syscall.Listen(fd, backlog))
	sa, err := syscall.Getsockname(fd)
	require.NoError(t, err)
	return fd, (&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*syscall.SockaddrInet4).Port}).String()
}

// The broker's listener, opened after plugin_init with Mosquitto's backlog
// of 100, holds 101 handshakes waiting to be accepted; once raised to
// listen_backlog it holds them all. A listener already open when the
// instance was configured (the plugin's own metrics endpoint) is left as
// it is.
func TestBacklogRaisesTheBrokersListeners(t *testing.T) {
	backlogTestReset()
	defer backlogTestReset()
	ownFd, ownAddr := listenLikeMosquitto(t, 100) // open before: "the plugin's own"
	_ = ownFd
	configureBacklog(1024)
	_, brokerAddr := listenLikeMosquitto(t, 100) // Mosquitto's, opened after plugin_init

	const n = 300
	before := testenv.Handshakes(brokerAddr, n, 500*time.Millisecond)
	assert.Less(t, before, 150, "Mosquitto's backlog of 100: about 101 of %d handshakes complete", n)

	_, brokerAddr2 := listenLikeMosquitto(t, 100)
	backlogRaise()
	want, raised, failed := backlogResult()
	assert.Equal(t, 1024, want)
	assert.Equal(t, 2, raised, "both broker listeners (the second still has %d queued)", before)
	assert.Equal(t, 0, failed)
	assert.Equal(t, n, testenv.Handshakes(brokerAddr2, n, 500*time.Millisecond), "listen_backlog 1024: every handshake completes")
	assert.Less(t, testenv.Handshakes(ownAddr, n, 500*time.Millisecond), 150, "the listener open before configure keeps its backlog")
}

// listen_backlog 0 leaves every listener as the broker opened it.
func TestBacklogZeroLeavesThem(t *testing.T) {
	backlogTestReset()
	defer backlogTestReset()
	configureBacklog(0)
	_, addr := listenLikeMosquitto(t, 100)
	backlogRaise()
	want, raised, failed := backlogResult()
	assert.Equal(t, []int{0, 0, 0}, []int{want, raised, failed})
	assert.Less(t, testenv.Handshakes(addr, 300, 500*time.Millisecond), 150)
}

// Of several instances the highest listen_backlog counts.
func TestBacklogHighestInstanceWins(t *testing.T) {
	backlogTestReset()
	defer backlogTestReset()
	configureBacklog(500)
	configureBacklog(0)
	configureBacklog(200)
	backlogRaise()
	want, _, _ := backlogResult()
	assert.Equal(t, 500, want)
}

// The signal handlers' arrival raises the backlog, once: Mosquitto installs
// them right after it opens its listeners.
func TestSignalsArrivalRaisesBacklog(t *testing.T) {
	backlogTestReset()
	defer backlogTestReset()
	signalsPlain()
	defer signalsRestore()
	configureBacklog(1024)
	_, addr := listenLikeMosquitto(t, 100)
	_, raised, _ := backlogResult()
	assert.Equal(t, -1, raised, "not before the handlers are there")
	assert.True(t, signalsOnstack())
	_, raised, _ = backlogResult()
	assert.Equal(t, 1, raised)
	assert.Equal(t, 300, testenv.Handshakes(addr, 300, 500*time.Millisecond))
}

func TestBacklogLine(t *testing.T) {
	for _, c := range []struct {
		want, raised, failed, max int
		line                      string
		level                     plugin.Level
	}{
		{0, 0, 0, 4096, "", plugin.LevelNotice},
		{4096, 2, 0, 4096, "mosquitto-guard: listen_backlog 4096 on 2 listeners (Mosquitto's own: 100)", plugin.LevelNotice},
		{4096, 1, 0, 0, "mosquitto-guard: listen_backlog 4096 on 1 listeners (Mosquitto's own: 100)", plugin.LevelNotice},
		{4096, 1, 0, 128, "mosquitto-guard: listen_backlog 4096: the kernel caps it at net.core.somaxconn 128 on 1 listeners (Mosquitto's own: 100); raise that sysctl for the rest", plugin.LevelWarning},
		{4096, 0, 0, 4096, "mosquitto-guard: listen_backlog 4096: the broker has no TCP listener to give it to", plugin.LevelWarning},
		{4096, 1, 1, 4096, "mosquitto-guard: listen_backlog 4096: given to 1 of 2 listeners; listen() failed on 1 (bad file descriptor)", plugin.LevelWarning},
	} {
		line, level := backlogLine(c.want, c.raised, c.failed, syscall.EBADF, c.max)
		assert.Equal(t, c.line, line)
		assert.Equal(t, c.level, level, c.line)
	}
}
