package config

import "strings"

// The mosquitto-go-auth options this plugin does not share, and what
// replaces each: the one table behind the unknown-option lines, so that a
// config moved over from mosquitto-go-auth is fixed in one restart. Names are
// those its code reads (go-auth.go, backends/*.go, hashing/hashing.go of
// iegomez/mosquitto-go-auth); redis_password, redis_db and
// hasher_salt_encoding mean the same here and are not listed.
const (
	hintHasher = "not needed: the hash format and its parameters are read from each hash"
	hintLog    = "not needed: the plugin logs through the broker, so the broker's log_type and log_dest lines decide"
	hintCache  = "not needed: auth_cache remembers successful verifications in memory (a count, not a time; 0 turns it off)"
	hintSuper  = "not needed: this plugin has no superusers; ACLs are Mosquitto's acl_file or dynamic security"
	hintPrefix = "not supported: there is one backend, so no prefixes to choose it"
	hintReg    = "not needed: a backend here checks passwords only; ACLs are Mosquitto's acl_file or dynamic security"
	hintAddr   = "use redis_addr instead, as host:port (redis_host and redis_port in one option)"
)

var goAuthOptions = map[string]string{
	"backends":                 "use backend instead: files or redis (one backend; mosquitto-go-auth's other backends are not supported, and it cannot stay loaded beside this plugin: one Go plugin per broker process)",
	"files_password_path":      "use password_file instead (the same file: its hashes are read as they are)",
	"files_acl_path":           "not read by this plugin: set Mosquitto's own acl_file to that file (see the README for what differs), or every client may publish and subscribe anywhere",
	"redis_host":               hintAddr,
	"redis_port":               hintAddr,
	"redis_mode":               "not needed: a Redis Cluster is several comma-separated host:port in redis_addr",
	"redis_cluster_addresses":  "use redis_addr instead (the same comma-separated host:port list); for mosquitto-go-auth's cache it is not needed",
	"redis_disable_superuser":  hintSuper,
	"disable_superuser":        hintSuper,
	"check_prefix":             hintPrefix,
	"strip_prefix":             hintPrefix,
	"prefixes":                 hintPrefix,
	"exhaust_backend_first":    "not needed: there is one backend",
	"retry_count":              "not needed: redis_timeout bounds each Redis wait, and redis_unavailable says what happens while Redis does not answer",
	"use_clientid_as_username": "not supported: passwords are checked for the username the client sends",
	"plugin_path":              "not supported: mosquitto-go-auth's custom Go backends load only into mosquitto-go-auth, which cannot share a broker process with this plugin (one Go plugin per process)",
	"log_level":                hintLog,
	"log_dest":                 hintLog,
	"log_file":                 hintLog,
	"cache":                    hintCache,
	"cache_type":               hintCache,
	"cache_reset":              hintCache,
	"cache_refresh":            hintCache,
	"cache_host":               hintCache,
	"cache_port":               hintCache,
	"cache_password":           hintCache,
	"cache_db":                 hintCache,
	"cache_mode":               hintCache,
	"cache_addresses":          hintCache,
	"auth_cache_seconds":       "use auth_cache instead: successful verifications remembered in memory, a count (default 100000), not a time",
	"auth_jitter_seconds":      hintCache,
	"acl_cache_seconds":        "not needed: this plugin caches no ACL answers",
	"acl_jitter_seconds":       "not needed: this plugin caches no ACL answers",
	"hasher":                   hintHasher,
	"hasher_cost":              hintHasher,
	"hasher_salt_size":         hintHasher,
	"hasher_iterations":        hintHasher,
	"hasher_keylen":            hintHasher,
	"hasher_algorithm":         hintHasher,
	"hasher_memory":            hintHasher,
	"hasher_parallelism":       hintHasher,
}

// goAuthBackends are the option prefixes of mosquitto-go-auth's backends
// (allowedBackendsOptsPrefix in its backends.go). Each may carry its own
// hasher (<prefix>_hasher...) and registered checks (<prefix>_register).
var goAuthBackends = []string{"files", "redis", "pg", "mysql", "sqlite", "mongo", "jwt", "http", "grpc", "js", "ldap", "plugin"}

// goAuthHint returns what replaces the mosquitto-go-auth option name, or "".
func goAuthHint(name string) string {
	if h, ok := goAuthOptions[name]; ok {
		return h
	}
	for _, b := range goAuthBackends {
		rest, ok := strings.CutPrefix(name, b+"_")
		if !ok {
			continue
		}
		switch {
		case rest == "hasher_salt_encoding":
			return "use hasher_salt_encoding instead (one for every hash)"
		case rest == "hasher", strings.HasPrefix(rest, "hasher_"):
			return hintHasher
		case rest == "register":
			return hintReg
		case b != "files" && b != "redis" && b != "plugin":
			return "not supported: passwords are read from a file (backend files) or Redis (backend redis); " +
				"move the " + b + " backend's users there (mosquitto-go-auth cannot stay loaded beside this plugin: one Go plugin per broker process)"
		}
	}
	return ""
}
