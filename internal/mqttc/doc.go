// Package mqttc is a minimal MQTT 3.1.1 and MQTT 5 client for tests and load
// generation. Unlike general client libraries it gives total control over what
// goes on the wire: any 127.x source address, client IDs of any bytes, the raw
// CONNACK code, and the difference between a refused connection and one that
// the broker closed without a CONNACK. It speaks TLS too (Options.TLS), with
// a client certificate, from any 127.x source address.
//
// Reads are synchronous, guarded by deadlines taken from the context; a Conn
// starts no goroutine. A Conn is not safe for concurrent use, except that
// Close may be called from another goroutine to interrupt a blocked call.
package mqttc
