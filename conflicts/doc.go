// Package conflicts tracks client IDs across brokers and reports conflicts:
// a client ID used by another principal (a certificate, cert:<id>, or a
// username: see Principal) within conflict_window, or the same principal's
// connections taking it over from each other more than takeover_limit times
// in takeover_window.
//
// The broker thread calls only what costs no Redis round trip (NewConn,
// Connected, Disconnected, Refused, RemoteHolder) or what is bounded by
// redis_timeout (Claim, under clientid_conflict deny). Everything else runs
// on the worker (Run): events in broker order, batched and written to Redis
// in one round trip per batch, the rules (rules.go) applied to what each
// write reads back, findings stored, logged and published (findings.go), and
// this broker's lease renewed and dead brokers' live connections reaped
// (lease.go).
//
// A Tracker takes everything it needs explicitly (Options, Deps): it knows
// nothing of the plugin that feeds it.
package conflicts
