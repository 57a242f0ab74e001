package testenv

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Need skips the test when one of the programs is missing and the run is not
// CI; under CI (CI=true) a missing program fails the test, since .ci/run
// installs them.
//
// Under -short (make unit) it always skips: the unit run is the fast one that
// needs nothing but Go, and starts no process.
func Need(t testing.TB, programs ...string) {
	t.Helper()
	if testing.Short() {
		t.Skipf("testenv: -short: needs %v; make test runs it", programs)
	}
	for _, p := range programs {
		if _, err := exec.LookPath(p); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("testenv: %s is not installed (.ci/run should install it)", p)
			}
			t.Skipf("testenv: %s is not installed; run make test to install it", p)
		}
	}
}

// Process is a started program whose output is kept.
type Process struct {
	Name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

// start runs name with args, its output collected, and arranges for it to be
// stopped when the test ends.
func start(t testing.TB, dir, name string, args ...string) *Process {
	t.Helper()
	p := &Process{Name: name, out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(name, args...)
	p.cmd.Dir = dir
	p.cmd.Stdout = p.out
	p.cmd.Stderr = p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("testenv: start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("%s output:\n%s", name, tail(p.Output(), 60))
		}
	})
	return p
}

// StartProcess starts name with args in dir, as the helpers here start
// redis-server and mosquitto: output kept, stopped by its PID when the test
// ends, killed with the test binary. For a command line they do not make
// (mosquitto with several -c files).
func StartProcess(t testing.TB, dir, name string, args ...string) *Process {
	t.Helper()
	return start(t, dir, name, args...)
}

// PID returns the process ID.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Output returns everything the program printed so far.
func (p *Process) Output() string { return p.out.String() }

// Exited reports whether the program has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait waits up to d for the program to end and returns its exit error.
func (p *Process) Wait(d time.Duration) (error, bool) {
	select {
	case <-p.done:
		return p.err, true
	case <-time.After(d):
		return nil, false
	}
}

// Signal sends sig to the program.
func (p *Process) Signal(sig syscall.Signal) error {
	return syscall.Kill(p.PID(), sig)
}

// Stop ends the program: SIGTERM, then SIGKILL after five seconds.
func (p *Process) Stop() {
	if p.Exited() {
		return
	}
	_ = p.Signal(syscall.SIGTERM)
	if _, ok := p.Wait(5 * time.Second); !ok {
		_ = p.Signal(syscall.SIGKILL)
		p.Wait(5 * time.Second)
	}
}

// Kill ends the program with SIGKILL, as a crash would.
func (p *Process) Kill() {
	_ = p.Signal(syscall.SIGKILL)
	p.Wait(5 * time.Second)
}

// WaitOutput waits up to d for the output to contain s.
func (p *Process) WaitOutput(s string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if strings.Contains(p.Output(), s) {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return strings.Contains(p.Output(), s)
}

// WaitPort waits up to d for addr to accept TCP connections on a socket of
// this program's own, failing early if the program ends. A free port can
// be taken by another test's server between FreePort and the program's
// bind: the program then exits ("Address already in use"), and a dial
// alone would have been answered by the other server (a CI run's replica
// test talked to another test's ACL-restricted Redis so).
func (p *Process) WaitPort(addr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	_, portText, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portText)
	for time.Now().Before(deadline) {
		if p.Exited() {
			return fmt.Errorf("testenv: %s exited: %v\n%s", p.Name, p.err, tail(p.Output(), 30))
		}
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
			// The program's own, or a child's (a shell that runs mosquitto):
			// start puts each program in a process group of its own.
			if owns, known := groupListens(p.PID(), port); owns || !known {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("testenv: %s did not listen on %s within %s\n%s", p.Name, addr, d, tail(p.Output(), 30))
}

// groupListens is listens for every process of process group pgid.
func groupListens(pgid, port int) (owns, known bool) {
	owns, known = listens(pgid, port)
	if owns || !known {
		return owns, known
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return false, true
	}
	for _, e := range procs {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == pgid {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...: comm may hold spaces, so after its ')'.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) > 2 && f[2] == strconv.Itoa(pgid) {
			if o, _ := listens(pid, port); o {
				return true, true
			}
		}
	}
	return false, true
}

// listens reports whether process pid holds a TCP socket listening on
// port, from /proc/net/tcp{,6} and /proc/PID/fd; known is false when those
// cannot be read.
func listens(pid, port int) (owns, known bool) {
	inodes := map[string]bool{}
	read := false
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		read = true
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) < 10 || fs[3] != "0A" { // 0A: LISTEN
				continue
			}
			i := strings.LastIndexByte(fs[1], ':')
			if n, err := strconv.ParseUint(fs[1][i+1:], 16, 16); err == nil && int(n) == port {
				inodes["socket:["+fs[9]+"]"] = true
			}
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if !read || err != nil {
		return false, false
	}
	for _, fd := range fds {
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && inodes[l] {
			return true, true
		}
	}
	return false, true
}

// Redis is a redis-server started for one test.
type Redis struct {
	*Process
	Addr string
	Port int
	Dir  string
	args []string
	cli  []string // redis-cli's arguments before the command's (TLS)
	t    testing.TB

	mu   sync.Mutex
	hold *os.File // a socket bound to Port while the server is down (Stop, Kill)
}

// newRedis makes the Redis for a server about to start on port. Its port,
// once stopped or killed, is held until the test's end (after its other
// cleanups, sentinels included, which were registered later).
func newRedis(t testing.TB, port int, dir string, args, cli []string) *Redis {
	r := &Redis{Port: port, Addr: fmt.Sprintf("127.0.0.1:%d", port), Dir: dir, args: args, cli: cli, t: t}
	t.Cleanup(r.releasePort)
	return r
}

// Stop ends the redis-server (SIGTERM, as Process.Stop) and holds its port
// until Restart or the test's end.
func (r *Redis) Stop() {
	r.Process.Stop()
	r.holdPort()
}

// Kill ends the redis-server with SIGKILL, as a crash would, and holds its
// port until Restart or the test's end.
//
// Why hold it: a test that kills a Sentinel master goes on running with
// its sentinels, which take any redis-server that appears on the dead
// master's address for their old master come back, and make it their
// replica within about 10 s: its keys are replaced by theirs. A test of
// another package, run at the same time (go test ./...), that was handed
// that port by FreePort lost its keys so (TestSyncFollowsSentinelFailover,
// 3 fresh-clone CI runs of 9). A socket bound to the port, not listening,
// keeps FreePort's bind to port 0 off it (the kernel picks a port nobody
// has bound), and connections to it are refused, as to a dead server.
func (r *Redis) Kill() {
	r.Process.Kill()
	r.holdPort()
}

// holdPort binds a socket to the server's port, without listening. Without
// SO_REUSEADDR first, so that no bind at all can take the port; with it
// when the dead server's connections in TIME_WAIT refuse the first (binds
// to port 0 still skip a port bound so).
func (r *Redis) holdPort() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.hold != nil {
		return
	}
	sa := &syscall.SockaddrInet4{Port: r.Port, Addr: [4]byte{127, 0, 0, 1}}
	var err error
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for _, reuse := range []bool{false, true} {
			fd, e := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
			if e != nil {
				r.t.Logf("testenv: cannot hold port %d: %v", r.Port, e)
				return
			}
			if reuse {
				_ = syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
			}
			if err = syscall.Bind(fd, sa); err == nil {
				r.hold = os.NewFile(uintptr(fd), fmt.Sprintf("port %d held", r.Port))
				return
			}
			_ = syscall.Close(fd)
		}
	}
	r.t.Logf("testenv: cannot hold port %d of the stopped redis-server: %v", r.Port, err)
}

