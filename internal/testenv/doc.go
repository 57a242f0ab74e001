// Package testenv starts the real programs that tests cross a process
// boundary into: redis-server and mosquitto, on free loopback ports, each in
// its own temporary directory, stopped by PID when the test ends; and the
// certificates a TLS listener and its clients need, made with openssl in the
// test's temporary directory (CA).
package testenv
