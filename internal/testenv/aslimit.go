package testenv

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
)

// InChild runs body in a child process of this test binary that runs this
// test alone (GUARD_TEST_CHILD names it): a test that caps the address
// space (CapAddressSpace) must not take the other tests down with it. The
// child's failure is the test's; it runs for at most 60 s.
func InChild(t *testing.T, body func(t *testing.T)) {
	t.Helper()
	name := t.Name()
	if os.Getenv("GUARD_TEST_CHILD") == name {
		body(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+name+"$", "-test.count=1", "-test.v", "-test.timeout=60s")
	cmd.Env = append(os.Environ(), "GUARD_TEST_CHILD="+name)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+name) {
		t.Fatalf("child (%v):\n%s", err, out)
	}
}

// CapAddressSpace caps the process's address space (RLIMIT_AS) at what it
// maps now plus slack, with the collector off, so that a new mapping larger
// than slack fails with ENOMEM, as on a broker at its RLIMIT_AS or out of
// memory. It returns the function that lifts the cap. Run it in a child
// (InChild).
func CapAddressSpace(t testing.TB, slack uint64) (lift func()) {
	t.Helper()
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_AS, &old); err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	gc := debug.SetGCPercent(-1) // no heap growth while capped
	lim := syscall.Rlimit{Cur: vmSize(t) + slack, Max: old.Max}
	if err := syscall.Setrlimit(syscall.RLIMIT_AS, &lim); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_AS, &old); err != nil {
			t.Fatal(err)
		}
		debug.SetGCPercent(gc)
	}
}

// vmSize is this process's address space in bytes (/proc/self/status).
func vmSize(t testing.TB) uint64 {
	t.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmSize:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("testenv: no VmSize in /proc/self/status")
	return 0
}
