package main

import (
	"flag"
	"fmt"
	"maps"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// The Redis timeout, and the environment variable that can hold the password.
const (
	redisTimeout = 5 * time.Second
	passwordEnv  = "GUARD_REDIS_PASSWORD"
)

// The connection defaults: the plugin's, from its option table.
var (
	defaultRedisAddr = config.Default("redis_addr")
	defaultKeyPrefix = config.Default("key_prefix")
)

// connOptions are the plugin options guardctl needs to reach its keys, named
// as in mosquitto.conf (without the auth_opt_ or plugin_opt_ prefix).
var connOptions = config.RedisOptionNames()

// connUsage documents the flags registered by connFlags.register.
var connUsage = `Connection (a flag beats GUARD_REDIS_PASSWORD, which beats --config, which
beats the defaults):
  --config FILE          read redis_addr, redis_username, redis_password, redis_db
                         and key_prefix from mosquitto-guard's auth_opt_NAME or
                         plugin_opt_NAME lines in this mosquitto.conf or the
                         files of its include_dir, read as Mosquitto reads them
                         (e.g. /etc/mosquitto/mosquitto.conf)
  --redis-addr ADDRS     host:port, or several separated by commas for a Redis
                         Cluster (default ` + defaultRedisAddr + `)
  --redis-username NAME  Redis ACL user
  --redis-password PASS  Redis password; better set GUARD_REDIS_PASSWORD, since
                         command lines show in ps
  --redis-db N           Redis database (default ` + config.Default("redis_db") + `)
  --key-prefix PREFIX    prefix of mosquitto-guard's keys (default ` + defaultKeyPrefix + `)
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
// Should --config load mosquitto-guard more than once (per_listener_settings)
// with settings that still differ after that, it is an error naming them:
// guardctl cannot tell which one is meant.
func (c *connFlags) resolve(getenv func(string) string) (map[string]string, error) {
	if c.config == "" {
		return c.merge(nil, getenv), nil
	}
	plugins, err := guardPlugins(c.config)
	if err != nil {
		return nil, err
	}
	vals := c.merge(plugins[0].Options, getenv)
	for _, p := range plugins[1:] {
		if !maps.Equal(vals, c.merge(p.Options, getenv)) {
			return nil, c.conflict(plugins, getenv)
		}
	}
	return vals, nil
}

// merge layers the defaults, an instance's options, the environment and the
// flags given. Values are trimmed, as the plugin trims them.
func (c *connFlags) merge(fromFile map[string]string, getenv func(string) string) map[string]string {
	vals := map[string]string{}
	for _, name := range connOptions {
		vals[name] = config.Default(name)
		if v, ok := fromFile[name]; ok {
			vals[name] = strings.TrimSpace(v)
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
	return vals
}

// conflict describes the instances whose connection options differ, never
// showing a password.
func (c *connFlags) conflict(plugins []*config.Plugin, getenv func(string) string) error {
	var each []string
	for _, p := range plugins {
		vals := c.merge(p.Options, getenv)
		desc := fmt.Sprintf("%s (%s): redis_addr %s, redis_db %s, key_prefix %q", p.Where(), p.Listener.Name,
			vals["redis_addr"], vals["redis_db"], vals["key_prefix"])
		if vals["redis_username"] != "" {
			desc += ", redis_username " + vals["redis_username"]
		}
		each = append(each, desc)
	}
	return fmt.Errorf("config %s: mosquitto-guard is loaded %d times with different Redis settings: %s; "+
		"say which with --redis-addr, --redis-db and --key-prefix instead of --config",
		c.config, len(plugins), strings.Join(each, "; "))
}

// guardPlugins returns mosquitto-guard's plugin lines in the broker config
// at path, read as Mosquitto reads it: those whose file name starts with
// mosquitto_guard, or else the only plugin line there is, if its options
// are mosquitto-guard's (see lonePlugin).
func guardPlugins(path string) ([]*config.Plugin, error) {
	conf, err := config.ReadBrokerConfig(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err) // each line names its file
	}
	var guard []*config.Plugin
	for _, p := range conf.Plugins {
		if strings.HasPrefix(filepath.Base(p.Path), "mosquitto_guard") {
			guard = append(guard, p)
		}
	}
	switch {
	case len(guard) > 0:
		return guard, nil
	case len(conf.Plugins) == 1:
		if err := lonePlugin(conf.Plugins[0]); err != nil {
			return nil, fmt.Errorf("config %s: %w", path, err)
		}
		return conf.Plugins, nil
	case len(conf.Plugins) == 0:
		return nil, fmt.Errorf("config %s: no auth_plugin or plugin line, here or in its include_dir files, to read mosquitto-guard's options from", path)
	}
	var all []string
	for _, p := range conf.Plugins {
		all = append(all, p.Path+" ("+p.Where()+")")
	}
	return nil, fmt.Errorf("config %s: none of its plugins is named mosquitto_guard*: %s", path, strings.Join(all, ", "))
}

// lonePlugin accepts the only plugin line of a config, not named
// mosquitto_guard*, as mosquitto-guard's (renamed) only when its options
// say so: at least one of mosquitto-guard's, and none it does not know.
// Another plugin alone (mosquitto_dynamic_security.so and its config_file)
// would otherwise give the defaults, 127.0.0.1:6379 and guard:, silently:
// "no bans" from the wrong Redis.
func lonePlugin(p *config.Plugin) error {
	var known, unknown []string
	for name := range p.Options {
		if config.IsOption(name) {
			known = append(known, name)
		} else {
			unknown = append(unknown, name)
		}
	}
	sort.Strings(unknown)
	why := ""
	switch {
	case len(unknown) > 0:
		why = "has options mosquitto-guard does not know (" + strings.Join(unknown, ", ") + ")"
	case len(known) == 0:
		why = "has none of mosquitto-guard's options"
	default:
		return nil
	}
	return fmt.Errorf("its only plugin, %s (%s), is not named mosquitto_guard* and %s, so it is not read as mosquitto-guard's; "+
		"give the Redis settings with --redis-addr, --redis-db and --key-prefix instead of --config", p.Path, p.Where(), why)
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

// storeOptions checks the values of connOptions as the plugin checks its
// options (config.ParseRedis) and turns them into Store options.
func storeOptions(vals map[string]string) (store.Options, keys.Builder, error) {
	cfg, err := config.ParseRedis(vals)
	if err != nil {
		return store.Options{}, keys.Builder{}, err
	}
	o := store.Options{
		Addrs: cfg.RedisAddrs, Username: cfg.RedisUsername, Password: cfg.RedisPassword,
		DB: cfg.RedisDB, Timeout: redisTimeout,
	}
	return o, keys.Builder{Prefix: cfg.KeyPrefix}, nil
}
