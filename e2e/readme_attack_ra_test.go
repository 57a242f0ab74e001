package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// README, Options: "At start every bad value ... is logged, one line each,
// naming the option, the value and the expected form ..., and then the broker
// stops". redis_tls_ca refuses a path that is not a regular file ("not a
// regular file") or is larger than 4 MiB; password_file does not: a named
// pipe hangs the broker at start forever, with no line (and /dev/zero grows
// its memory by about 300 MB a second until the OOM killer).
func TestReadmeAttackPasswordFileFifoHangsStart(t *testing.T) {
	testenv.Need(t, "mosquitto")
	dir := t.TempDir()
	fifo := filepath.Join(dir, "passwd")
	require.NoError(t, syscall.Mkfifo(fifo, 0o644))
	out := testenv.StartMosquittoExpectFail(t, strings.Join([]string{
		"allow_anonymous false",
		"auth_plugin " + pluginPath,
		"auth_opt_redis_addr 127.0.0.1:1",
		"auth_opt_password_file " + fifo,
	}, "\n")+"\n", 5*time.Second)
	assert.Contains(t, out, "mosquitto-guard: option password_file: bad value")
}

// README, Options table: password_file is "re-read on SIGHUP"; Backends:
// "Re-read on SIGHUP; if the file has become unreadable, the users loaded
// before are kept and the error is logged." Replace the file with a named
// pipe and send SIGHUP: the reload blocks the broker thread in open/read, and
// no CONNECT is answered at all (every client of the broker, not only the
// plugin's) until something writes to the pipe.
func TestReadmeAttackPasswordFileFifoHangsReload(t *testing.T) {
	e := newEnv(t)
	require.Equal(t, byte(accepted), e.connect(as("127.0.0.1", "before", "alice", "alice-pw")))
	require.NoError(t, os.Remove(e.passwd))
	require.NoError(t, syscall.Mkfifo(e.passwd, 0o644))
	t.Cleanup(func() {
		// Unblock the reader (a writer that closes at once: EOF), so the
		// broker can stop.
		if f, err := os.OpenFile(e.passwd, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			f.Close()
		}
	})
	e.broker.Reload()
	require.True(t, e.broker.WaitOutput("Reloading config.", 2*time.Second))
	time.Sleep(300 * time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	conn, code, err := mqttc.Dial(ctx, mqttc.Options{Addr: e.broker.Addr, SourceIP: "127.0.0.1",
		ClientID: "after", Username: str("alice"), Password: str("alice-pw"), Timeout: 3 * time.Second})
	if conn != nil {
		conn.Close()
	}
	require.NoError(t, err, "no CONNACK within 3 s of a SIGHUP with password_file a named pipe (waited %v): the broker thread hangs in the reload", time.Since(start))
	assert.Equal(t, byte(accepted), code, "the users loaded before are kept")
}
