package main

// Processes for `loadgen chaos` and `loadgen soak`: a redis-server and a
// mosquitto loading the plugin, on free loopback ports, in their own
// directories, stopped by PID (and killed by the kernel should this process
// die first: Pdeathsig).

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

func startProc(name, logFile string, argv ...string) (*proc, error) {
	lf, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	// LOADGEN_SERVER_CPUS (e.g. "0"): pin the servers, as bench/run.sh does.
	if cpus := os.Getenv("LOADGEN_SERVER_CPUS"); cpus != "" {
		argv = append([]string{"taskset", "-c", cpus}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); lf.Close(); close(p.done) }()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func (p *proc) signal(s syscall.Signal) error { return p.cmd.Process.Signal(s) }

// stop: SIGTERM, then SIGKILL after 5 s (SIGCONT first, in case it is stopped).
func (p *proc) stop() {
	if !p.alive() {
		return
	}
	_ = p.signal(syscall.SIGCONT)
	_ = p.signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.signal(syscall.SIGKILL)
		<-p.done
	}
}

func (p *proc) kill() {
	if p.alive() {
		_ = p.signal(syscall.SIGKILL)
		<-p.done
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func waitPort(addr string, p *proc, d time.Duration) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if !p.alive() {
			return fmt.Errorf("%s exited", p.name)
		}
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s: %s not listening after %s", p.name, addr, d)
}

// waitFileLine waits up to d for a line of file matching re.
func waitFileLine(file string, re *regexp.Regexp, p *proc, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(file); err == nil && re.Match(b) {
			return true
		}
		if p != nil && !p.alive() {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// redisProc is a redis-server without persistence: a restart is empty.
type redisProc struct {
	*proc
	port int
	dir  string
	addr string
}

func startRedis(dir string, port int) (*redisProc, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	p, err := startProc("redis-server", filepath.Join(dir, "redis.out"), "redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir, "--logfile", filepath.Join(dir, "redis.log"), "--daemonize", "no")
	if err != nil {
		return nil, err
	}
	r := &redisProc{proc: p, port: port, dir: dir, addr: fmt.Sprintf("127.0.0.1:%d", port)}
	if err := waitPort(r.addr, p, 10*time.Second); err != nil {
		p.kill()
		return nil, err
	}
	return r, nil
}

// restart starts a new, empty redis-server on the same port.
func (r *redisProc) restart() error {
	r.kill()
	var last error
	for i := 0; i < 50; i++ { // the port may linger a moment
		n, err := startRedis(r.dir, r.port)
		if err == nil {
			r.proc = n.proc
			return nil
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	return last
}

// cli runs one command over RESP, with a 5 s bound.
func (r *redisProc) cli(args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", r.addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write([]byte(b.String())); err != nil {
		return "", err
	}
	return readRESP(bufio.NewReader(c))
}

func readRESP(rd *bufio.Reader) (string, error) {
	line, err := rd.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", errors.New("empty reply")
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return "", errors.New(line[1:])
	case '$':
		n, _ := strconv.Atoi(line[1:])
		if n < 0 {
			return "", nil
		}
		buf := make([]byte, n+2)
		if _, err := ioReadFull(rd, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	return line, nil
}

func ioReadFull(rd *bufio.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := rd.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// info returns one field of INFO <section>.
func (r *redisProc) info(section, field string) (int64, error) {
	s, err := r.cli("INFO", section)
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), field+":"); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("INFO %s: no %s", section, field)
}

// brokerProc is mosquitto with the plugin.
type brokerProc struct {
	*proc
	addr string
	log  string
}

// startBroker writes dir/mosquitto.conf (listener, the plugin, extra lines)
// and waits for "mosquitto-guard: ready".
func startBroker(dir, plugin string, extra []string) (*brokerProc, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	logf := filepath.Join(dir, "mosquitto.log")
	user := "root"
	if u := os.Getenv("USER"); u != "" {
		user = u
	}
	conf := []string{
		fmt.Sprintf("listener %d 127.0.0.1", port),
		"user " + user,
		"log_dest file " + logf,
		"allow_anonymous false",
		"auth_plugin " + plugin,
	}
	conf = append(conf, extra...)
	cf := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(cf, []byte(strings.Join(conf, "\n")+"\n"), 0o644); err != nil {
		return nil, err
	}
	p, err := startProc("mosquitto", filepath.Join(dir, "mosquitto.out"), "mosquitto", "-c", cf)
	if err != nil {
		return nil, err
	}
	b := &brokerProc{proc: p, addr: fmt.Sprintf("127.0.0.1:%d", port), log: logf}
	if err := waitPort(b.addr, p, 10*time.Second); err != nil {
		p.kill()
		return nil, fmt.Errorf("%v: %s", err, tailFile(logf, 5))
	}
	if !waitFileLine(logf, regexp.MustCompile(`mosquitto-guard: ready`), p, 10*time.Second) {
		p.kill()
		return nil, fmt.Errorf("mosquitto-guard did not report ready: %s", tailFile(logf, 5))
	}
	return b, nil
}

func (b *brokerProc) rssKB() int64 {
	st, err := procStatus(b.pid(), "VmRSS")
	if err != nil {
		return -1
	}
	return st["VmRSS"]
}

func tailFile(file string, n int) string {
	b, _ := os.ReadFile(file)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// writePasswd writes a one-user password file in mosquitto_passwd's $7$ format.
func writePasswd(file, user, pass string) error {
	line, err := passwdLine(user, pass, []byte("chaos-salt12"))
	if err != nil {
		return err
	}
	return os.WriteFile(file, []byte(line+"\n"), 0o644)
}
