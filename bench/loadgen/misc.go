package main

import (
	"flag"
	"fmt"
	"os"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// WaitLogResult is the JSON line of `loadgen waitlog`.
type WaitLogResult struct {
	Cmd    string   `json:"cmd"`
	Label  string   `json:"label"`
	Found  bool     `json:"found"`
	Waited float64  `json:"waited_s"`
	Since  float64  `json:"since_t0_s,omitempty"` // seconds from -t0 to finding the line
	Line   string   `json:"line,omitempty"`
	Groups []string `json:"groups,omitempty"`
	Exited bool     `json:"process_exited,omitempty"`
}

// cmdWaitLog waits for a line matching -regex in -file, for up to -timeout,
// giving up early if process -pid ends.
func cmdWaitLog(args []string) error {
	fs := flag.NewFlagSet("waitlog", flag.ContinueOnError)
	file := fs.String("file", "", "log file")
	expr := fs.String("regex", "", "regular expression a line must match")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait")
	pid := fs.Int("pid", 0, "stop waiting if this process ends")
	label := fs.String("label", "", "label, echoed")
	t0ns := fs.Int64("t0", 0, "a start time, Unix nanoseconds (date +%s%N): report the time since it too")
	if err := fs.Parse(args); err != nil {
		return err
	}
	re, err := regexp.Compile(*expr)
	if *file == "" || *expr == "" || err != nil {
		return fmt.Errorf("need -file and a valid -regex (%v)", err)
	}
	res := WaitLogResult{Cmd: "waitlog", Label: *label}
	t0 := time.Now()
	deadline := t0.Add(*timeout)
	for i := 0; i < 1_000_000; i++ {
		if b, err := os.ReadFile(*file); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if m := re.FindStringSubmatch(line); m != nil {
					res.Found, res.Line, res.Groups = true, line, m[1:]
					res.Waited = round3(time.Since(t0).Seconds())
					if *t0ns > 0 {
						res.Since = round3(time.Since(time.Unix(0, *t0ns)).Seconds())
					}
					return emit(res)
				}
			}
		}
		if *pid > 0 && syscall.Kill(*pid, 0) != nil {
			res.Exited = true
			break
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	res.Waited = round3(time.Since(t0).Seconds())
	return emit(res)
}

// ProcMemResult is the JSON line of `loadgen procmem`.
type ProcMemResult struct {
	Cmd   string `json:"cmd"`
	Label string `json:"label"`
	PID   int    `json:"pid"`
	RSSKB int64  `json:"vmrss_kb"`
	HWMKB int64  `json:"vmhwm_kb"`
}

func cmdProcMem(args []string) error {
	fs := flag.NewFlagSet("procmem", flag.ContinueOnError)
	pid := fs.Int("pid", 0, "process")
	label := fs.String("label", "", "label, echoed")
	if err := fs.Parse(args); err != nil {
		return err
	}
	st, err := procStatus(*pid, "VmRSS", "VmHWM")
	if err != nil {
		return err
	}
	return emit(ProcMemResult{Cmd: "procmem", Label: *label, PID: *pid, RSSKB: st["VmRSS"], HWMKB: st["VmHWM"]})
}
