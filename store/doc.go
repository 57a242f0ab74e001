// Package store is mosquitto-guard's Redis access: the allow and block
// lists and the users kept in Redis, read in one pipelined round trip per
// CONNECT (Lookup, store.go), on a single Redis or a Redis Cluster; the live
// connections and principals of each client ID, with the atomic claim of
// clientid_conflict deny and the broker lease (conns.go); the findings
// stream (findings.go); and go-redis's own log lines, routed to the broker's
// log at a bounded rate (logs.go).
//
// It is also where the lists are read and edited as a whole, by guardctl:
// List (lists.go) scans a list on every master (EachMaster, scan.go), and
// SetEntry and DeleteEntry (edit.go) write or remove one entry in the form
// the plugin matches and publish the change as the plugin publishes its own
// (PublishChange), so the plugin and guardctl cannot disagree on how an
// entry is written.
package store
