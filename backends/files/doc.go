// Package files loads a password file in mosquitto_passwd's format (one
// "username:hash" per line) and verifies passwords against it, with any hash
// format that package hashes supports. Malformed lines are skipped and
// reported, never accepted; the reports never quote a hash or whatever else
// follows a line's ':'. A username on several lines gets its last line's
// hash, as Mosquitto does, and is reported (the username quoted and cut).
package files
