// Package offheap holds fixed-size, pointer-free records outside the Go
// heap (issue 12: memory per connection). What the Go heap holds live is
// paid about 1 + GOGC/100 times in RSS, the collector letting the heap grow
// that far past it between collections, and what it holds is scanned or at
// least counted at every cycle; memory mapped from the system with
// syscall.Mmap is neither, and costs its pages once.
package offheap
