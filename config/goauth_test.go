package config

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// goAuthNames are every option mosquitto-go-auth reads (its go-auth.go,
// backends/*.go and hashing/hashing.go, at its last commit 20ee931), plus
// those its README documents without its code reading them.
var goAuthNames = strings.Fields(`
	backends check_prefix disable_superuser exhaust_backend_first prefixes strip_prefix
	retry_count use_clientid_as_username log_level log_dest log_file
	cache cache_type cache_reset cache_refresh cache_host cache_port cache_password cache_db cache_mode cache_addresses
	auth_cache_seconds auth_jitter_seconds acl_cache_seconds acl_jitter_seconds
	hasher hasher_algorithm hasher_cost hasher_iterations hasher_keylen hasher_memory hasher_parallelism
	hasher_salt_encoding hasher_salt_size
	plugin_path plugin_register
	files_password_path files_acl_path files_register files_hasher files_hasher_iterations files_hasher_salt_encoding
	redis_host redis_port redis_db redis_password redis_mode redis_cluster_addresses redis_disable_superuser
	redis_register redis_hasher redis_hasher_salt_encoding
	pg_host pg_port pg_dbname pg_user pg_password pg_userquery pg_superquery pg_aclquery pg_sslmode pg_sslcert
	pg_sslkey pg_sslrootcert pg_connect_tries pg_max_life_time pg_register pg_hasher
	mysql_host mysql_port mysql_dbname mysql_user mysql_password mysql_userquery mysql_superquery mysql_aclquery
	mysql_allow_native_passwords mysql_connect_tries mysql_max_life_time mysql_protocol mysql_socket
	mysql_sslcert mysql_sslkey mysql_sslmode mysql_sslrootcert
	sqlite_source sqlite_userquery sqlite_superquery sqlite_aclquery sqlite_connect_tries sqlite_max_life_time
	mongo_host mongo_port mongo_dbname mongo_username mongo_password mongo_authsource mongo_users mongo_acls
	mongo_disable_superuser mongo_use_tls mongo_insecure_skip_verify
	jwt_mode jwt_parse_token jwt_secret jwt_userfield jwt_skip_user_expiration jwt_skip_acl_expiration
	jwt_acl_path jwt_db jwt_userquery jwt_host jwt_port jwt_getuser_uri jwt_superuser_uri jwt_aclcheck_uri
	jwt_with_tls jwt_verify_peer jwt_response_mode jwt_params_mode jwt_http_method jwt_http_timeout
	jwt_user_agent jwt_host_whitelist jwt_js_user_script_path jwt_js_superuser_script_path
	jwt_js_acl_script_path jwt_js_pass_claims jwt_js_stack_depth_limit jwt_js_ms_max_duration
	http_host http_port http_getuser_uri http_superuser_uri http_aclcheck_uri http_with_tls http_verify_peer
	http_response_mode http_params_mode http_method http_timeout http_user_agent
	grpc_host grpc_port grpc_ca_cert grpc_tls_cert grpc_tls_key grpc_disable_superuser
	grpc_fail_on_dial_error grpc_dial_timeout_ms
	js_user_script_path js_superuser_script_path js_acl_script_path js_stack_depth_limit js_ms_max_duration
	ldap_url ldap_bind_dn ldap_bind_password ldap_user_dn ldap_user_filter ldap_group_dn ldap_group_filter
	ldap_superuser_filter ldap_acl_topic_pattern_attribute ldap_acl_acc_attribute
`)

// Every mosquitto-go-auth option is either one of ours (same name, same
// meaning) or gets a line saying what replaces it.
func TestEveryGoAuthOptionIsCovered(t *testing.T) {
	for _, name := range goAuthNames {
		if _, ours := options[name]; ours {
			continue
		}
		h := goAuthHint(name)
		assert.NotEmpty(t, h, name)
		assert.Regexp(t, `^(use \S+ instead|not needed: |not supported: |not read by this plugin: )`, h, name)
	}
	for _, shared := range []string{"redis_password", "redis_db", "hasher_salt_encoding"} {
		assert.Contains(t, options, shared)
	}
	for _, ours := range optionNames() {
		assert.Empty(t, goAuthHint(ours), "an option of ours is not mosquitto-go-auth's: %s", ours)
	}
}

