package e2e

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestShortRunSkipsEverything: make unit (-short) neither builds the plugin
// nor starts mosquitto or Redis, even where they are installed: TestMain
// stops at once. The check re-runs this test binary with -test.short and
// without GUARD_PLUGIN, under which TestMain used to build the .so.
func TestShortRunSkipsEverything(t *testing.T) {
	if os.Getenv("GUARD_SHORT_CHILD") != "" {
		t.Skip("the child run") // only reached when TestMain did not stop it
	}
	cmd := exec.Command(os.Args[0], "-test.short", "-test.run", "^TestShortRunSkipsEverything$")
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GUARD_PLUGIN=") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, "GUARD_SHORT_CHILD=1")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "e2e: skipped under -short") {
		t.Fatalf("a -short run did not skip the end-to-end tests (err %v, %s):\n%s", err, time.Since(start), out)
	}
}
