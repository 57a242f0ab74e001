package testenv

import (
	"fmt"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// threadSched reads the calling thread's schedstat (ns on a CPU, ns
// runnable and waiting for one) with a raw system call: the broker thread
// emulated below must not leave its P to read it.
type threadSched struct{ fd int }

func (s threadSched) read() (cpu, delay time.Duration) {
	var buf [128]byte
	n, _, errno := syscall.RawSyscall6(syscall.SYS_PREAD64, uintptr(s.fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), 0, 0, 0)
	if errno != 0 {
		return 0, 0
	}
	f := strings.Fields(string(buf[:n]))
	if len(f) < 2 {
		return 0, 0
	}
	c, _ := strconv.ParseInt(f[0], 10, 64)
	d, _ := strconv.ParseInt(f[1], 10, 64)
	return time.Duration(c), time.Duration(d)
}

// BrokerThread emulates Mosquitto's thread calling into the plugin: a
// goroutine locked to its thread spends gap in a system call (the thread in
// Mosquitto's C code, its P in the system-call state, which Go's sysmon
// hands to waiting goroutines), then runs callback (what a CONNECT does in
// Go), until stop. A round's wait is the time the thread slept beyond gap:
// asleep, neither in the system call nor runnable, it waited in Go's
// scheduler for a P (or on a lock). The kernel's own delays (run delay:
// other processes on a shared machine) are left out: only Go's waits
// count. Linux only (/proc/thread-self/schedstat).
func BrokerThread(t testing.TB, gap time.Duration, stop *atomic.Bool, callback func()) <-chan Waits {
	out := make(chan Waits, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		fd, err := syscall.Open("/proc/thread-self/schedstat", syscall.O_RDONLY, 0)
		if err != nil {
			t.Error(err)
			out <- nil
			return
		}
		defer syscall.Close(fd)
		ts := threadSched{fd}
		req := syscall.Timespec{Nsec: gap.Nanoseconds()}
		var waits Waits
		for !stop.Load() {
			c0, d0 := ts.read()
			s := time.Now()
			_, _, _ = syscall.Syscall(syscall.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&req)), 0, 0)
			callback()
			wall := time.Since(s)
			c1, d1 := ts.read()
			waits = append(waits, max(0, wall-(c1-c0)-(d1-d0)-gap))
		}
		out <- waits
	}()
	return out
}

// Waits are a BrokerThread's waits, one a round.
type Waits []time.Duration

// Over counts the waits longer than d.
func (w Waits) Over(d time.Duration) int {
	n := 0
	for _, x := range w {
		if x > d {
			n++
		}
	}
	return n
}

// Max is the longest wait.
func (w Waits) Max() time.Duration {
	m := time.Duration(0)
	for _, x := range w {
		m = max(m, x)
	}
	return m
}

func (w Waits) String() string {
	if len(w) == 0 {
		return "no rounds"
	}
	s := append(Waits(nil), w...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	r := func(d time.Duration) time.Duration { return d.Round(time.Microsecond) }
	return fmt.Sprintf("%d rounds, p99 %v, max %v, %d over 5 ms", len(s), r(s[len(s)*99/100]), r(s[len(s)-1]), s.Over(5*time.Millisecond))
}
