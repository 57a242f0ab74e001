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
// of 100, holds 101 handshakes waiting to be accepted; found (raise) and
// given a level (apply), it holds them all. A listener already open when
// the instance was configured (the plugin's own metrics endpoint) is left
// as it is.
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
	assert.Equal(t, []int{1024, 2, 0, 0}, []int{want, raised, kept, failed}, "both broker listeners found (the first still has %d queued)", before)
	assert.Equal(t, 100, backlogOf(fd2), "found, not given anything before the broker is measured")
	assert.Equal(t, 2, backlogApply(1024))
	assert.Equal(t, 1024, backlogOf(fd2))
	assert.Equal(t, 100, backlogOf(ownFd), "the listener open before configure keeps its backlog")
	assert.Equal(t, n, testenv.Handshakes(brokerAddr2, n, 500*time.Millisecond), "every handshake completes")
	assert.Less(t, testenv.Handshakes(ownAddr, n, 500*time.Millisecond), 150, "the listener open before configure keeps its backlog")

	// A level above the ceiling is the ceiling; a lower one lowers what was
	// given, never below the listener's own.
	assert.Equal(t, 0, backlogApply(5000), "already at the ceiling")
	assert.Equal(t, 1024, backlogOf(fd2))
	assert.Equal(t, 2, backlogApply(300))
	assert.Equal(t, 300, backlogOf(fd2))
	backlogApply(50)
	assert.Equal(t, 100, backlogOf(fd2), "never below its own")
}

