// Command cgo is the thin skin that makes mosquitto-guard a Mosquitto 2.0
// plugin (API v5): built with -buildmode=c-shared, its C half provides the
// entry points and event trampolines, and these exported Go functions convert
// the broker's C values and call the decision core in package plugin.
//
// Every exported function runs on the broker thread, recovers any panic
// (a panic escaping into C would kill the broker) and, before returning,
// writes out the log lines queued by goroutines, since no broker function
// may be called from another thread.
package main
