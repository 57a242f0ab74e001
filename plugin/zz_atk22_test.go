package plugin

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
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

// A deferred connection (B) taken over by a connection admitted at once
// (C: a username the backend checks, B anonymous) while confirmDue confirms
// B: C's connect (other=B) is queued by admitAt before B's DISCONNECT, which
// the broker fires right after C's BASIC_AUTH (later for websockets).
// confirmDue running in between queued B's connect after C's: the worker
// wrote B live over C in this broker's live field, then B's end cleared
// it, and C, connected, was left with nothing live in Redis (every other
// broker then misses it: no conflict found, no deny).
func TestAtk22ConfirmAfterTakeoverLeavesTakerLive(t *testing.T) {
	cfg, err := config.Parse(map[string]string{"backend": "defer", "clientid_conflict": "flag"})
	require.NoError(t, err)
	lw := &liveWrites{live: map[string]string{}}
	g, err := NewWith(cfg, Output{Log: func(Level, string) {}}, Deps{Store: newFakeStore(), Counter: &fakeCounter{}, Conflicts: lw})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	var mu sync.Mutex
	now := time.Now().Add(time.Hour) // ahead of confirmLoop's clock: only the test confirms
	g.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }

	admitRC(g, rc(1, "dev-x", "alice"), true) // B, deferred
	mu.Lock()
	now = now.Add(2 * confirmDelay)
	mu.Unlock()
	c := admitRC(g, rc(2, "dev-x", "alice"), false) // C takes dev-x over, admitted at once
	g.mu.Lock()
	cID := g.tracker.StoreConn(g.connOf(c)).ID
	g.mu.Unlock()
	g.confirmDue()    // the confirmation goroutine, between C's BASIC_AUTH and B's DISCONNECT
	g.Disconnected(1) // B's DISCONNECT: the takeover

	require.Eventually(t, func() bool { lw.mu.Lock(); defer lw.mu.Unlock(); return lw.writes >= 1 },
		5*time.Second, 10*time.Millisecond, "the tracker wrote")
	time.Sleep(300 * time.Millisecond) // a linger more: any write still to come
	lw.mu.Lock()
	defer lw.mu.Unlock()
	assert.Equal(t, map[string]string{"dev-x": cID}, lw.live, "C, still connected, is what Redis holds live for dev-x")
}

// hungRootsChildAddr, set, makes TestAtk22HungSystemRoots's child run the
// check against the Redis it names; hungRootsChildCA gives it redis_tls_ca.
const (
	hungRootsChildAddr = "GUARD_TEST_ATK22_HUNG_ROOTS_ADDR"
	hungRootsChildCA   = "GUARD_TEST_ATK22_HUNG_ROOTS_CA"
)

// A system CA pool whose load never ends (SSL_CERT_FILE a FIFO nobody
// writes; a hung network file system) does not hang the broker's start:
// checkTLS waits systemRootsWait for it, then makes its check, bounded as
// before (tlsCheckTimeout, then plainProbeTimeout), although the
// handshake's verification waits for the same load (crypto/x509 loads the
// pool once): 1 + 1.5 + 0.5 s here, 10 + 2 s in a broker. The check then
// says nothing (nil: the broker starts, as for a Redis that does not
// answer), as tlscheck.go states for a load that outlasts its wait.
//
// With redis_tls_ca the system's pool is not loaded at all: the same
// child, its wait set to 30 s, passes the check within tlsCheckTimeout.
func TestAtk22HungSystemRoots(t *testing.T) {
	if os.Getenv(hungRootsChildAddr) != "" {
		t.Skip("the child runs TestAtk22HungSystemRootsChild")
	}
	ca := testenv.NewCA(t)
	r := testenv.StartRedisTLS(t, &testenv.RedisTLS{CA: ca, Names: []string{"redis.test"}})
	for _, caPath := range []string{"", ca.CertPath} {
		name := "system's CAs"
		if caPath != "" {
			name = "redis_tls_ca"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			fifo := filepath.Join(dir, "roots.pem")
			require.NoError(t, syscall.Mkfifo(fifo, 0o600)) // never written: an open for reading waits forever
			require.NoError(t, os.Mkdir(filepath.Join(dir, "certs"), 0o700))

			cmd := exec.Command(os.Args[0], "-test.run", "^TestAtk22HungSystemRootsChild$", "-test.v", "-test.count=1")
			cmd.Env = append(os.Environ(), hungRootsChildAddr+"="+r.Addr, hungRootsChildCA+"="+caPath,
				"SSL_CERT_FILE="+fifo, "SSL_CERT_DIR="+filepath.Join(dir, "certs"))
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			require.NoError(t, cmd.Start())
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				t.Logf("child:\n%s", out.String())
				require.NoError(t, err)
				assert.Contains(t, out.String(), "--- PASS: TestAtk22HungSystemRootsChild")
			case <-time.After(8 * time.Second): // the child's bound: 1 s + 1.5 s + 0.5 s
				_ = cmd.Process.Kill()
				<-done
				t.Fatalf("the child's start-time TLS check did not return within 8 s:\n%s", out.String())
			}
		})
	}
}

