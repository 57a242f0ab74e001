package main

// loadgen callgrind: instructions per CONNECT of the broker's threads, from
// valgrind --tool=callgrind --separate-threads=yes dumps (bench/profile.sh):
// counts that do not move with what else the machine runs, grouped by where
// they go (the password hash, the Go runtime's cgo transitions, allocation
// and collection, scheduling, the guard's own code, Mosquitto, libc).

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// cgCategories classify a function by its name (Go and C symbols) and the
// object it is in; the first match wins.
var cgCategories = []struct {
	name string
	obj  string // substring of the object's path; "" any
	fn   *regexp.Regexp
}{
	{"password hash: Go crypto (sha512, sha256, pbkdf2, hmac)", "", regexp.MustCompile(`^crypto/`)},
	{"password hash: OpenSSL libcrypto", "libcrypto", regexp.MustCompile(``)},
	{"Go runtime: cgo transitions", "", regexp.MustCompile(`^runtime\.(cgocallback|cgocallbackg|needm|dropm|exitsyscall|entersyscall|reentersyscall|asmcgocall|cgocall|lockOSThread|unlockOSThread|minit|unminit|save_g|callbackUpdateSystemStack|cgoBindM|systemstack|mcall|gogo|morestack|casgstatus)|crosscall2|_cgo`)},
	{"Go runtime: allocation, GC, write barriers", "", regexp.MustCompile(`^runtime\.(malloc|nextFree|gcAssist|gcmark|gcDrain|scanobject|scanObject|scanblock|greyobject|heapBits|memclr|newobject|makeslice|growslice|makemap|mapassign|gcWrite|wbBuf|bulkBarrier|typedmemmove|concatstring|rawstring|slicebytetostring|stringtoslicebyte|sweep|.*[sS]pan|mcache|mheap|refill|.*alloc|publicationBarrier|heapSetType|deductAssist|nextSample|typePointers|tryDefer)|^gcWriteBarrier`)},
	{"Go runtime: scheduler, locks, channels, timers", "", regexp.MustCompile(`^runtime\.(lock|unlock|futex|notewake|notesleep|wakep|ready|goready|schedule|findRunnable|park|chansend|chanrecv|send|recv|sem|runq|netpoll|stopm|startm|handoffp|acquirep|releasep|nanotime|procyield|osyield|checkTimers|resetspinning|execute|selectgo|goexit|newproc|gopark|.*[Tt]imer)|^sync\.|^internal/sync|^sync/atomic`)},
	{"Go runtime: maps, memmove, other", "", regexp.MustCompile(`^runtime\.|^internal/runtime|^aeshash|^memeqbody|^cmpbody|^indexbyte|^internal/bytealg`)},
	{"guard Go code (plugin, keys, store, conflicts, replica, go-redis) and the Go library it calls", "mosquitto_guard", regexp.MustCompile(`^[a-z]`)},
	{"guard .so, other (plugin.c, seen.c)", "mosquitto_guard", regexp.MustCompile(``)},
	{"mosquitto", "/mosquitto", regexp.MustCompile(``)},
	{"libc", "libc.so", regexp.MustCompile(``)},
}

const cgOther = "other libraries (libwrap, ld.so, ...)"

func cgCategory(fn, obj string) string {
	for _, c := range cgCategories {
		if c.obj != "" && !strings.Contains(obj, c.obj) {
			continue
		}
		if c.obj == "" && !strings.Contains(obj, "mosquitto_guard") && !strings.Contains(obj, "libcrypto") {
			continue // Go names are only in the plugin
		}
		if c.fn.MatchString(fn) {
			return c.name
		}
	}
	return cgOther
}

