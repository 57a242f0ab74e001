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
	configureBacklog(1024)
	_, brokerAddr := listenLikeMosquitto(t, 100) // Mosquitto's, opened after plugin_init

	const n = 300
	before := testenv.Handshakes(brokerAddr, n, 500*time.Millisecond)
	assert.Less(t, before, 150, "Mosquitto's backlog of 100: about 101 of %d handshakes complete", n)

	fd2, brokerAddr2 := listenLikeMosquitto(t, 100)
	assert.Equal(t, 100, backlogOf(fd2), "sock_diag tells a listener's backlog")
	backlogRaise()
	want, raised, kept, failed := backlogResult()
	assert.Equal(t, 1024, want)
	assert.Equal(t, 2, raised, "both broker listeners (the second still has %d queued)", before)
	assert.Equal(t, 0, kept)
	assert.Equal(t, 0, failed)
	assert.Equal(t, 1024, backlogOf(fd2))
	assert.Equal(t, 100, backlogOf(ownFd), "the listener open before configure keeps its backlog")
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
	want, raised, kept, failed := backlogResult()
	assert.Equal(t, []int{0, 0, 0, 0}, []int{want, raised, kept, failed})
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
	want, _, _, _ := backlogResult()
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
	_, raised, _, _ := backlogResult()
	assert.Equal(t, -1, raised, "not before the handlers are there")
	assert.True(t, signalsOnstack())
	_, raised, _, _ = backlogResult()
	assert.Equal(t, 1, raised)
	assert.Equal(t, 300, testenv.Handshakes(addr, 300, 500*time.Millisecond))
}

// A backlog is only ever raised: a listener that listens with more already
// (libwebsockets asks for SOMAXCONN) keeps its own. Before, listen_backlog
// 200 cut such a listener to 200.
func TestBacklogNeverLowers(t *testing.T) {
	backlogTestReset()
	defer backlogTestReset()
	configureBacklog(200)
	big, bigAddr := listenLikeMosquitto(t, 1000)
	small, _ := listenLikeMosquitto(t, 100)
	backlogRaise()
	_, raised, kept, failed := backlogResult()
	assert.Equal(t, []int{1, 1, 0}, []int{raised, kept, failed})
	assert.Equal(t, 1000, backlogOf(big), "kept its own")
	assert.Equal(t, 200, backlogOf(small), "raised")
	assert.Equal(t, 300, testenv.Handshakes(bigAddr, 300, 500*time.Millisecond))
}

// A second raise (a reload) changes nothing already given, and its line is
// not logged again unless it differs.
func TestBacklogRaiseAgain(t *testing.T) {
	backlogTestReset()
	defer backlogTestReset()
	configureBacklog(1024)
	fd, _ := listenLikeMosquitto(t, 100)
	backlogRaise()
	_, raised, kept, _ := backlogResult()
	assert.Equal(t, []int{1, 0}, []int{raised, kept})
	reraiseBacklog()
	_, raised, kept, _ = backlogResult()
	assert.Equal(t, []int{0, 1}, []int{raised, kept}, "as large already: kept")
	assert.Equal(t, 1024, backlogOf(fd))
}

func TestBacklogLine(t *testing.T) {
	for _, c := range []struct {
		want, raised, kept, failed, max int
		line                            string
		level                           plugin.Level
	}{
		{0, 0, 0, 0, 4096, "", plugin.LevelNotice},
		{4096, 2, 0, 0, 4096, "mosquitto-guard: listen_backlog 4096 on 2 listeners (Mosquitto's own: 100)", plugin.LevelNotice},
		{4096, 1, 0, 0, 0, "mosquitto-guard: listen_backlog 4096 on 1 listeners (Mosquitto's own: 100)", plugin.LevelNotice},
		{200, 1, 1, 0, 4096, "mosquitto-guard: listen_backlog 200 on 1 listeners (Mosquitto's own: 100); 1 kept a larger backlog of their own", plugin.LevelNotice},
		{4096, 1, 0, 0, 128, "mosquitto-guard: listen_backlog 4096: the kernel caps it at net.core.somaxconn 128 on 1 listeners (Mosquitto's own: 100); raise that sysctl, then reload (SIGHUP) or restart the broker, for the rest", plugin.LevelWarning},
		{4096, 0, 0, 0, 4096, "mosquitto-guard: listen_backlog 4096: the broker has no TCP listener to give it to", plugin.LevelWarning},
		{4096, 0, 2, 0, 4096, "mosquitto-guard: listen_backlog 4096 on 0 listeners (Mosquitto's own: 100); 2 kept a larger backlog of their own", plugin.LevelNotice},
		{4096, 1, 0, 1, 4096, "mosquitto-guard: listen_backlog 4096: given to 1 of 2 listeners; listen() failed on 1 (bad file descriptor)", plugin.LevelWarning},
	} {
		line, level := backlogLine(c.want, c.raised, c.kept, c.failed, syscall.EBADF, c.max)
		assert.Equal(t, c.line, line)
		assert.Equal(t, c.level, level, c.line)
	}
}
