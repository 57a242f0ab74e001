// Package testenv starts the real programs that tests cross a process
// boundary into: redis-server and mosquitto, on free loopback ports, each in
// its own temporary directory, stopped by PID when the test ends.
package testenv
