package metrics

import (
	"bytes"
	"os"
	"runtime"
	rtm "runtime/metrics"
	"strconv"
	"syscall"
)

// goMetrics are the go_* series: the plugin's Go runtime, read from
// runtime/metrics at each scrape (no stop-the-world, unlike
// runtime.ReadMemStats). Each name is one client_golang's default Go
// collector wrote for the same value (TestAttackGoSeriesNamesAreClientGolangs;
// go_threads is the threads the runtime has now, client_golang's those it
// ever created: the same unless a goroutine that locked its thread exits,
// which the plugin's do not), so dashboards keep working; that collector's
// other series are not written (README, Metrics, lists them).
var goMetrics = []struct {
	name, typ, help, runtime string
}{
	{"go_goroutines", "gauge", "Number of goroutines that currently exist.", "/sched/goroutines:goroutines"},
	{"go_threads", "gauge", "Number of OS threads the Go runtime has created and holds (the broker's own thread among them, while it is in Go).", "/sched/threads/total:threads"},
	{"go_sched_gomaxprocs_threads", "gauge", "The current runtime.GOMAXPROCS setting: OS threads that can run Go code at once.", "/sched/gomaxprocs:threads"},
	{"go_gc_gogc_percent", "gauge", "Heap size target percentage (GOGC); -1 when disabled.", "/gc/gogc:percent"},
	{"go_gc_gomemlimit_bytes", "gauge", "Go runtime memory limit (GOMEMLIMIT).", "/gc/gomemlimit:bytes"},
	{"go_memstats_next_gc_bytes", "gauge", "Heap size target for the end of the current GC cycle.", "/gc/heap/goal:bytes"},
	{"go_memstats_heap_alloc_bytes", "gauge", "Bytes of heap objects allocated and not yet freed (live and not yet swept).", "/memory/classes/heap/objects:bytes"},
	{"go_memstats_heap_released_bytes", "gauge", "Bytes of heap memory returned to the OS.", "/memory/classes/heap/released:bytes"},
	{"go_memstats_sys_bytes", "gauge", "Bytes of memory the Go runtime has mapped from the OS (heap, stacks, its own structures).", "/memory/classes/total:bytes"},
}

// Runtime adds the go_* series and the broker process's process_* series
// (CPU, resident and virtual memory, file descriptors, start time, from
// /proc/self: the broker's whole process, not the plugin alone) and
// go_info.
func (r *Registry) Runtime() {
	// The families are written in order, under the registry's lock: the
	// first of each group reads for the others.
	samples := make([]rtm.Sample, len(goMetrics))
	for i, m := range goMetrics {
		samples[i].Name = m.runtime
	}
	value := func(i int) (float64, bool) {
		switch v := samples[i].Value; v.Kind() {
		case rtm.KindUint64:
			return float64(v.Uint64()), true
		case rtm.KindFloat64:
			return v.Float64(), true
		}
		return 0, false // a name this Go does not have (KindBad): no sample rather than a false 0
	}
	r.Add("go_info", "gauge", "Information about the Go environment.", func(e *Emitter) {
		e.Sample("", 1, "version", runtime.Version())
	})
	for i, m := range goMetrics {
		r.Add(m.name, m.typ, m.help, func(e *Emitter) {
			if i == 0 {
				rtm.Read(samples)
			}
			if v, ok := value(i); ok {
				e.Sample("", v)
			}
		})
	}
	var ps procStat
	r.Add("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds (the broker process).", func(e *Emitter) {
		ps = readProcStat()
		e.Sample("", ps.cpuSeconds)
	})
	r.Add("process_resident_memory_bytes", "gauge", "Resident memory size in bytes (the broker process).", func(e *Emitter) {
		e.Sample("", ps.rss)
	})
	r.Add("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes (the broker process).", func(e *Emitter) {
		e.Sample("", ps.vsize)
	})
	r.Add("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", func(e *Emitter) {
		e.Sample("", ps.start)
	})
	r.Add("process_open_fds", "gauge", "Number of open file descriptors.", func(e *Emitter) {
		e.Sample("", openFDs())
	})
	r.Add("process_max_fds", "gauge", "Maximum number of open file descriptors (the soft limit).", func(e *Emitter) {
		var l syscall.Rlimit
		if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) != nil {
			e.Sample("", 0)
			return
		}
		e.Sample("", float64(l.Cur))
	})
}

// userHZ is the unit of /proc's CPU times and start time: USER_HZ, 100 on
// every Linux architecture Go supports (as Prometheus's procfs assumes).
const userHZ = 100

type procStat struct {
	cpuSeconds, rss, vsize, start float64
}

// readProcStat reads /proc/self/stat (and /proc/stat's btime for the start
// time); zeros for what it cannot read.
func readProcStat() procStat {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return procStat{}
	}
	return parseProcStat(b, float64(os.Getpagesize()), bootTime())
}

// parseProcStat reads a /proc/<pid>/stat line; btime is the boot time
// (seconds since the epoch, 0 unknown).
func parseProcStat(b []byte, pageSize, btime float64) procStat {
	var ps procStat
	// The command name, in parentheses, may hold spaces and parentheses:
	// the fields follow its last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return ps
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state): utime 14, stime 15, starttime 22, vsize 23, rss 24.
	field := func(n int) float64 {
		if n-3 >= len(f) {
			return 0
		}
		v, _ := strconv.ParseUint(string(f[n-3]), 10, 64)
		return float64(v)
	}
	ps.cpuSeconds = (field(14) + field(15)) / userHZ
	ps.vsize = field(23)
	ps.rss = field(24) * pageSize
	if btime > 0 {
		ps.start = btime + field(22)/userHZ
	}
	return ps
}

// bootTime is /proc/stat's btime, seconds since the epoch; 0 if unread.
func bootTime() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	for _, line := range bytes.Split(b, []byte{'\n'}) {
		if v, ok := bytes.CutPrefix(line, []byte("btime ")); ok {
			n, _ := strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 64)
			return float64(n)
		}
	}
	return 0
}

// openFDs counts /proc/self/fd's entries (the directory's own descriptor,
// open while it is read, excluded).
func openFDs() float64 {
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return 0
	}
	defer d.Close()
	n := 0
	for {
		names, err := d.Readdirnames(512)
		n += len(names)
		if err != nil {
			break
		}
	}
	return float64(n - 1)
}