// Issue 9: a mosquitto-go-auth config took 15 restarts, one unknown option
// each. Every problem comes at once, each its own line, the replacement
// named, no value echoed.
func TestParseReportsEveryProblemAtOnce(t *testing.T) {
	_, err := Parse(map[string]string{
		"backends":            "files",
		"files_password_path": "/etc/mosquitto/go-auth-passwords",
		"files_acl_path":      "/etc/mosquitto/go-auth-acls",
		"redis_host":          "10.0.0.5",
		"redis_port":          "6380",
		"log_level":           "debug",
		"hasher_iterations":   "100000",
		"cache_password":      "c4che-s3cret",
		"pg_password":         "pg-s3cret",
		"redis_pasword":       "typo-s3cret",
		"fail_limit":          "lots",
		"ban_time":            "forever",
		"redis_db":            "-3",
		"redis_password":      "real-s3cret",
	})
	var errs Errors
	require.ErrorAs(t, err, &errs)
	var lines []string
	for _, e := range errs {
		lines = append(lines, e.Error())
	}
	assert.Equal(t, []string{
		"option backends: unknown option (mosquitto-go-auth): use backend instead: files or redis (one backend; mosquitto-go-auth's other backends are not supported, and it cannot stay loaded beside this plugin: one Go plugin per broker process)",
		"option cache_password: unknown option (mosquitto-go-auth): " + hintCache,
		"option files_acl_path: unknown option (mosquitto-go-auth): not read by this plugin: set Mosquitto's own acl_file to that file (see the README for what differs), or every client may publish and subscribe anywhere",
		"option files_password_path: unknown option (mosquitto-go-auth): use password_file instead (the same file: its hashes are read as they are)",
		"option hasher_iterations: unknown option (mosquitto-go-auth): " + hintHasher,
		"option log_level: unknown option (mosquitto-go-auth): " + hintLog,
		"option pg_password: unknown option (mosquitto-go-auth): not supported: passwords are read from a file (backend files) or Redis (backend redis); move the pg backend's users there (mosquitto-go-auth cannot stay loaded beside this plugin: one Go plugin per broker process)",
		"option redis_host: unknown option (mosquitto-go-auth): " + hintAddr,
		"option redis_pasword: unknown option (did you mean redis_password?)",
		"option redis_port: unknown option (mosquitto-go-auth): " + hintAddr,
		`option ban_time: bad value "forever": expected a duration from 1s to 8760h0m0s, such as 90s, 10m, 1h30m or 31d`,
		`option fail_limit: bad value "lots": expected a whole number from 1 to 1000000`,
		`option redis_db: bad value "-3": expected a whole number from 0 to 65536`,
	}, lines)
	for _, secret := range []string{"s3cret", "go-auth-passwords", "10.0.0.5"} {
		assert.NotContains(t, err.Error(), secret, "no value of an unknown option is echoed")
	}
	assert.ErrorIs(t, err, errUnknownOption)
}

// The checks across options still run when other options are bad, and are
// skipped for those that are.
func TestParseCombinationsWithOtherErrors(t *testing.T) {
	_, err := Parse(map[string]string{"fail_limit": "x", "ban_time": "2h", "ban_max": "1h", "nope_nope_nope": "1"})
	var errs Errors
	require.ErrorAs(t, err, &errs)
	require.Len(t, errs, 3, "%v", err)
	assert.Contains(t, errs[0].Error(), "option nope_nope_nope: unknown option (known options: acl_check, auth_cache,")
	assert.Contains(t, errs[1].Error(), "option fail_limit:")
	assert.Contains(t, errs[2].Error(), "option ban_max:")

	_, err = Parse(map[string]string{"ban_time": "x", "ban_max": "1s", "backend": "ldap", "password_file": "/etc/passwd"})
	require.ErrorAs(t, err, &errs)
	require.Len(t, errs, 2, "no combination of a bad ban_time or backend: %v", err)
}

