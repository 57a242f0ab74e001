// Package keys builds the Redis key names that make up mosquitto-guard's public
// interface: operators read and write them with plain redis-cli, so their shape
// must never change silently.
//
// A key is the configured prefix, a kind, a scope and the value, joined by ':'.
// The value is always the last part and is taken verbatim, so any byte string
// (':' , '*', spaces, newlines, 20 000-byte client IDs) maps to exactly one key
// and no two values share one. Keys are only ever read with exact commands
// (GET, PTTL, SET), never with glob patterns, so glob characters cannot widen
// a match. The keys of conflict tracking, which any client creates by
// connecting, name long client IDs by a hash instead: see Tracking.
//
// The value of a block key the plugin writes itself starts with
// AutoBanMarker ("auto:"); that marker is how every reader tells an
// automatic ban from an operator's.
package keys
