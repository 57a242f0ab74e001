package main

import "C"

import (
	"os"
	"runtime"
	"time"
)

var (
	n         int
	yield     = os.Getenv("CGOCALL_YIELD") != ""
	base      = time.Now()
	lastYield time.Duration
)

//export Work
func Work(x C.int) C.int {
	if yield {
		if now := time.Since(base); now-lastYield >= 5*time.Millisecond {
			lastYield = now
			runtime.Gosched()
		}
	}
	n += int(x)
	return C.int(n)
}

func main() {}