func TestAtk22HungSystemRootsChild(t *testing.T) {
	addr := os.Getenv(hungRootsChildAddr)
	if addr == "" {
		t.Skip("run by TestAtk22HungSystemRoots")
	}
	opts := map[string]string{"backend": "redis", "redis_addr": addr, "redis_tls": "on", "redis_tls_server_name": "redis.test"}
	bound := tlsCheckTimeout
	if ca := os.Getenv(hungRootsChildCA); ca != "" {
		opts["redis_tls_ca"] = ca
		systemRootsWait = 30 * time.Second // a load would show
	} else {
		systemRootsWait = time.Second
		bound += systemRootsWait
	}
	cfg, err := config.Parse(opts)
	require.NoError(t, err)
	st := store.New(cfg.StoreOptions(), keys.Builder{Prefix: cfg.KeyPrefix})
	defer st.Close()
	start := time.Now()
	err = checkTLS(st, cfg)
	t.Logf("checkTLS took %s: %v", time.Since(start).Round(time.Millisecond), err)
	assert.NoError(t, err, "no fault found (without redis_tls_ca: the handshake never verified)")
	assert.Less(t, time.Since(start), bound+time.Second, "bounded: the roots' wait if any, then the check's")
}

// stuckWrites is a conflicts store whose WriteConns waits until release
// is closed: the tracker's worker stuck on a Redis that does not answer,
// its queue filling.
type stuckWrites struct {
	failingClaims
	release chan struct{}
}

func (s *stuckWrites) WriteConns(_ context.Context, ws []store.ConnWrite, _ time.Duration) ([]store.State, error) {
	<-s.release // deaf to its context: the queue stays full
	return make([]store.State, len(ws)), nil
}

// confirmDue queues under g.mu: with the tracker's queue full (its worker
// stuck), each Connected drops its event and returns, so confirmDue ends
// and the broker thread's DISCONNECTs take g.mu meanwhile. 70 000 deferred
// connections against a queue of 65 536.
func TestAtk22ConfirmIntoFullQueueNeverWaits(t *testing.T) {
	cfg, err := config.Parse(map[string]string{"backend": "defer", "clientid_conflict": "flag"})
	require.NoError(t, err)
	sw := &stuckWrites{release: make(chan struct{})}
	g, err := NewWith(cfg, Output{Log: func(Level, string) {}}, Deps{Store: newFakeStore(), Counter: &fakeCounter{}, Conflicts: sw})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	t.Cleanup(func() { close(sw.release) }) // before Close
	var mu sync.Mutex
	now := time.Now().Add(time.Hour) // ahead of confirmLoop's clock: only the test confirms
	g.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	const n = 70000
	for i := range n {
		admitRC(g, rc(uintptr(i+1), fmt.Sprintf("dev-%d", i), "u"), true)
	}
	mu.Lock()
	now = now.Add(2 * confirmDelay)
	mu.Unlock()
	done := make(chan struct{})
	go func() { defer close(done); g.confirmDue() }()
	broker := make(chan struct{})
	go func() { // the broker thread meanwhile
		defer close(broker)
		for i := range 100 {
			g.Disconnected(uintptr(n - i))
			time.Sleep(time.Millisecond)
		}
	}()
	for _, c := range []chan struct{}{done, broker} {
		select {
		case <-c:
		case <-time.After(10 * time.Second):
			t.Fatal("confirmDue, or the DISCONNECTs meanwhile, did not end within 10 s: a wait on a full queue")
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	assert.Empty(t, g.pending, "all passed")
}
