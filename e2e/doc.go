// Package e2e holds the end-to-end tests: the built plugin (.so) loaded by a
// real mosquitto, a real redis-server (or Redis Cluster), real MQTT
// connections from distinct 127.x addresses, all on free loopback ports,
// started by the tests and stopped by PID. make test runs them with the .so
// it built ($GUARD_PLUGIN); without it, TestMain builds one. Under -short
// (make unit) nothing here runs.
package e2e
