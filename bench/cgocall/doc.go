// Command cgocall is a c-shared library with one empty exported function,
// for run.sh: what a callback from a C thread into Go costs the Go
// runtime's other threads, without Mosquitto or the plugin (see run.sh).
// With CGOCALL_YIELD set, the function yields to Go's scheduler at most
// every 5 ms, as the plugin's CONNECT callback does (cgo/yield.go; its
// back-off after a slow yield is left out: nothing else runs here).
package main
