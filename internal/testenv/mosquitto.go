package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// PortPlaceholder is replaced by the broker's port everywhere in a
// configuration given to StartMosquitto or StartMosquittoExpectFail.
const PortPlaceholder = "{{PORT}}"

// Mosquitto is a mosquitto broker started for one test.
type Mosquitto struct {
	*Process
	// Addr is the listener's address, "127.0.0.1:<Port>".
	Addr string
	// Port is the listener's TCP port.
	Port int
	// Dir is the broker's temporary directory (its working directory, and
	// where the configuration file is written).
	Dir string
	// ConfPath is the configuration file mosquitto was started with.
	ConfPath string
	t        testing.TB
}

// StartMosquitto writes conf (the caller's lines; a line `listener <port>
// 127.0.0.1` is added first unless conf already has a listener line with the
// placeholder {{PORT}}, which is replaced) plus `log_dest stdout`, `log_type
// all`, `log_timestamp_format %Y-%m-%dT%H:%M:%S` if missing, into a temp dir,
// starts `mosquitto -c <conf>` and waits (10 s) for the port to accept
// connections. It fails the test with mosquitto's output if the broker exits
// first.
//
// mosquitto runs under `stdbuf -oL` so that its log lines reach Output as
// they are written (see startMosquitto); without stdbuf it logs to stderr.
// Either way the PID is mosquitto's, and Stop, Kill, Signal and Reload reach
// it directly.
//
// The tests run as root, and mosquitto started as root drops its privileges to
// the user "mosquitto", which cannot read the test's temporary files; so
// `user root` is added too unless conf sets `user` itself.
//
// Should the free port be taken by someone else before mosquitto binds it,
// the broker is started again on another port (at most three tries).
func StartMosquitto(t testing.TB, conf string) *Mosquitto {
	t.Helper()
	Need(t, "mosquitto")
	dir := t.TempDir()
	var lastOut string
	for try := 0; try < 3; try++ {
		m := startMosquitto(t, dir, conf)
		err := m.WaitPort(m.Addr, 10*time.Second)
		if err == nil {
			return m
		}
		m.Stop()
		lastOut = m.Output()
		if !strings.Contains(lastOut, "Address already in use") {
			t.Fatalf("testenv: mosquitto did not start: %v", err)
		}
	}
	t.Fatalf("testenv: mosquitto could not bind a free port in three tries:\n%s", tail(lastOut, 30))
	return nil
}

// StartMosquittoExpectFail starts mosquitto with conf and waits up to d for it
// to exit; returns its output. Fails the test if it is still running after d
// (then kills it). conf is completed as by StartMosquitto.
func StartMosquittoExpectFail(t testing.TB, conf string, d time.Duration) string {
	t.Helper()
	Need(t, "mosquitto")
	m := startMosquitto(t, t.TempDir(), conf)
	if _, ok := m.Wait(d); !ok {
		m.Stop()
		t.Fatalf("testenv: mosquitto still running after %s, expected it to fail:\n%s", d, tail(m.Output(), 30))
	}
	return m.Output()
}

// Reload sends SIGHUP, which makes mosquitto reread its configuration file
// (see ConfPath) and reload its plugins' configuration. It does not wait for
// the reload to happen; wait for the log line "Reloading config." if needed.
func (m *Mosquitto) Reload() {
	m.t.Helper()
	if err := m.Signal(syscall.SIGHUP); err != nil {
		m.t.Fatalf("testenv: reload mosquitto: %v", err)
	}
}

// startMosquitto completes conf, on a fresh free port, writes it as
// mosquitto.conf in dir, and starts mosquitto with it.
//
// mosquitto 2.0.11 does not flush its log lines, and stdout to a pipe is
// block-buffered: lines would show up in Output only when the broker ends. So
// mosquitto runs under `stdbuf -oL` (which execs it: the PID is mosquitto's),
// or, without stdbuf, logs to the unbuffered stderr instead.
func startMosquitto(t testing.TB, dir, conf string) *Mosquitto {
	t.Helper()
	name, args, logDest := "mosquitto", []string(nil), "stderr"
	if _, err := exec.LookPath("stdbuf"); err == nil {
		name, args, logDest = "stdbuf", []string{"-oL", "mosquitto"}, "stdout"
	}
	port := FreePort(t)
	m := &Mosquitto{
		Port:     port,
		Addr:     fmt.Sprintf("127.0.0.1:%d", port),
		Dir:      dir,
		ConfPath: filepath.Join(dir, "mosquitto.conf"),
		t:        t,
	}
	has := func(pred func(key string, fields []string) bool) bool {
		for _, line := range strings.Split(conf, "\n") {
			fields := strings.Fields(line)
			if len(fields) > 0 && !strings.HasPrefix(fields[0], "#") && pred(fields[0], fields) {
				return true
			}
		}
		return false
	}
	key := func(k string) func(string, []string) bool {
		return func(key string, _ []string) bool { return key == k }
	}
	var b strings.Builder
	if !has(func(key string, fields []string) bool {
		return key == "listener" && strings.Contains(strings.Join(fields, " "), PortPlaceholder)
	}) {
		fmt.Fprintf(&b, "listener %d 127.0.0.1\n", port)
	}
	b.WriteString(strings.ReplaceAll(conf, PortPlaceholder, fmt.Sprint(port)))
	if !strings.HasSuffix(conf, "\n") && conf != "" {
		b.WriteString("\n")
	}
	if !has(func(key string, fields []string) bool {
		return key == "log_dest" && len(fields) > 1 && fields[1] == logDest
	}) {
		b.WriteString("log_dest " + logDest + "\n")
	}
	if !has(key("log_type")) {
		b.WriteString("log_type all\n")
	}
	if !has(key("log_timestamp_format")) {
		b.WriteString("log_timestamp_format %Y-%m-%dT%H:%M:%S\n")
	}
	// Running as root, mosquitto would switch to the user "mosquitto", who
	// cannot read files under the test's temporary directory.
	if !has(key("user")) {
		b.WriteString("user root\n")
	}
	if err := os.WriteFile(m.ConfPath, []byte(b.String()), 0o600); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	m.Process = start(t, dir, name, append(args, "-c", m.ConfPath)...)
	m.Process.Name = "mosquitto"
	return m
}
