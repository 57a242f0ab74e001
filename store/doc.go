// Package store is mosquitto-guard's Redis backend: the allow and block
// lists and the users kept in Redis, read in one pipelined round trip per
// CONNECT, on a single Redis or a Redis Cluster.
//
// It is also where the lists are read and edited as a whole, by guardctl:
// List (lists.go) scans a list on every master (EachMaster, scan.go), and
// SetEntry and DeleteEntry (edit.go) write or remove one entry in the form
// the plugin matches and publish the change as the plugin publishes its own
// (PublishChange), so the plugin and guardctl cannot disagree on how an
// entry is written.
package store