// releasePort lets the port go (Restart, the test's end).
func (r *Redis) releasePort() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.hold != nil {
		_ = r.hold.Close()
		r.hold = nil
	}
}

// StartRedis starts a redis-server with no persistence on a free port. Extra
// arguments are passed on the command line ("--notify-keyspace-events", "KA").
func StartRedis(t testing.TB, extra ...string) *Redis {
	t.Helper()
	Need(t, "redis-server")
	dir := t.TempDir()
	// Another test may take the free port before redis-server binds it:
	// then it starts again on another (at most three tries), as
	// StartMosquitto does.
	for try := 0; ; try++ {
		port := FreePort(t)
		args := append([]string{"--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir}, extra...)
		r := newRedis(t, port, dir, args, nil)
		r.Process = start(t, dir, "redis-server", args...)
		err := r.WaitPort(r.Addr, 10*time.Second)
		if err == nil {
			return r
		}
		r.Process.Stop()
		if try == 2 || !strings.Contains(r.Output(), "Address already in use") {
			t.Fatal(err)
		}
	}
}

// Restart starts the same redis-server again, on the same port, after Stop or Kill.
func (r *Redis) Restart() {
	r.t.Helper()
	r.Process.Stop()
	r.releasePort()
	r.Process = start(r.t, r.Dir, "redis-server", r.args...)
	if err := r.WaitPort(r.Addr, 10*time.Second); err != nil {
		r.t.Fatal(err)
	}
}

// CLI runs redis-cli against this server and returns its trimmed output;
// an error fails the test.
func (r *Redis) CLI(args ...string) string {
	r.t.Helper()
	out, err := r.TryCLI(args...)
	if err != nil {
		r.t.Fatalf("testenv: %v", err)
	}
	return out
}

// TryCLI is CLI returning its error, for a server that may close the
// connection meanwhile (a master Sentinel is turning into a replica drops
// its clients).
func (r *Redis) TryCLI(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	full := append(append([]string{"-h", "127.0.0.1", "-p", fmt.Sprint(r.Port)}, r.cli...), args...)
	out, err := exec.CommandContext(ctx, "redis-cli", full...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("redis-cli %v: %v: %s", args, err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// WaitReplicas waits up to d until n replicas of r have every write made
// on r so far, and says whether they do. WAIT counts the replicas that
// acknowledged the calling connection's own last write: from CLI's new
// redis-cli, which wrote nothing, it returns at once, whatever the replicas
// have. So this writes first (PUBLISH: replicated, no key) and waits on the
// same connection.
func (r *Redis) WaitReplicas(n int, d time.Duration) bool {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d+10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "redis-cli", append([]string{"-h", "127.0.0.1", "-p", fmt.Sprint(r.Port)}, r.cli...)...)
	cmd.Stdin = strings.NewReader(fmt.Sprintf("PUBLISH testenv:wait x\nWAIT %d %d\n", n, d.Milliseconds()))
	out, err := cmd.CombinedOutput()
	if err != nil {
		r.t.Fatalf("testenv: redis-cli WAIT: %v: %s", err, out)
	}
	f := strings.Fields(string(out))
	if len(f) == 0 {
		return false
	}
	got, err := strconv.Atoi(f[len(f)-1])
	return err == nil && got >= n
}

// WriteFile writes content to name inside dir and returns the path.
func WriteFile(t testing.TB, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return path
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