// An option name holding control characters is shown up to the first: one
// log line. What follows may be a value.
func TestUnknownOptionNameQuoted(t *testing.T) {
	_, err := Parse(map[string]string{"a\rb\x1b[31m": "v"})
	require.Error(t, err)
	assert.True(t, strings.HasPrefix(err.Error(), `option a...: unknown option`), err.Error())
	_, err = Parse(map[string]string{"\x1b[31m": "v"})
	require.Error(t, err)
	assert.True(t, strings.HasPrefix(err.Error(), `option ...: unknown option`), err.Error())
}

// Mosquitto separates an option from its value at a space only: after a tab
// the value is part of the name (atk59: "auth_opt_redis_password<TAB>S3cret
// x" put the password in the broker's log and guardctl's output).
func TestUnknownOptionHidesWhatFollowsATab(t *testing.T) {
	_, err := Parse(map[string]string{"redis_password\tS3cret": "x"})
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "S3cret")
	assert.Contains(t, err.Error(), "option redis_password...: unknown option (a tab does not separate redis_password from its value: write a space")
	_, err = Parse(map[string]string{"redis_pasword S3cret": "x"})
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "S3cret")
}

func TestRedisPasswordNeverShown(t *testing.T) {
	e := &OptionError{Option: "redis_password", Value: "s3cret", Expected: "something"}
	assert.Equal(t, "option redis_password: bad value (not shown): expected something", e.Error())
}

func TestClosest(t *testing.T) {
	names := optionNames()
	assert.Equal(t, "fail_limit", closest("fali_limit", names))
	assert.Equal(t, "ban_time", closest("bantime", names))
	assert.Equal(t, "", closest("completely_else", names))
	// The nearest wins: redis_addr at one edit, not redis_db at two.
	assert.Equal(t, "redis_addr", closest("redis_adr", names))
	assert.Equal(t, 3, editDistance("kitten", "sitting", 5))
	assert.Greater(t, editDistance("a", "abcdef", 2), 2)
}

// ParseRedis validates the options that say where the keys are exactly as
// Parse does, and ignores the rest: it never opens password_file.
func TestParseRedis(t *testing.T) {
	o, err := ParseRedis(map[string]string{"password_file": "/nonexistent", "fail_limit": "bad", "key_prefix": "p:", "redis_db": "3"})
	require.NoError(t, err)
	assert.Equal(t, []string{"127.0.0.1:6379"}, o.RedisAddrs)
	assert.Equal(t, "p:", o.KeyPrefix)
	assert.Equal(t, 3, o.RedisDB)
	for _, bad := range []map[string]string{
		{"redis_addr": "nohost"}, {"redis_addr": "a:"}, {"redis_addr": ":6379"}, {"redis_addr": "::1:6379"},
		{"redis_addr": "a:1,b"}, {"redis_db": "x"}, {"redis_db": "-1"}, {"redis_db": "65537"},
	} {
		_, perr := Parse(bad)
		_, rerr := ParseRedis(bad)
		require.Error(t, rerr, "%v", bad)
		assert.Equal(t, perr.Error(), rerr.Error(), "one validation: %v", bad)
		var oe *OptionError
		assert.True(t, errors.As(rerr, &oe))
	}
	o, err = ParseRedis(map[string]string{"redis_addr": "[::1]:6379, 10.0.0.1:7000"})
	require.NoError(t, err)
	assert.Equal(t, []string{"[::1]:6379", "10.0.0.1:7000"}, o.RedisAddrs)
	assert.Equal(t, []string{"key_prefix", "redis_addr", "redis_db", "redis_password",
		"redis_sentinel_master", "redis_sentinel_password", "redis_sentinel_username",
		"redis_tls", "redis_tls_ca", "redis_tls_cert", "redis_tls_key", "redis_tls_server_name", "redis_username"}, RedisOptionNames())
	assert.Equal(t, "127.0.0.1:6379", Default("redis_addr"))
	assert.Equal(t, "guard:", Default("key_prefix"))
}