// cgSelf returns the self cost (Ir) of each function of a callgrind file,
// and the object each is in. Call lines ("calls=" and the inclusive cost
// line after it) are not self cost.
func cgSelf(path string) (map[string]int64, map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	names, objs := map[string]string{}, map[string]string{}
	self, objOf := map[string]int64{}, map[string]string{}
	ref := regexp.MustCompile(`^\((\d+)\)(?: (.*))?$`)
	resolve := func(table map[string]string, v string) string {
		m := ref.FindStringSubmatch(v)
		if m == nil {
			return v
		}
		if m[2] != "" {
			table[m[1]] = m[2]
		}
		return table[m[1]]
	}
	var fn, obj string
	skip := false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if skip {
			skip = false
			continue
		}
		switch {
		case strings.HasPrefix(line, "ob="):
			obj = resolve(objs, line[3:])
		case strings.HasPrefix(line, "cob="):
			resolve(objs, line[4:])
		case strings.HasPrefix(line, "fn="):
			fn = resolve(names, line[3:])
			objOf[fn] = obj
		case strings.HasPrefix(line, "cfn="):
			resolve(names, line[4:])
		case strings.HasPrefix(line, "calls="):
			skip = true
		case fn != "" && line != "" && (line[0] >= '0' && line[0] <= '9' || line[0] == '+' || line[0] == '-' || line[0] == '*'):
			if fs := strings.Fields(line); len(fs) >= 2 {
				if n, err := strconv.ParseInt(fs[1], 10, 64); err == nil {
					self[fn] += n
				}
			}
		}
	}
	return self, objOf, sc.Err()
}

// cmdCallgrind prints, for each run (label=connects:main-file[,other-thread-files]),
// the main thread's instructions per CONNECT by category, and the other
// threads' total.
func cmdCallgrind(args []string) error {
	fs := flag.NewFlagSet("callgrind", flag.ContinueOnError)
	top := fs.Int("top", 0, "also list each run's N costliest functions of the main thread")
	if err := fs.Parse(args); err != nil {
		return err
	}
	type run struct {
		label    string
		n        float64
		cats     map[string]int64
		main, bg int64
		self     map[string]int64
	}
	var runs []run
	for _, a := range fs.Args() {
		label, rest, ok1 := strings.Cut(a, "=")
		count, files, ok2 := strings.Cut(rest, ":")
		n, err := strconv.Atoi(count)
		if !ok1 || !ok2 || err != nil || n <= 0 {
			return fmt.Errorf("want label=connects:main-thread-file[,other-thread-file...], not %q", a)
		}
		r := run{label: label, n: float64(n), cats: map[string]int64{}}
		for i, file := range strings.Split(files, ",") {
			self, objOf, err := cgSelf(file)
			if err != nil {
				return err
			}
			for fn, ir := range self {
				if i == 0 {
					r.cats[cgCategory(fn, objOf[fn])] += ir
					r.main += ir
				} else {
					r.bg += ir
				}
			}
			if i == 0 {
				r.self = self
			}
		}
		runs = append(runs, r)
	}
	k := func(v int64, n float64) string { return fmt.Sprintf("%.1f k", float64(v)/n/1000) }
	fmt.Print("| broker main thread, instructions per CONNECT |")
	for _, r := range runs {
		fmt.Printf(" %s |", r.label)
	}
	fmt.Print("\n|---|" + strings.Repeat("---:|", len(runs)) + "\n")
	for _, c := range append(cgNames(), cgOther) {
		fmt.Printf("| %s |", c)
		for _, r := range runs {
			fmt.Printf(" %s |", k(r.cats[c], r.n))
		}
		fmt.Println()
	}
	fmt.Print("| **main thread, all** |")
	for _, r := range runs {
		fmt.Printf(" **%s** |", k(r.main, r.n))
	}
	fmt.Print("\n| the broker's other threads (the plugin's goroutines, GC) |")
	for _, r := range runs {
		fmt.Printf(" %s |", k(r.bg, r.n))
	}
	fmt.Println()
	for _, r := range runs {
		if *top <= 0 {
			break
		}
		type fc struct {
			fn string
			ir int64
		}
		var l []fc
		for fn, ir := range r.self {
			l = append(l, fc{fn, ir})
		}
		sort.Slice(l, func(i, j int) bool { return l[i].ir > l[j].ir })
		fmt.Printf("\n%s, main thread, costliest functions (instructions per CONNECT):\n\n", r.label)
		for i := 0; i < len(l) && i < *top; i++ {
			fmt.Printf("    %8.0f  %s\n", float64(l[i].ir)/r.n, l[i].fn)
		}
	}
	return nil
}

func cgNames() []string {
	var out []string
	for _, c := range cgCategories {
		out = append(out, c.name)
	}
	return out
}
