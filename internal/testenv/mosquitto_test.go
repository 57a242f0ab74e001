package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestStartMosquitto(t *testing.T) {
	t.Parallel()
	// The ACL file is private to root, like every file of the test.
	acl := WriteFile(t, t.TempDir(), "acl", "topic readwrite #\n")
	m := StartMosquitto(t, "allow_anonymous true\nacl_file "+acl)

	conf, err := os.ReadFile(m.ConfPath)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\nacl_file %s\n", m.Port, acl)
	if !strings.HasPrefix(string(conf), want) {
		t.Errorf("conf does not start with %q:\n%s", want, conf)
	}
	for _, line := range []string{"log_type all\n", "log_timestamp_format %Y-%m-%dT%H:%M:%S\n", "user root\n"} {
		if !strings.Contains(string(conf), line) {
			t.Errorf("conf lacks %q:\n%s", line, conf)
		}
	}
	if m.Addr != fmt.Sprintf("127.0.0.1:%d", m.Port) || !strings.HasPrefix(m.ConfPath, m.Dir) {
		t.Errorf("Addr %s, Port %d, Dir %s, ConfPath %s", m.Addr, m.Port, m.Dir, m.ConfPath)
	}
	// The PID is mosquitto's own, so that signals reach it.
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", m.PID())); strings.TrimSpace(string(comm)) != "mosquitto" {
		t.Errorf("PID %d is %q, not mosquitto", m.PID(), comm)
	}

	// Log lines show up while the broker runs, with the timestamp format.
	pub(t, m, "hello")
	if !m.WaitOutput("Received PUBLISH from guard-pub", 5*time.Second) {
		t.Fatal("no log line for the PUBLISH")
	}
	if !regexp.MustCompile(`(?m)^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d: Received PUBLISH from guard-pub`).MatchString(m.Output()) {
		t.Error("log lines lack the timestamp format")
	}

	m.Reload()
	if !m.WaitOutput("Reloading config.", 5*time.Second) {
		t.Error("no reload after SIGHUP")
	}
	pub(t, m, "after reload")

	m.Stop()
	if !m.Exited() {
		t.Error("still running after Stop")
	}
}

func TestStartMosquittoPlaceholder(t *testing.T) {
	t.Parallel()
	m := StartMosquitto(t, "# comment\nlistener {{PORT}} 127.0.0.1\nallow_anonymous true\nlog_type error\nlog_type notice\nuser root\n")
	conf, err := os.ReadFile(m.ConfPath)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(string(conf), "listener ") != 1 || !strings.Contains(string(conf), fmt.Sprintf("listener %d 127.0.0.1\n", m.Port)) {
		t.Errorf("placeholder not replaced, or a listener added:\n%s", conf)
	}
	if strings.Contains(string(conf), "log_type all") || strings.Count(string(conf), "user ") != 1 {
		t.Errorf("conf overrides the caller's lines:\n%s", conf)
	}
	pub(t, m, "x")
}

func TestStartMosquittoExpectFail(t *testing.T) {
	t.Parallel()
	out := StartMosquittoExpectFail(t, "no_such_option 1\n", 10*time.Second)
	if !strings.Contains(out, "no_such_option") {
		t.Errorf("output lacks the error:\n%s", out)
	}
	// As user mosquitto the broker cannot read the test's files: this is why
	// StartMosquitto adds `user root`.
	acl := WriteFile(t, t.TempDir(), "acl", "topic readwrite #\n")
	out = StartMosquittoExpectFail(t, "user mosquitto\nacl_file "+acl+"\n", 10*time.Second)
	if !strings.Contains(out, "Unable to open acl_file") {
		t.Errorf("output lacks the acl_file error:\n%s", out)
	}
}

// pub publishes one message with mosquitto_pub.
func pub(t *testing.T, m *Mosquitto, msg string) {
	t.Helper()
	Need(t, "mosquitto_pub")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "mosquitto_pub", "-h", "127.0.0.1", "-p", fmt.Sprint(m.Port),
		"-i", "guard-pub", "-t", "t", "-m", msg).CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_pub: %v: %s", err, out)
	}
}
