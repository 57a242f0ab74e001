package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logline"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// TestReadmeWalkthroughIsTrue runs the README's "Five minutes with it"
// against make run's own script: every console command in it, in order,
// with the output it shows (times and counts aside), and every broker log
// line it shows, which must match a line the broker wrote key for key.
// Before, the walk-through's --scan showed one key while alice's ban from
// the step before was still there.
func TestReadmeWalkthroughIsTrue(t *testing.T) {
	testenv.Need(t, "script", "mosquitto", "mosquitto_pub", "mosquitto_passwd", "redis-server", "redis-cli")
	section := readmeSection(t, "## Five minutes with it")
	steps := consoleSteps(section)
	require.GreaterOrEqual(t, len(steps), 6, "the walk-through's console commands")

	mqtt, redis := testenv.FreePort(t), testenv.FreePort(t)
	t.Setenv("GUARD_RUN_MQTT_PORT", strconv.Itoa(mqtt))
	t.Setenv("GUARD_RUN_REDIS_PORT", strconv.Itoa(redis))
	t.Setenv("GUARD_RUN_DIR", t.TempDir())
	run := testenv.StartProcess(t, repoRoot(), "bash", "scripts/run.sh", pluginPath)
	t.Cleanup(func() { _ = syscall.Kill(-run.PID(), syscall.SIGKILL) }) // its redis-server and mosquitto too
	require.True(t, run.WaitOutput("mosquitto-guard: ready", 10*time.Second), run.Output())
	require.NoError(t, run.WaitPort(fmt.Sprintf("127.0.0.1:%d", mqtt), 5*time.Second))

	// The README's commands name make run's default ports.
	ports := strings.NewReplacer("redis-cli -p 6390", fmt.Sprintf("redis-cli -p %d", redis),
		"mosquitto_pub -h 127.0.0.1", fmt.Sprintf("mosquitto_pub -h 127.0.0.1 -p %d", mqtt))
	for _, s := range steps {
		// On a terminal, as a reader runs them: redis-cli prints otherwise.
		out, _ := exec.Command("script", "-qec", ports.Replace(s.cmd), "/dev/null").CombinedOutput()
		out = []byte(strings.ReplaceAll(string(out), "\r\n", "\n"))
		assert.True(t, sameOutput(s.want, string(out)), "$ %s\nREADME shows:\n%s\nit printed:\n%s", s.cmd, strings.Join(s.want, "\n"), out)
		time.Sleep(200 * time.Millisecond) // an automatic ban is written off the broker thread
	}

	shown := readmeLogLines(t, section)
	require.GreaterOrEqual(t, len(shown), 3, "the walk-through's log lines")
	for _, want := range shown {
		assert.True(t, hasMatchingLine(t, want, run.Output()), "README's log line:\n%s\nno such line in the broker's log:\n%s", want, run.Output())
	}
	checkEventLines(t, run.Output())
}

type step struct {
	cmd  string
	want []string
}

// consoleSteps returns the "$ command" lines of section's console blocks,
// each with the lines shown after it.
func consoleSteps(section string) []step {
	var steps []step
	in := false
	for _, l := range strings.Split(section, "\n") {
		switch {
		case strings.HasPrefix(l, "```console"):
			in = true
		case strings.HasPrefix(l, "```"):
			in = false
		case in && strings.HasPrefix(l, "$ "):
			cmd := strings.TrimPrefix(l, "$ ")
			if i := strings.Index(cmd, "   #"); i >= 0 {
				cmd = strings.TrimSpace(cmd[:i]) // a comment for the reader
			}
			steps = append(steps, step{cmd: cmd})
		case in && len(steps) > 0:
			steps[len(steps)-1].want = append(steps[len(steps)-1].want, l)
		}
	}
	return steps
}

// volatile are what may differ between the README and a run: times, the
// random number that names a ban's write, and the seconds a ban has left (a
// TTL of 2 or more). A count of 0 or 1 (DEL's answer: was there a ban to
// lift) and TTL's -1 and -2 are compared exactly.
var volatile = []*regexp.Regexp{
	regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ`),
	regexp.MustCompile(`\(ban [0-9a-f]{16}\)`),
	regexp.MustCompile(`\(integer\) ([2-9]|[1-9]\d+)$`),
}

// repeats matches the README's "... (four times)": the lines shown before
// it are printed that many times in all.
var repeats = regexp.MustCompile(`^\.\.\. \((\w+) times\)$`)

var counts = map[string]int{"two": 2, "three": 3, "four": 4, "five": 5, "six": 6}

// sameOutput compares what the README shows with what a command printed,
// line for line, times and seconds left aside (volatile); a last shown line
// "... (N times)" stands for N copies in all of the lines before it.
func sameOutput(want []string, got string) bool {
	lines := strings.Split(strings.TrimRight(got, "\n"), "\n")
	if got == "" {
		lines = nil
	}
	if n := len(want); n > 0 {
		if m := repeats.FindStringSubmatch(want[n-1]); m != nil {
			times, err := strconv.Atoi(m[1])
			if err != nil {
				times = counts[m[1]]
			}
			if times < 2 {
				return false // a README line this test cannot read
			}
			var all []string
			for range times {
				all = append(all, want[:n-1]...)
			}
			want = all
		}
	}
	if len(lines) != len(want) {
		return false
	}
	for i, w := range want {
		if normalize(w) != normalize(lines[i]) {
			return false
		}
	}
	return true
}

func normalize(s string) string {
	for _, re := range volatile {
		s = re.ReplaceAllString(s, "<volatile>")
	}
	return s
}

// readmeLogLines returns the event lines section shows.
func readmeLogLines(t *testing.T, section string) []string {
	var lines []string
	for _, l := range strings.Split(section, "\n") {
		if strings.HasPrefix(l, logline.Prefix+"event=") {
			_, err := logline.Parse(l)
			require.NoError(t, err, "the README shows a line not in logline's shape: %s", l)
			lines = append(lines, l)
		}
	}
	return lines
}

// hasMatchingLine reports whether out has a line with want's keys in want's
// order and its values, where a shown value ending in "..." stands for any
// value it starts, and times and durations may differ.
func hasMatchingLine(t *testing.T, want, out string) bool {
	w, _ := logline.Parse(want)
	for _, l := range strings.Split(out, "\n") {
		if !strings.Contains(l, logline.Prefix+"event=") {
			continue
		}
		g, err := logline.Parse(l)
		if err != nil || strings.Join(g.Keys, " ") != strings.Join(w.Keys, " ") {
			continue
		}
		ok := true
		for _, k := range w.Keys {
			wv, gv := w.Get(k), g.Get(k)
			switch {
			case k == "expires_in":
			case strings.HasSuffix(wv, "..."):
				ok = ok && strings.HasPrefix(gv, strings.TrimSuffix(wv, "..."))
			default:
				ok = ok && normalize(wv) == normalize(gv)
			}
		}
		if ok {
			return true
		}
	}
	return false
}

func readmeSection(t *testing.T, heading string) string {
	b, err := os.ReadFile(filepath.Join(repoRoot(), "README.md"))
	require.NoError(t, err)
	s := string(b)
	i := strings.Index(s, "\n"+heading+"\n")
	require.GreaterOrEqual(t, i, 0, "README has no %q", heading)
	s = s[i+1+len(heading):]
	if j := strings.Index(s, "\n## "); j >= 0 {
		s = s[:j]
	}
	return s
}
