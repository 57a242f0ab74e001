// Package fileread reads the files an operator names (the password file,
// Redis TLS files, the broker's configuration) without ever waiting: at the
// broker's start, or on its thread at a SIGHUP, a file that blocks is a
// broker that answers no one.
package fileread
