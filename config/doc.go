// Package config reads what the broker's configuration says to
// mosquitto-guard: ReadBrokerConfig reads a mosquitto.conf (and its
// include_dir files) the way Mosquitto 2.0 does, Parse turns the plugin's
// options into one validated Options, reporting every bad or unknown option
// at once (naming the replacement of a mosquitto-go-auth option), and
// ResolveACLMode decides acl_check auto from the broker's own files (every
// -c file, in order, with their include_dir files). The
// plugin's init, acl_check auto and guardctl all read through it, so they
// cannot disagree on a file or an option.
package config
