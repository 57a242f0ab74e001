package plugin

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// rootsChildAddr, set, makes TestCheckTLSSlowSystemRoots's child run the
// check against the Redis it names.
const rootsChildAddr = "GUARD_TEST_ROOTS_CHILD_ADDR"

// A system CA pool slow to load is no reason to take a certificate that
// it does not sign for an unreachable Redis: the broker stops, naming
// redis_tls_ca. CI saw a loaded machine start the broker so. The child
// process's roots come from a FIFO, which the parent fills only after
// 2.5 s, more than tlsCheckTimeout (1.5 s) leaves a handshake. Go loads the
// pool once per process, hence the child. Before the roots were loaded
// outside the bound, the child's check returned nil.
func TestCheckTLSSlowSystemRoots(t *testing.T) {
	if os.Getenv(rootsChildAddr) != "" {
		t.Skip("the child runs TestCheckTLSSlowSystemRootsChild")
	}
	ca := testenv.NewCA(t)
	r := testenv.StartRedisTLS(t, &testenv.RedisTLS{CA: ca, Names: []string{"redis.test"}})
	other, err := os.ReadFile(testenv.NewCA(t).CertPath)
	require.NoError(t, err)
	dir := t.TempDir()
	fifo := filepath.Join(dir, "roots.pem")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	require.NoError(t, os.Mkdir(filepath.Join(dir, "certs"), 0o700))

	cmd := exec.Command(os.Args[0], "-test.run", "^TestCheckTLSSlowSystemRootsChild$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), rootsChildAddr+"="+r.Addr,
		"SSL_CERT_FILE="+fifo, "SSL_CERT_DIR="+filepath.Join(dir, "certs"))
	out := make(chan []byte, 1)
	var runErr error
	go func() {
		b, err := cmd.CombinedOutput()
		runErr = err
		out <- b
	}()

	// Fill the FIFO 2.5 s on, once the child has opened it: an open for
	// writing without a reader fails (ENXIO) without blocking. A child that
	// ended first never read its roots within its check.
	time.Sleep(2500 * time.Millisecond)
	deadline := time.Now().Add(10 * time.Second)
	var b []byte
	for b == nil && time.Now().Before(deadline) {
		w, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0)
		if err == nil {
			_, err = w.Write(other) // 1 KB: within the pipe's buffer, never blocks
			require.NoError(t, err)
			require.NoError(t, w.Close())
			break
		}
		require.True(t, errors.Is(err, syscall.ENXIO), "%v", err)
		select {
		case b = <-out:
		case <-time.After(20 * time.Millisecond):
		}
	}
	if b == nil {
		select {
		case b = <-out:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			t.Fatal("the child did not end within 30 s")
		}
	}
	t.Logf("child:\n%s", b)
	require.NoError(t, runErr)
	assert.Contains(t, string(b), "--- PASS: TestCheckTLSSlowSystemRootsChild")
}

func TestCheckTLSSlowSystemRootsChild(t *testing.T) {
	addr := os.Getenv(rootsChildAddr)
	if addr == "" {
		t.Skip("run by TestCheckTLSSlowSystemRoots")
	}
	cfg, err := config.Parse(map[string]string{"backend": "redis", "redis_addr": addr,
		"redis_tls": "on", "redis_tls_server_name": "redis.test"})
	require.NoError(t, err)
	st := store.New(cfg.StoreOptions(), keys.Builder{Prefix: cfg.KeyPrefix})
	defer st.Close()
	start := time.Now()
	err = checkTLS(st, cfg)
	t.Logf("checkTLS took %s: %v", time.Since(start).Round(time.Millisecond), err)
	var oe *config.OptionError
	require.ErrorAs(t, err, &oe, "a certificate no system CA signs stops the broker")
	assert.Equal(t, "redis_tls_ca", oe.Option)
	assert.Contains(t, oe.Expected, "none given: the system's CAs do not")
	assert.Less(t, time.Since(start), systemRootsWait+2*time.Second, "bounded: the roots' wait, then the check's")
}

// A load that outlasts its wait is left to finish in the background: the
// broker thread's wait is bounded.
func TestLoadSystemRootsIsBounded(t *testing.T) {
	start := time.Now()
	loadSystemRoots(time.Nanosecond)
	assert.Less(t, time.Since(start), time.Second)
	assert.True(t, loadSystemRoots(10*time.Second), "the pool loads")
}
