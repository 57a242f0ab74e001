package main

// CPU time of other processes, as finely as Linux gives it, for the cost
// accounting of `loadgen connect` and `loadgen fleet`: what one CONNECT
// costs the broker's main thread (Mosquitto is single threaded: that thread
// is what limits a broker), the whole broker process (the plugin's
// goroutines too) and redis-server.
//
// Sources, best first:
//   - a whole process: its CPU-time clock (clock_gettime on
//     MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)), exact to the nanosecond,
//     threads that ended included; else /proc/PID/stat utime+stime, in
//     clock ticks (USER_HZ, 100 Hz: 10 ms).
//   - one thread (the main thread: tid == pid): the first field of
//     /proc/PID/task/TID/schedstat, nanoseconds, but only updated at the
//     scheduler's ticks and switches, so a reading taken while the thread
//     runs lacks up to one scheduler tick (1/CONFIG_HZ); else
//     /proc/PID/task/TID/stat utime+stime, in clock ticks. Linux lets no
//     process read another process's thread CPU clock.
// Each reading says its source, and a difference of two readings its
// error bound, which the report divides by the CONNACKs of the window.

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// cpuSource names where a CPU time was read.
type cpuSource string

const (
	srcClock     cpuSource = "clock"     // process CPU-time clock: exact
	srcSchedstat cpuSource = "schedstat" // ns, stale by at most one scheduler tick
	srcStat      cpuSource = "stat"      // clock ticks, truncated
)

// resolution is the most a reading from src may lack of the true CPU time.
func (s cpuSource) resolution() time.Duration {
	switch s {
	case srcClock:
		return 0
	case srcSchedstat:
		return schedTick()
	}
	return time.Second / clockTick
}

// cpuReading is the CPU time of one process and of its main thread so far.
type cpuReading struct {
	proc, main       time.Duration
	procSrc, mainSrc cpuSource
}

// readCPU reads the CPU time of process pid and of its main thread.
func readCPU(pid int) (cpuReading, error) {
	var r cpuReading
	var err error
	if d, ok := processClock(pid); ok {
		r.proc, r.procSrc = d, srcClock
	} else if r.proc, err = statCPU(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		r.procSrc = srcStat
	} else {
		return r, err
	}
	if d, err := schedstatCPU(fmt.Sprintf("/proc/%d/task/%d/schedstat", pid, pid)); err == nil {
		r.main, r.mainSrc = d, srcSchedstat
	} else if r.main, err = statCPU(fmt.Sprintf("/proc/%d/task/%d/stat", pid, pid)); err == nil {
		r.mainSrc = srcStat
	} else {
		return r, err
	}
	return r, nil
}

// processClock reads the CPU-time clock of process pid (all its threads,
// those that ended included). ok is false where Linux refuses it.
func processClock(pid int) (time.Duration, bool) {
	// MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED) of linux/posix-timers.h.
	clock := int32((^uint32(pid))<<3 | 2)
	var ts syscall.Timespec
	_, _, errno := syscall.Syscall(syscall.SYS_CLOCK_GETTIME, uintptr(clock), uintptr(unsafe.Pointer(&ts)), 0)
	if errno != 0 {
		return 0, false
	}
	return time.Duration(ts.Nano()), true
}

// schedstatCPU reads the run time, in ns, of a /proc/.../schedstat file.
func schedstatCPU(path string) (time.Duration, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) < 1 {
		return 0, fmt.Errorf("%s: empty", path)
	}
	ns, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return time.Duration(ns), nil
}

// statCPU reads utime+stime of a /proc/.../stat file.
func statCPU(path string) (time.Duration, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("%s: unexpected format", path)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("%s: too few fields", path)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("%s: bad times", path)
	}
	return time.Duration(ut+st) * time.Second / clockTick, nil
}

var (
	tickOnce sync.Once
	tick     time.Duration
)

// schedTick is the scheduler's tick, 1/CONFIG_HZ, from /proc/config.gz;
// 10 ms (HZ=100, the coarsest Linux offers) when the kernel does not say.
func schedTick() time.Duration {
	tickOnce.Do(func() {
		tick = 10 * time.Millisecond
		f, err := os.Open("/proc/config.gz")
		if err != nil {
			return
		}
		defer f.Close()
		z, err := gzip.NewReader(f)
		if err != nil {
			return
		}
		sc := bufio.NewScanner(z)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "CONFIG_HZ="); ok {
				if hz, err := strconv.Atoi(v); err == nil && hz > 0 {
					tick = time.Second / time.Duration(hz)
				}
				return
			}
		}
	})
	return tick
}

// cpuCost is what one process used over a measured window, per CONNACK.
type cpuCost struct {
	ThreadUS    float64   `json:"thread_us"`     // main thread, µs per CONNACK
	ProcessUS   float64   `json:"process_us"`    // whole process, µs per CONNACK
	ThreadErrUS float64   `json:"thread_err_us"` // ± bound of ThreadUS from the sources' resolution
	ProcErrUS   float64   `json:"process_err_us"`
	ThreadMS    float64   `json:"thread_ms"` // CPU time in the window
	ProcessMS   float64   `json:"process_ms"`
	ThreadSrc   cpuSource `json:"thread_src"`
	ProcSrc     cpuSource `json:"process_src"`
}

// costOf divides the CPU used between a and b by n CONNACKs.
func costOf(a, b cpuReading, n int) cpuCost {
	c := cpuCost{
		ThreadMS: ms(b.main - a.main), ProcessMS: ms(b.proc - a.proc),
		ThreadSrc: b.mainSrc, ProcSrc: b.procSrc,
	}
	if n > 0 {
		per := func(d time.Duration) float64 { return round3(float64(d) / float64(time.Microsecond) / float64(n)) }
		c.ThreadUS, c.ProcessUS = per(b.main-a.main), per(b.proc-a.proc)
		// Each end of the difference may lack up to one resolution.
		c.ThreadErrUS = per(a.mainSrc.resolution() + b.mainSrc.resolution())
		c.ProcErrUS = per(a.procSrc.resolution() + b.procSrc.resolution())
	}
	return c
}

// redisCounters are the counters of a redis-server's INFO stats that tell
// how much it was asked.
type redisCounters struct {
	Commands, Reads int64 // total_commands_processed, total_reads_processed
}

// readRedisCounters asks the redis-server at addr for INFO stats.
func readRedisCounters(addr string) (redisCounters, error) {
	r := &redisProc{addr: addr}
	s, err := r.cli("INFO", "stats")
	if err != nil {
		return redisCounters{}, err
	}
	var c redisCounters
	for _, l := range strings.Split(s, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(l), ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "total_commands_processed":
			c.Commands = n
		case "total_reads_processed":
			c.Reads = n
		}
	}
	return c, nil
}
