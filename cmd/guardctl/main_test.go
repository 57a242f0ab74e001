package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

func TestRunDispatch(t *testing.T) {
	var out, errb bytes.Buffer
	assert.Equal(t, exitUsage, run(nil, &out, &errb), "no command")
	assert.Empty(t, out.String())
	assert.Contains(t, errb.String(), "Commands:\n  allow    allowlist an IP")
	assert.Contains(t, errb.String(), "\n  audit    list client-ID conflict findings")

	for _, h := range []string{"-h", "--help", "help"} {
		out.Reset()
		errb.Reset()
		assert.Equal(t, exitOK, run([]string{h}, &out, &errb), h)
		assert.Contains(t, out.String(), "Usage:\n  guardctl <command> [flags]", h)
		assert.Empty(t, errb.String())
	}

	out.Reset()
	errb.Reset()
	assert.Equal(t, exitUsage, run([]string{"bogus"}, &out, &errb))
	assert.Equal(t, "guardctl: unknown command \"bogus\"; run 'guardctl -h' for the list\n", errb.String())

	out.Reset()
	errb.Reset()
	assert.Equal(t, exitUsage, run([]string{"audit", "--since", "3x"}, &out, &errb))
	assert.Equal(t, "guardctl: audit: invalid value \"3x\" for flag -since: bad duration \"3x\": expected e.g. 31d, 12h or 1d12h\n"+
		"Run 'guardctl audit -h' for usage.\n", errb.String())
}

// goTool returns the go command to build guardctl with: the one on PATH,
// else $GOROOT's, else the Makefile's /usr/local/go. None is a failure, not
// a skip: the binary's test must run wherever make test does.
func goTool(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	for _, root := range []string{os.Getenv("GOROOT"), "/usr/local/go"} {
		if p := filepath.Join(root, "bin", "go"); root != "" {
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
	}
	t.Fatal("no go command to build guardctl with (PATH, $GOROOT/bin, /usr/local/go/bin)")
	return ""
}

// TestBinary builds guardctl and checks its exit statuses and --config.
func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "guardctl")
	build := exec.Command(goTool(t), "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	r := testenv.StartRedis(t)
	fixture(t, openStore(t, r.Addr, "conf:", ""))
	conf := testenv.WriteFile(t, dir, "mosquitto.conf", fmt.Sprintf(
		"listener 1883\nauth_plugin /usr/lib/mosquitto_guard.so\n# auth_opt_redis_addr 127.0.0.1:1\nauth_opt_redis_addr %s\nplugin_opt_key_prefix conf:\n", r.Addr))
	closed := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))

	for _, tc := range []struct {
		args     []string
		code     int
		stdout   string // a substring of stdout
		stderr   string // a prefix of stderr
		oneLine  bool   // stderr is one line
		emptyOut bool
	}{
		{args: nil, code: 2, stderr: "guardctl reads", emptyOut: true},
		{args: []string{"-h"}, code: 0, stdout: "Commands:"},
		{args: []string{"nope"}, code: 2, stderr: "guardctl: unknown command", emptyOut: true},
		{args: []string{"audit", "-h"}, code: 0, stdout: "--since-last"},
		{args: []string{"audit", "--nope"}, code: 2, stderr: "guardctl: audit: flag provided but not defined: -nope", emptyOut: true},
		{args: []string{"audit", "--since", "7x"}, code: 2, stderr: "guardctl: audit: invalid value", emptyOut: true},
		{args: []string{"audit", "--since", "1h", "--since-last"}, code: 2, stderr: "guardctl: audit: --since and --since-last exclude each other", emptyOut: true},
		{args: []string{"audit", "--redis-addr", closed}, code: 1, stderr: "guardctl: redis at " + closed + ": ", oneLine: true, emptyOut: true},
		{args: []string{"audit", "--config", filepath.Join(dir, "missing.conf")}, code: 1, stderr: "guardctl: config: open ", oneLine: true, emptyOut: true},
		{args: []string{"audit", "--config", conf}, code: 0, stdout: "4 findings for 3 client IDs since "},
		{args: []string{"audit", "--config", conf, "--key-prefix", "other:"}, code: 0, stdout: "no findings since "},
		{args: []string{"audit", "--config", conf, "--redis-addr", closed}, code: 1, stderr: "guardctl: redis at " + closed, oneLine: true},
		{args: []string{"ban", "--config", conf, "ip", "::ffff:192.0.2.1", "--for", "1h"}, code: 0, stdout: "banned conf:block:ip:192.0.2.1 until "},
		{args: []string{"list", "--config", conf}, code: 0, stdout: "1 ban\nSCOPE  VALUE      ORIGIN    EXPIRES "},
		{args: []string{"unban", "--config", conf, "ip", "192.0.2.1"}, code: 0, stdout: "unbanned conf:block:ip:192.0.2.1\n"},
		{args: []string{"ban", "--config", conf, "cidr", "192.0.2.1/24"}, code: 2, stderr: "guardctl: ban: bad range \"192.0.2.1/24\": expected the canonical network 192.0.2.0/24\n", emptyOut: true},
		{args: []string{"ban", "-h"}, code: 0, stdout: "--reason TEXT"},
		{args: []string{"list", "--redis-addr", closed}, code: 1, stderr: "guardctl: redis at " + closed + ": ", oneLine: true, emptyOut: true},
	} {
		cmd := exec.Command(bin, tc.args...)
		cmd.Env = append(os.Environ(), passwordEnv+"=")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		code := 0
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			code = exit.ExitCode()
		} else {
			require.NoError(t, err)
		}
		assert.Equal(t, tc.code, code, "%q: exit status\nstdout: %s\nstderr: %s", tc.args, &stdout, &stderr)
		assert.Contains(t, stdout.String(), tc.stdout, "%q: stdout", tc.args)
		assert.True(t, strings.HasPrefix(stderr.String(), tc.stderr), "%q: stderr %q", tc.args, &stderr)
		if tc.oneLine {
			assert.Equal(t, 1, strings.Count(stderr.String(), "\n"), "%q: one line on stderr: %q", tc.args, &stderr)
		}
		if tc.emptyOut {
			assert.Empty(t, stdout.String(), "%q: nothing on stdout", tc.args)
		}
	}
}

// Connection flags may come before the command, as the README's "every
// command takes --config" invites: guardctl --config FILE ban ... (a
// README-only attacker got "unknown command" and no ban).
func TestConnectionFlagsBeforeCommand(t *testing.T) {
	for _, tc := range []struct{ in, want []string }{
		{[]string{"--config", "m.conf", "ban", "ip", "1.2.3.4"}, []string{"ban", "ip", "1.2.3.4", "--config", "m.conf"}},
		{[]string{"-config=m.conf", "--redis-db", "2", "list"}, []string{"list", "-config=m.conf", "--redis-db", "2"}},
		{[]string{"ban", "ip", "1.2.3.4"}, []string{"ban", "ip", "1.2.3.4"}},
		{[]string{"--bogus", "ban"}, []string{"--bogus", "ban"}},
		{[]string{"--config", "m.conf"}, []string{"--config", "m.conf"}},
	} {
		assert.Equal(t, tc.want, commandFirst(tc.in), "%q", tc.in)
	}
	var out, errb bytes.Buffer
	code := run([]string{"--redis-addr", "nohost", "list"}, &out, &errb)
	assert.Equal(t, exitError, code, errb.String())
	assert.Contains(t, errb.String(), `option redis_addr: bad value "nohost"`, "the flag reached the command")
}
