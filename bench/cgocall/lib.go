// Command cgocall is a c-shared library with one empty exported function,
// for run.sh: what a callback from a C thread into Go costs the Go
// runtime's other threads, without Mosquitto or the plugin (see run.sh).
package main

import "C"

var n int

//export Work
func Work(x C.int) C.int { n += int(x); return C.int(n) }

func main() {}
