// Package e2e holds the end-to-end tests: the built plugin (.so) loaded by a
// real mosquitto, a real redis-server (or Redis Cluster), real MQTT
// connections from distinct 127.x addresses, all on free loopback ports,
// started by the tests and stopped by PID. make test runs them with the .so
// it built ($GUARD_PLUGIN); without it, TestMain builds one. Under -short
// (make unit) nothing here runs.
//
// deb_test.go builds the Debian package (packaging/build-deb.sh) from that
// .so, installs it into a scratch root with dpkg, and loads the installed
// .so into a real mosquitto.
package e2e
