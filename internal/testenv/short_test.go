package testenv

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestNeedSkipsUnderShort: make unit (-short) starts no process, even on a
// machine that has every program: Need skips. The check re-runs this test
// binary with -test.short on TestNeedHelper, which fails if Need lets it on.
func TestNeedSkipsUnderShort(t *testing.T) {
	if os.Getenv("GUARD_NEED_HELPER") != "" {
		t.Skip("the helper run")
	}
	if testing.Short() {
		t.Skip("starts a process (this test binary): make test runs it")
	}
	cmd := exec.Command(os.Args[0], "-test.short", "-test.v", "-test.run", "^TestNeedHelper$")
	cmd.Env = append(os.Environ(), "GUARD_NEED_HELPER=1", "CI=")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- SKIP: TestNeedHelper") {
		t.Fatalf("under -short, Need(sh) did not skip (err %v):\n%s", err, out)
	}
}

func TestNeedHelper(t *testing.T) {
	if os.Getenv("GUARD_NEED_HELPER") == "" {
		t.Skip("run by TestNeedSkipsUnderShort")
	}
	Need(t, "sh") // installed everywhere: only -short makes this skip
	t.Fatal("Need let a -short run start a process")
}
