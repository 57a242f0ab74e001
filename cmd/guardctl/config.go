package main

import (
	"errors"
	"flag"
	"fmt"
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
// With --config, each of mosquitto-guard's lines is checked as the plugin
// checks its options, an error naming the file and line of a bad value read
// there. Should the config load mosquitto-guard more than once
// (per_listener_settings) with settings that still differ after the flags,
// it is an error naming the options that differ: guardctl cannot tell
// which one is meant.
func (c *connFlags) resolve(getenv func(string) string) (map[string]string, error) {
	if c.config == "" {
		vals, _ := c.merge(nil, getenv)
		return vals, nil
	}
	plugins, err := guardPlugins(c.config)
	if err != nil {
		return nil, err
	}
	each := make([]map[string]string, len(plugins))
	var errs config.Errors
	for i, p := range plugins {
		vals, fromFile := c.merge(p.Options, getenv)
		errs = append(errs, checkInstance(p, vals, fromFile)...)
		each[i] = vals
	}
	if len(errs) > 0 {
		return nil, errs
	}
	if differ := differing(each); len(differ) > 0 {
		return nil, c.conflict(plugins, each, differ)
	}
	return each[0], nil
}

// merge layers the defaults, an instance's options, the environment and the
// flags given. Values are trimmed, as the plugin trims them. fromFile holds
// the names whose value is the instance's own.
func (c *connFlags) merge(opts map[string]string, getenv func(string) string) (vals map[string]string, fromFile map[string]bool) {
	vals, fromFile = map[string]string{}, map[string]bool{}
	for _, name := range connOptions {
		vals[name] = config.Default(name)
		if v, ok := opts[name]; ok {
			vals[name], fromFile[name] = strings.TrimSpace(v), true
		}
	}
	if p := getenv(passwordEnv); p != "" {
		vals["redis_password"], fromFile["redis_password"] = p, false
	}
	c.fs.Visit(func(f *flag.Flag) {
		if opt, ok := flagOption[f.Name]; ok {
			vals[opt], fromFile[opt] = f.Value.String(), false
		}
	})
	return vals, fromFile
}

// flagOption maps each connection flag to the option it sets.
var flagOption = map[string]string{
	"redis-addr": "redis_addr", "redis-username": "redis_username", "redis-password": "redis_password",
	"redis-db": "redis_db", "key-prefix": "key_prefix",
}

// checkInstance checks an instance's merged values as the plugin does; an
// error about a value read from the file starts with that option line's
// file:line, so that the line to fix is named.
//
// An option the plugin does not know is an error too, as it is to the broker
// at start: a misspelt redis_addr must not send guardctl to the default
// Redis while the broker refuses to start, or reads another line.
func checkInstance(p *config.Plugin, vals map[string]string, fromFile map[string]bool) config.Errors {
	var unknown config.Errors
	for name := range p.Options {
		if !config.IsOption(name) {
			unknown = append(unknown, fmt.Errorf("%s: %w", p.OptionWhere(name), config.UnknownOption(name)))
		}
	}
	sort.Slice(unknown, func(i, j int) bool { return unknown[i].Error() < unknown[j].Error() })
	_, err := config.ParseRedis(vals)
	var errs config.Errors
	if !errors.As(err, &errs) {
		return unknown
	}
	for i, e := range errs {
		var oe *config.OptionError
		if errors.As(e, &oe) && fromFile[oe.Option] {
			errs[i] = fmt.Errorf("%s: %w", p.OptionWhere(oe.Option), e)
		}
	}
	return append(unknown, errs...)
}

// differing returns the names of the options whose values are not the same
// in every instance, in connOptions' order.
func differing(each []map[string]string) []string {
	var names []string
	for _, name := range connOptions {
		for _, vals := range each[1:] {
			if vals[name] != each[0][name] {
				names = append(names, name)
				break
			}
		}
	}
	return names
}

// conflict describes the instances whose connection options differ: which
// options, each instance's values of those but never a password, and the
// flags that settle them.
func (c *connFlags) conflict(plugins []*config.Plugin, each []map[string]string, differ []string) error {
	var descs, flags []string
	for i, p := range plugins {
		desc := fmt.Sprintf("%s (%s)", p.Where(), p.Listener.Name)
		var shown []string
		for _, name := range differ {
			if name != "redis_password" {
				shown = append(shown, name+" "+config.ShownValue(name, each[i][name]))
			}
		}
		if len(shown) > 0 {
			desc += ": " + strings.Join(shown, ", ")
		}
		descs = append(descs, desc)
	}
	for _, name := range differ {
		flag := "--" + strings.ReplaceAll(name, "_", "-")
		if name == "redis_password" {
			flag += " or " + passwordEnv
		}
		flags = append(flags, flag)
	}
	return fmt.Errorf("config %s: mosquitto-guard is loaded %d times with different %s: %s; "+
		"say which with %s, which beat --config",
		c.config, len(plugins), strings.Join(differ, ", "), strings.Join(descs, "; "), strings.Join(flags, ", "))
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
