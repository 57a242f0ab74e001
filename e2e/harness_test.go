package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logline"
	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// pluginPath is the .so under test: $GUARD_PLUGIN (make test sets it), or
// one built by TestMain.
var pluginPath string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		// make unit: every test here needs mosquitto, Redis and the built plugin.
		fmt.Println("e2e: skipped under -short; make test runs it")
		os.Exit(0)
	}
	pluginPath = os.Getenv("GUARD_PLUGIN")
	if pluginPath == "" {
		dir, err := os.MkdirTemp("", "guard-e2e-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		pluginPath = filepath.Join(dir, "mosquitto_guard.so")
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Dir(filepath.Dir(file))
		cmd := exec.Command("go", "build", "-buildmode=c-shared", "-o", pluginPath, "./cgo")
		cmd.Dir = root
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: building the plugin:", err)
			os.Exit(1)
		}
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// env is one redis-server and one mosquitto loading the plugin.
type env struct {
	t      *testing.T
	redis  *testenv.Redis
	broker *testenv.Mosquitto
	passwd string
	dir    string
}

// users written to every test's password file with the real mosquitto_passwd.
var users = map[string]string{"alice": "alice-pw", "bob": "bob-pw"}

// newEnv starts Redis and a broker whose config has the plugin lines plus extra.
func newEnv(t *testing.T, extra ...string) *env {
	t.Helper()
	testenv.Need(t, "mosquitto", "mosquitto_passwd", "redis-server", "redis-cli")
	e := &env{t: t, dir: t.TempDir()}
	e.redis = testenv.StartRedis(t)
	e.passwd = filepath.Join(e.dir, "passwd")
	for u, p := range users {
		e.addUser(u, p)
	}
	e.broker = testenv.StartMosquitto(t, e.conf(extra...))
	require.True(t, e.broker.WaitOutput("mosquitto-guard: ready", 5*time.Second), "plugin did not report ready")
	broker := e.broker
	t.Cleanup(func() { checkEventLines(t, broker.Output()) })
	return e
}

// envWithoutBroker is newEnv's Redis and password file (the users), for a
// test that starts the broker its own way.
func envWithoutBroker(t *testing.T) *env {
	t.Helper()
	testenv.Need(t, "mosquitto", "mosquitto_passwd", "redis-server", "redis-cli")
	e := &env{t: t, dir: t.TempDir()}
	e.redis = testenv.StartRedis(t)
	e.passwd = filepath.Join(e.dir, "passwd")
	for u, p := range users {
		e.addUser(u, p)
	}
	return e
}

// conf returns the broker config: the plugin with this env's Redis and
// password file, then extra lines (which may override options).
func (e *env) conf(extra ...string) string {
	lines := []string{
		"allow_anonymous false",
		"auth_plugin " + pluginPath,
		"auth_opt_redis_addr " + e.redisAddr(),
	}
	hasBackend := false
	for _, l := range extra {
		if strings.HasPrefix(l, "auth_opt_backend") {
			hasBackend = true
		}
	}
	if !hasBackend {
		lines = append(lines, "auth_opt_password_file "+e.passwd)
	}
	return strings.Join(append(lines, extra...), "\n") + "\n"
}

func (e *env) redisAddr() string {
	if e.redis == nil {
		return "127.0.0.1:1"
	}
	return e.redis.Addr
}

// addUser adds or updates a user with the real mosquitto_passwd.
func (e *env) addUser(user, pass string) {
	e.t.Helper()
	args := []string{"-b", e.passwd, user, pass}
	if _, err := os.Stat(e.passwd); err != nil {
		args = append([]string{"-c"}, args...)
	}
	out, err := exec.Command("mosquitto_passwd", args...).CombinedOutput()
	require.NoError(e.t, err, "mosquitto_passwd: %s", out)
}

// client describes one connection attempt.
type client struct {
	ip, id     string
	user, pass *string
}

func str(s string) *string { return &s }

// as returns a client from ip with client ID id, user and password.
func as(ip, id, user, pass string) client {
	return client{ip: ip, id: id, user: str(user), pass: str(pass)}
}

// dial connects c and returns the connection (nil when refused) and the
// CONNACK code.
func (e *env) dial(c client) (*mqttc.Conn, byte) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, code, err := mqttc.Dial(ctx, mqttc.Options{
		Addr: e.broker.Addr, SourceIP: c.ip, ClientID: c.id, Username: c.user, Password: c.pass,
	})
	require.NoError(e.t, err, "dial %s as %q", c.ip, c.id)
	if conn != nil {
		e.t.Cleanup(func() { conn.Close() })
	}
	return conn, code
}

