package conflicts

import (
	"bufio"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// revChild runs body in a child process of this test binary (the test
// named name, with REV_CHILD set): a test that caps the address space must
// not take the other tests down with it. The child's failure is the test's.
func revChild(t *testing.T, name string, body func(t *testing.T)) {
	t.Helper()
	if os.Getenv("REV_CHILD") == name {
		body(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+name+"$", "-test.count=1", "-test.v", "-test.timeout=60s")
	cmd.Env = append(os.Environ(), "REV_CHILD="+name)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "child:\n%s", out)
	require.Contains(t, string(out), "--- PASS: "+name, "child:\n%s", out)
}

// vmSize is this process's address space in bytes (/proc/self/status).
func vmSize(t *testing.T) uint64 {
	f, err := os.Open("/proc/self/status")
	require.NoError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmSize:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			require.NoError(t, err)
			return kb << 10
		}
	}
	t.Fatal("no VmSize")
	return 0
}

// capAS caps the address space at what the process maps now plus slack
// (a larger new mapping fails with ENOMEM, as on a broker at its RLIMIT_AS
// or out of memory) and returns the function that lifts the cap.
func capAS(t *testing.T, slack uint64) func() {
	t.Helper()
	var old syscall.Rlimit
	require.NoError(t, syscall.Getrlimit(syscall.RLIMIT_AS, &old))
	runtime.GC()
	gc := debug.SetGCPercent(-1) // no heap growth while capped
	lim := syscall.Rlimit{Cur: vmSize(t) + slack, Max: old.Max}
	require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_AS, &lim))
	return func() {
		require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_AS, &old))
		debug.SetGCPercent(gc)
	}
}

// The sweep runs in Run outside handleSafely, and its shrink maps a new
// table: when that mapping fails (offheap panics), the panic leaves Run,
// the worker is gone for the broker's life (spawn's recover logs one line)
// and no client ID is tracked any more. The worker must log it and go on.
func TestRevSweepMmapFailureKeepsWorker(t *testing.T) {
	revChild(t, "TestRevSweepMmapFailureKeepsWorker", func(t *testing.T) {
		was := sweepEvery
		sweepEvery = 20 * time.Millisecond
		defer func() { sweepEvery = was }()
		logged := make(chan string, 16)
		tr := New(testOptions(), Deps{Store: newMemStore(), Log: func(_ Level, msg string) {
			select {
			case logged <- msg:
			default:
			}
		}})
		// 150 000 forgettable memos and 40 000 young ones: the sweep
		// leaves 40 000, under a quarter of the peak, and shrink maps
		// 2^17 slots of 40 bytes (5 MiB) for them.
		now := time.Now().UnixMilli()
		for i := range 190_000 {
			e := idMemo{}
			if i < 40_000 {
				e.seenAt = stampOf(now)
			}
			tr.putMemo(tr.idKey("dev-"+strconv.Itoa(i)), e)
		}
		require.Equal(t, 190_000, tr.ids.Len())
		stop, done := make(chan struct{}), make(chan any, 1)
		lift := capAS(t, 1<<20)
		go func() {
			defer func() { done <- recover() }()
			tr.Run(stop)
		}()
	wait:
		for {
			select {
			case p := <-done:
				lift()
				t.Fatalf("the worker returned (panic: %v): client IDs are no longer tracked", p)
			case msg := <-logged:
				if strings.Contains(msg, "mapping") {
					lift()
					t.Logf("logged: %s", msg)
					break wait
				}
			}
		}
		select {
		case p := <-done:
			t.Fatalf("the worker returned (panic: %v)", p)
		default:
		}
		close(stop)
		require.Nil(t, <-done)
	})
}