// listen_backlog 0 leaves every listener as the broker opened it.
func TestBacklogZeroLeavesThem(t *testing.T) {
	backlogTestReset()
	defer backlogTestReset()
	configureBacklog(0)
	fd, addr := listenLikeMosquitto(t, 100)
	backlogRaise()
	want, raised, kept, failed := backlogResult()
	assert.Equal(t, []int{0, 0, 0, 0}, []int{want, raised, kept, failed})
	assert.Equal(t, 0, backlogApply(1024))
	assert.Equal(t, 100, backlogOf(fd))
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

// The signal handlers' arrival finds the listeners, once: Mosquitto
// installs them right after it opens its listeners.
func TestSignalsArrivalRaisesBacklog(t *testing.T) {
	backlogTestReset()
	defer backlogTestReset()
	signalsPlain()
	defer signalsRestore()
	configureBacklog(1024)
	fd, _ := listenLikeMosquitto(t, 100)
	_, raised, _, _ := backlogResult()
	assert.Equal(t, -1, raised, "not before the handlers are there")
	assert.True(t, signalsOnstack())
	_, raised, _, _ = backlogResult()
	assert.Equal(t, 1, raised)
	assert.Equal(t, 1, backlogApply(1024))
	assert.Equal(t, 1024, backlogOf(fd))
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
	backlogApply(200)
	assert.Equal(t, 1000, backlogOf(big), "kept its own")
	assert.Equal(t, 200, backlogOf(small), "raised")
	backlogApply(150)
	assert.Equal(t, 1000, backlogOf(big), "kept its own")
	assert.Equal(t, 150, backlogOf(small))
	assert.Equal(t, 300, testenv.Handshakes(bigAddr, 300, 500*time.Millisecond))
}

// A reload finds the listeners again and gives them the level again (the
// kernel caps at listen(): a raised somaxconn then takes effect); what
// they were given is not taken for their own.
func TestBacklogRaiseAgain(t *testing.T) {
	backlogTestReset()
	defer backlogTestReset()
	configureBacklog(1024)
	fd, _ := listenLikeMosquitto(t, 100)
	backlogRaise()
	backlogApply(1024)
	reraiseBacklog()
	_, raised, kept, _ := backlogResult()
	assert.Equal(t, []int{1, 0}, []int{raised, kept}, "its own is still 100, not the 1024 given")
	assert.Equal(t, 1024, backlogOf(fd))
	backlogApply(300)
	assert.Equal(t, 300, backlogOf(fd), "and can be lowered to the level, down to its own")
	// A reload looks at no descriptor (a busy broker's are its clients',
	// read on the broker thread): a listener opened since is not found.
	late, _ := listenLikeMosquitto(t, 100)
	reraiseBacklog()
	assert.Equal(t, 300, backlogOf(fd))
	assert.Equal(t, 100, backlogOf(late), "not looked for at a reload")
}

// The level: what the broker takes in backlogWait/2 at its rate over the
// window, between Mosquitto's 100 and the ceiling.
func TestBacklogLevel(t *testing.T) {
	for _, c := range []struct {
		n       uint64
		span    time.Duration
		ceiling int
		want    int
	}{
		{100, 10 * time.Millisecond, 4096, 4096}, // 10 000/s: 5 000 in 0.5 s, the ceiling
		{20, 10 * time.Millisecond, 4096, 1000},
		{20, 30 * time.Millisecond, 4096, 333},   // 3 ms a CONNECT: a slow hash uncached
		{20, 1400 * time.Millisecond, 4096, 100}, // bcrypt: Mosquitto's own
		{0, time.Second, 4096, 100},              // idle
		{20, 10 * time.Millisecond, 1000, 1000},
		{20, 20 * time.Millisecond, 0, 0},
	} {
		assert.Equal(t, c.want, backlogLevel(c.n, c.span, c.ceiling), "%d in %s, ceiling %d", c.n, c.span, c.ceiling)
	}
}

// The sizer decides once a window holds backlogMinCount CONNECTs or spans
// backlogMaxSpan, and only on a move of a quarter or more.
func TestBacklogSizer(t *testing.T) {
	s := backlogSizer{ceiling: 4096}
	t0 := time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	_, ok := s.sample(0, t0)
	assert.False(t, ok, "a first point")
	_, ok = s.sample(19, at(20*time.Millisecond))
	assert.False(t, ok, "19 CONNECTs: not yet")
	l, ok := s.sample(20, at(30*time.Millisecond))
	assert.True(t, ok)
	assert.Equal(t, 333, l, "1.5 ms a CONNECT")
	_, ok = s.sample(40, at(65*time.Millisecond))
	assert.False(t, ok, "1.75 ms: 285, within a quarter of 333")
	l, ok = s.sample(240, at(75*time.Millisecond))
	assert.True(t, ok)
	assert.Equal(t, 4096, l, "200 in 10 ms: the ceiling")
	l, ok = s.sample(240, at(1300*time.Millisecond))
	assert.True(t, ok, "idle a second: the window closes")
	assert.Equal(t, 100, l, "an idle broker: Mosquitto's own")
	_, ok = s.sample(0, at(1400*time.Millisecond))
	assert.False(t, ok, "counters went back (a test reset): a new first point")
	// An idle start leaves the listeners at Mosquitto's 100: nothing to give.
	s2 := backlogSizer{ceiling: 4096}
	s2.sample(0, t0)
	_, ok = s2.sample(3, at(2*time.Second))
	assert.False(t, ok)
	l, ok = s2.sample(110, at(2*time.Second+10*time.Millisecond))
	assert.True(t, ok, "a burst raises it within one window")
	assert.Equal(t, 4096, l)
}

func TestBacklogLine(t *testing.T) {
	sized := "the queue held to what the broker takes in 500ms at its measured rate of CONNECTs, from Mosquitto's own 100 up to "
	for _, c := range []struct {
		want, raised, kept, failed, max int
		line                            string
		level                           plugin.Level
	}{
		{0, 0, 0, 0, 4096, "", plugin.LevelNotice},
		{4096, 2, 0, 0, 4096, "mosquitto-guard: listen_backlog 4096 on 2 listening sockets: " + sized + "4096", plugin.LevelNotice},
		{4096, 1, 0, 0, 0, "mosquitto-guard: listen_backlog 4096 on 1 listening sockets: " + sized + "4096", plugin.LevelNotice},
		{200, 1, 1, 0, 4096, "mosquitto-guard: listen_backlog 200 on 1 listening sockets: " + sized + "200; 1 kept a larger backlog of their own", plugin.LevelNotice},
		{4096, 1, 0, 0, 128, "mosquitto-guard: listen_backlog 4096 on 1 listening sockets: " + sized + "4096; the kernel caps it at net.core.somaxconn 128: raise that sysctl, then reload (SIGHUP) or restart the broker, for the rest", plugin.LevelWarning},
		{4096, 0, 0, 0, 4096, "mosquitto-guard: listen_backlog 4096: the broker has no TCP listener to give it to", plugin.LevelWarning},
		{4096, 0, 2, 0, 4096, "mosquitto-guard: listen_backlog 4096 on 0 listening sockets: " + sized + "4096; 2 kept a larger backlog of their own", plugin.LevelNotice},
		{4096, 2, 0, 1, 4096, "mosquitto-guard: listen_backlog 4096: listen() failed on 1 of 2 listening sockets (bad file descriptor)", plugin.LevelWarning},
	} {
		line, level := backlogLine(c.want, c.raised, c.kept, c.failed, syscall.EBADF, c.max)
		assert.Equal(t, c.line, line)
		assert.Equal(t, c.level, level, c.line)
	}
}

// A listener's number reused since it was found (a socket closed at the
// broker's exit, the number taken by another socket) is not touched: an
// unconnected socket given listen() would start listening.
func TestBacklogSkipsAReusedNumber(t *testing.T) {
	backlogTestReset()
	defer backlogTestReset()
	configureBacklog(1024)
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	require.NoError(t, syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	require.NoError(t, syscall.Listen(fd, 100))
	backlogRaise()
	require.NoError(t, syscall.Close(fd))
	nfd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	defer syscall.Close(nfd)
	if nfd != fd {
		t.Skipf("the number %d was not reused (got %d)", fd, nfd)
	}
	backlogApply(1024)
	v, err := syscall.GetsockoptInt(nfd, syscall.SOL_SOCKET, syscall.SO_ACCEPTCONN)
	require.NoError(t, err)
	assert.Zero(t, v, "the new socket does not listen")
}
