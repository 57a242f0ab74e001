// Package replica keeps a local copy of mosquitto-guard's allow and block
// keys (and, for the redis backend, its users), so that a CONNECT is decided
// without a Redis round trip. Sync (sync.go) loads it with SCAN, keeps it
// live from keyspace notifications and the guard's change channel, and
// reloads it periodically as a safety net. Every entry carries its expiry,
// to the millisecond, from the key's TTL: an expired entry never matches,
// whether or not Redis has told us yet.
package replica
