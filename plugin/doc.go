// Package plugin is mosquitto-guard's decision core: it takes a client's
// client ID, address, username and password as plain Go values and decides
// allow, deny or defer, with the rule that decided. It knows nothing of cgo
// or of the broker; the cgo package is a thin skin around it.
//
// A CONNECT's decision reads top to bottom in connect.go: the lists, the
// failure limits, the credentials, the failure count, client-ID conflicts,
// then admit. Each step's detail lives in the file named for its concern:
// lists.go (the local list replica and its effects), limits.go,
// credentials.go, failures.go (counting in Redis, in the background),
// conflicts.go (the plugin's side of package conflicts), conns.go (this
// broker's connections), refusals.go (the log lines of refusals).
package plugin