// connect connects c and returns the CONNACK code, closing any connection.
func (e *env) connect(c client) byte {
	e.t.Helper()
	conn, code := e.dial(c)
	if conn != nil {
		conn.Disconnect()
	}
	return code
}

const (
	accepted = 0
	refused  = 5 // MQTT 3.1.1 "not authorised"
)

// eventually polls cond for up to d.
func eventually(t *testing.T, d time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	require.True(t, cond(), append([]any{msg}, args...)...)
}

// logLine waits for a broker log line containing every part and returns it.
func (e *env) logLine(parts ...string) string {
	e.t.Helper()
	var found string
	eventually(e.t, 5*time.Second, func() bool {
		found = findLine(e.broker.Output(), parts...)
		return found != ""
	}, "no log line with %q in:\n%s", parts, e.broker.Output())
	if strings.Contains(found, logline.Prefix+"event=") {
		_, err := logline.Parse(found)
		require.NoError(e.t, err, "an event line not in logline's shape: %s", found)
	}
	return found
}

// findLine returns the first line of out that contains every part, or "".
func findLine(out string, parts ...string) string {
	for _, l := range strings.Split(out, "\n") {
		ok := true
		for _, p := range parts {
			if !strings.Contains(l, p) {
				ok = false
				break
			}
		}
		if ok {
			return l
		}
	}
	return ""
}

// hasLine reports whether a line of out contains every part.
func hasLine(out string, parts ...string) bool { return findLine(out, parts...) != "" }

// checkEventLines fails t for any line of out written in the shapes before
// logline's, or starting like an event line and not parsing as one: every
// refusal, ban, throttle, kick and finding line a test provokes in a real
// broker is held to the shape.
func checkEventLines(t *testing.T, out string) {
	t.Helper()
	old := regexp.MustCompile(`mosquitto-guard: (refused|banned|throttling|kicking|finding|automatic ban of) |mosquitto-guard: \d+ more refusals from `)
	for _, l := range strings.Split(out, "\n") {
		if old.MatchString(l) {
			t.Errorf("a line in the shape before logline's: %s", l)
		}
		if strings.Contains(l, logline.Prefix+"event=") {
			if _, err := logline.Parse(l); err != nil {
				t.Errorf("an event line not in logline's shape (%v): %s", err, l)
			}
		}
	}
}

func startRedis(t *testing.T) *testenv.Redis { return testenv.StartRedis(t) }

func startBroker(t *testing.T, conf string) *testenv.Mosquitto {
	t.Helper()
	m := testenv.StartMosquitto(t, conf)
	require.True(t, m.WaitOutput("mosquitto-guard: ready", 5*time.Second), "plugin did not report ready")
	return m
}

func startExpectFail(t *testing.T, conf string) string {
	t.Helper()
	return testenv.StartMosquittoExpectFail(t, conf, 10*time.Second)
}

// expect connects c until the CONNACK code is want, for up to 2 s: a change
// made with redis-cli reaches the plugin's replica within a second.
func (e *env) expect(c client, want byte, msgAndArgs ...any) {
	e.t.Helper()
	var got byte
	deadline := time.Now().Add(2 * time.Second)
	for {
		if got = e.connect(c); got == want || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	require.Equal(e.t, want, got, msgAndArgs...)
}

// mqttString is an MQTT string: its length in two bytes, then its bytes.
func mqttString(s string) []byte {
	return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...)
}

// mqttPacket is an MQTT packet: its first byte, its remaining length
// (variable length, 7 bits a byte), then body.
func mqttPacket(first byte, body []byte) []byte {
	out, err := mqttc.AppendVarint([]byte{first}, len(body))
	if err != nil {
		panic(err) // a test's own packet, never 256 MiB
	}
	return append(out, body...)
}

// mqttConnect is an MQTT 3.1.1 CONNECT with username and password, keep
// alive 60 s, and flags (0x02: clean session; 0x80|0x40: username,
// password).
func mqttConnect(flags byte, id, user, pass string) []byte {
	body := append(mqttString("MQTT"), 4, flags, 0, 60)
	body = append(body, mqttString(id)...)
	body = append(body, mqttString(user)...)
	body = append(body, mqttString(pass)...)
	return mqttPacket(0x10, body)
}
