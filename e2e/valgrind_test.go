package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestValgrindReloadWithKickPending runs issue 8's reload scenario (see
// reloadWithKickPending) with mosquitto under valgrind's memcheck, and fails
// on any invalid read, write or free whose stack is in Mosquitto's own code.
// Before the fix the kick run inside the re-authentication walk put the
// client on Mosquitto's free list twice. Slow: run by `make valgrind`, not by
// `make test` (it skips unless GUARD_VALGRIND=1).
func TestValgrindReloadWithKickPending(t *testing.T) {
	if os.Getenv("GUARD_VALGRIND") != "1" {
		t.Skip("GUARD_VALGRIND=1 runs it (make valgrind)")
	}
	vg, err := exec.LookPath("valgrind")
	require.NoError(t, err, "valgrind is needed")
	real, err := exec.LookPath("mosquitto")
	require.NoError(t, err)
	// testenv starts `mosquitto` from PATH: put a wrapper first that execs it
	// under valgrind (exec keeps the PID, so signals reach the broker).
	// Undefined-value tracking is off: it is not what this test looks for, and
	// it slows the broker's start (testenv waits 10 s for its port; about 6 s
	// on a loaded two-core machine).
	bin := t.TempDir()
	logs := os.Getenv("GUARD_VALGRIND_LOGS") // to keep them
	if logs == "" {
		logs = t.TempDir()
	}
	wrapper := fmt.Sprintf("#!/bin/sh\nexec %s --tool=memcheck --undef-value-errors=no --error-limit=no --num-callers=30 --log-file=%s/vg.%%p %s \"$@\"\n",
		vg, logs, real)
	require.NoError(t, os.WriteFile(filepath.Join(bin, "mosquitto"), []byte(wrapper), 0o755))
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))

	// Under valgrind the broker thread is ten to fifty times slower: give
	// Redis calls on it more time than the default 100 ms.
	e := perListenerEnv(t, "auth_opt_redis_timeout 2s", "persistent_client_expiration 1d")
	reloadWithKickPending(t, e, 15*time.Second)
	e.broker.Stop()

	files, err := filepath.Glob(filepath.Join(logs, "vg.*"))
	require.NoError(t, err)
	require.NotEmpty(t, files, "valgrind wrote no log")
	var report strings.Builder
	bad := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		for _, block := range memcheckErrors(string(b)) {
			bad++
			report.WriteString(block + "\n\n")
		}
		t.Logf("%s: %s", filepath.Base(f), lastLine(string(b), "ERROR SUMMARY"))
	}
	require.Zero(t, bad, "invalid accesses in Mosquitto's frames:\n%s", report.String())
}

// invalidKind starts a memcheck report of an invalid read, write or free.
var invalidKind = regexp.MustCompile(`^==\d+== (Invalid (read|write|free)|Mismatched free)`)

// reportEnd is the blank line that ends each memcheck report.
var reportEnd = regexp.MustCompile(`^==\d+== *$`)

// mosquittoFrame is a stack frame in the broker executable.
var mosquittoFrame = regexp.MustCompile(`\(in [^)]*/mosquitto\)`)

// memcheckErrors returns the invalid read, write or free reports of a
// valgrind log whose stack (where the access happened, before the "Address"
// line) has a frame in Mosquitto's executable.
func memcheckErrors(log string) []string {
	var out, cur []string
	for _, l := range append(strings.Split(log, "\n"), "==0== ") {
		if !reportEnd.MatchString(l) {
			cur = append(cur, l)
			continue
		}
		if len(cur) > 0 && invalidKind.MatchString(cur[0]) {
			where := cur
			for i, c := range cur {
				if strings.Contains(c, " Address 0x") {
					where = cur[:i]
					break
				}
			}
			if mosquittoFrame.MatchString(strings.Join(where, "\n")) {
				out = append(out, strings.Join(cur, "\n"))
			}
		}
		cur = nil
	}
	return out
}

func lastLine(s, with string) string {
	i := strings.LastIndex(s, with)
	if i < 0 {
		return "(no " + with + ")"
	}
	s = s[i:]
	if j := strings.IndexByte(s, '\n'); j >= 0 {
		s = s[:j]
	}
	return s
}
