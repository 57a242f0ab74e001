package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// Connection defaults (those of the plugin), the Redis timeout, and the
// environment variable that can hold the password.
const (
	defaultRedisAddr = "127.0.0.1:6379"
	defaultKeyPrefix = "guard:"
	redisTimeout     = 5 * time.Second
	passwordEnv      = "GUARD_REDIS_PASSWORD"
)

// connOptions are the plugin options guardctl needs to reach its keys, named
// as in mosquitto.conf (without the auth_opt_ or plugin_opt_ prefix).
var connOptions = []string{"redis_addr", "redis_username", "redis_password", "redis_db", "key_prefix"}

// connUsage documents the flags registered by connFlags.register.
const connUsage = `Connection (a flag beats GUARD_REDIS_PASSWORD, which beats --config, which
beats the defaults):
  --config FILE          read redis_addr, redis_username, redis_password, redis_db
                         and key_prefix from the plugin's auth_opt_NAME or
                         plugin_opt_NAME lines in this mosquitto.conf
                         (e.g. /etc/mosquitto/mosquitto.conf)
  --redis-addr ADDRS     host:port, or several separated by commas for a Redis
                         Cluster (default 127.0.0.1:6379)
  --redis-username NAME  Redis ACL user
  --redis-password PASS  Redis password; better set GUARD_REDIS_PASSWORD, since
                         command lines show in ps
  --redis-db N           Redis database (default 0)
  --key-prefix PREFIX    prefix of mosquitto-guard's keys (default guard:)
`

// connFlags are the connection flags shared by the subcommands.
type connFlags struct {
	fs                                       *flag.FlagSet
	config, addr, username, password, prefix string
	db                                       int
}

// register adds the connection flags to fs.
func (c *connFlags) register(fs *flag.FlagSet) {
	c.fs = fs
	fs.StringVar(&c.config, "config", "", "mosquitto.conf to read the plugin's options from")
	fs.StringVar(&c.addr, "redis-addr", defaultRedisAddr, "Redis host:port, comma-separated for a cluster")
	fs.StringVar(&c.username, "redis-username", "", "Redis ACL user")
	fs.StringVar(&c.password, "redis-password", "", "Redis password (or env "+passwordEnv+")")
	fs.IntVar(&c.db, "redis-db", 0, "Redis database")
	fs.StringVar(&c.prefix, "key-prefix", defaultKeyPrefix, "key prefix")
}

// resolve merges defaults, --config, the password environment variable and
// the flags given (in increasing precedence) into the values of connOptions.
func (c *connFlags) resolve(getenv func(string) string) (map[string]string, error) {
	vals := map[string]string{
		"redis_addr": defaultRedisAddr, "redis_username": "", "redis_password": "",
		"redis_db": "0", "key_prefix": defaultKeyPrefix,
	}
	if c.config != "" {
		fromFile, err := readConfigFile(c.config)
		if err != nil {
			return nil, err
		}
		for k, v := range fromFile {
			vals[k] = v
		}
	}
	if p := getenv(passwordEnv); p != "" {
		vals["redis_password"] = p
	}
	flagOption := map[string]string{
		"redis-addr": "redis_addr", "redis-username": "redis_username", "redis-password": "redis_password",
		"redis-db": "redis_db", "key-prefix": "key_prefix",
	}
	c.fs.Visit(func(f *flag.Flag) {
		if opt, ok := flagOption[f.Name]; ok {
			vals[opt] = f.Value.String()
		}
	})
	return vals, nil
}

// store opens a Store with the resolved connection options; addrs names
// the Redis addresses for error messages.
func (c *connFlags) store(getenv func(string) string) (st *store.Store, addrs string, err error) {
	vals, err := c.resolve(getenv)
	if err != nil {
		return nil, "", err
	}
	o, kb, err := storeOptions(vals)
	if err != nil {
		return nil, "", err
	}
	return store.New(o, kb), strings.Join(o.Addrs, ","), nil
}

// storeOptions checks the values of connOptions and turns them into Store options.
func storeOptions(vals map[string]string) (store.Options, keys.Builder, error) {
	o := store.Options{Username: vals["redis_username"], Password: vals["redis_password"], Timeout: redisTimeout}
	for _, a := range strings.Split(vals["redis_addr"], ",") {
		a = strings.TrimSpace(a)
		if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
			return o, keys.Builder{}, fmt.Errorf("redis_addr: bad value %s: expected host:port, or several separated by commas", strconv.Quote(vals["redis_addr"]))
		}
		o.Addrs = append(o.Addrs, a)
	}
	db, err := strconv.Atoi(vals["redis_db"])
	if err != nil || db < 0 {
		return o, keys.Builder{}, fmt.Errorf("redis_db: bad value %s: expected a database number", strconv.Quote(vals["redis_db"]))
	}
	o.DB = db
	return o, keys.Builder{Prefix: vals["key_prefix"]}, nil
}

// readConfigFile returns the connOptions set in a mosquitto.conf.
func readConfigFile(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	opts, err := parseConfig(bufio.NewScanner(f))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return opts, nil
}

// parseConfig reads mosquitto.conf lines and returns the connOptions set by
// auth_opt_NAME or plugin_opt_NAME lines; a later line beats an earlier one.
// As in Mosquitto, a comment is a line starting with '#', and the value is
// the rest of the line (trimmed), so "secret # x" is a value, not a comment.
func parseConfig(sc *bufio.Scanner) (map[string]string, error) {
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	out := map[string]string{}
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		key, value := line, ""
		if i := strings.IndexAny(line, " \t"); i >= 0 {
			key, value = line[:i], line[i+1:]
		}
		name, ok := strings.CutPrefix(key, "auth_opt_")
		if !ok {
			name, ok = strings.CutPrefix(key, "plugin_opt_")
		}
		if ok && slices.Contains(connOptions, name) {
			out[name] = strings.TrimSpace(value)
		}
	}
	return out, sc.Err()
}
