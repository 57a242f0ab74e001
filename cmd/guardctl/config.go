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

// The Redis timeout, and the environment variables that can hold the
// passwords.
const (
	redisTimeout        = 5 * time.Second
	passwordEnv         = "GUARD_REDIS_PASSWORD"
	sentinelPasswordEnv = "GUARD_REDIS_SENTINEL_PASSWORD"
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
var connUsage = `Connection (a flag beats GUARD_REDIS_PASSWORD and GUARD_REDIS_SENTINEL_PASSWORD,
which beat --config, which beats the defaults):
  --config FILE          read redis_addr, redis_username, redis_password, redis_db,
                         key_prefix and the TLS and Sentinel options below from
                         mosquitto-guard's auth_opt_NAME or plugin_opt_NAME
                         lines in this mosquitto.conf or the files of its
                         include_dir, read as Mosquitto reads them
                         (e.g. /etc/mosquitto/mosquitto.conf)
  --redis-addr ADDRS     host:port, or several separated by commas for a Redis
                         Cluster or the sentinels (default ` + defaultRedisAddr + `)
  --redis-username NAME  Redis ACL user
  --redis-password PASS  Redis password; better set GUARD_REDIS_PASSWORD, since
                         command lines show in ps
  --redis-db N           Redis database (default ` + config.Default("redis_db") + `)
  --key-prefix PREFIX    prefix of mosquitto-guard's keys (default ` + defaultKeyPrefix + `)
  --redis-tls on|off     speak TLS to Redis (and to the sentinels) (default off)
  --redis-tls-ca FILE    PEM file of the CAs that sign Redis's certificate
                         (default: the system's)
  --redis-tls-cert FILE, --redis-tls-key FILE
                         a client certificate and its key, for mutual TLS
  --redis-tls-server-name NAME
                         the name checked in Redis's certificate (default: the
                         host dialled)
  --redis-sentinel-master NAME
                         follow the master the sentinels monitor as NAME;
                         --redis-addr then lists the sentinels
  --redis-sentinel-username NAME, --redis-sentinel-password PASS
                         the sentinels' own credentials; better set
                         ` + sentinelPasswordEnv + ` for the password
Each is the plugin option of the same name with _ for -; --config reads them.
`

// connFlags are the connection flags shared by the subcommands.
type connFlags struct {
	fs                                       *flag.FlagSet
	config, addr, username, password, prefix string
	db                                       int
	managed                                  map[string]*string // TLS and Sentinel flags, by option name
}

// managedFlags are the TLS and Sentinel options, each a flag named as the
// option with - for _, taking its value as written in mosquitto.conf.
var managedFlags = []struct{ option, usage string }{
	{"redis_tls", "speak TLS to Redis: on or off"},
	{"redis_tls_ca", "PEM file of the CAs that sign Redis's certificate"},
	{"redis_tls_cert", "client certificate (PEM), for mutual TLS"},
	{"redis_tls_key", "the client certificate's key (PEM)"},
	{"redis_tls_server_name", "name checked in Redis's certificate"},
	{"redis_sentinel_master", "the Sentinel master's name; --redis-addr lists the sentinels"},
	{"redis_sentinel_username", "the sentinels' ACL user"},
	{"redis_sentinel_password", "the sentinels' password (or env " + sentinelPasswordEnv + ")"},
}

// register adds the connection flags to fs.
func (c *connFlags) register(fs *flag.FlagSet) {
	c.fs = fs
	fs.StringVar(&c.config, "config", "", "mosquitto.conf to read the plugin's options from")
	fs.StringVar(&c.addr, "redis-addr", defaultRedisAddr, "Redis host:port, comma-separated for a cluster or the sentinels")
	fs.StringVar(&c.username, "redis-username", "", "Redis ACL user")
	fs.StringVar(&c.password, "redis-password", "", "Redis password (or env "+passwordEnv+")")
	fs.IntVar(&c.db, "redis-db", 0, "Redis database")
	fs.StringVar(&c.prefix, "key-prefix", defaultKeyPrefix, "key prefix")
	c.managed = map[string]*string{}
	for _, f := range managedFlags {
		c.managed[f.option] = fs.String(flagName(f.option), config.Default(f.option), f.usage)
	}
}

// flagName is the flag of a connection option: redis_tls_ca, --redis-tls-ca.
func flagName(option string) string { return strings.ReplaceAll(option, "_", "-") }

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
	for option, env := range passwordEnvs {
		if p := getenv(env); p != "" {
			vals[option], fromFile[option] = p, false
		}
	}
	c.fs.Visit(func(f *flag.Flag) {
		if opt, ok := flagOption[f.Name]; ok {
			vals[opt], fromFile[opt] = f.Value.String(), false
		}
	})
	return vals, fromFile
}

// flagOption maps each connection flag to the option it sets.
var flagOption = func() map[string]string {
	m := map[string]string{
		"redis-addr": "redis_addr", "redis-username": "redis_username", "redis-password": "redis_password",
		"redis-db": "redis_db", "key-prefix": "key_prefix",
	}
	for _, f := range managedFlags {
		m[flagName(f.option)] = f.option
	}
	return m
}()

// passwordEnvs are the environment variables that may hold a password,
// by option: a password on a command line shows in ps.
var passwordEnvs = map[string]string{"redis_password": passwordEnv, "redis_sentinel_password": sentinelPasswordEnv}

// checkInstance checks an instance's options whole, with the values given
// on the command line or in the environment over them (the connection
// values merged: vals; fromFile, those read from the file), as the broker
// checks them at start (checkWhole).
func checkInstance(p *config.Plugin, vals map[string]string, fromFile map[string]bool) config.Errors {
	merged := map[string]string{}
	for k, v := range p.Options {
		merged[k] = v
	}
	given := map[string]bool{}
	for k, v := range vals {
		if !fromFile[k] {
			merged[k] = v
			_, inFile := p.Options[k]
			given[k] = inFile
		}
	}
	return checkWhole(p, merged, given)
}

// checkWhole checks merged, an instance's options with the values given on
// the command line or in the environment over them (given: the names of
// the file's options so replaced), as the broker checks them at start
// (config.ParseOffline: no file is opened). Every error about a value read
// from the file, and every option the plugin does not know, starts with
// that line's file:line, so that the line to fix is named: every command
// refuses what the broker refuses, the same way. A misspelt redis_addr must
// not send guardctl to the default Redis while the broker refuses to start.
func checkWhole(p *config.Plugin, merged map[string]string, given map[string]bool) config.Errors {
	_, err := config.ParseOffline(merged)
	var errs config.Errors
	if !errors.As(err, &errs) {
		if err != nil {
			return config.Errors{err}
		}
		return nil
	}
	unknown := map[string]string{} // an unknown option's error text: its name
	for name := range p.Options {
		if !config.IsOption(name) {
			unknown[config.UnknownOption(name).Error()] = name
		}
	}
	for i, e := range errs {
		if name, ok := unknown[e.Error()]; ok {
			errs[i] = fmt.Errorf("%s: %w", p.OptionWhere(name), e)
			continue
		}
		var oe *config.OptionError
		if errors.As(e, &oe) && !given[oe.Option] {
			if _, inFile := p.Options[oe.Option]; inFile {
				errs[i] = fmt.Errorf("%s: %w", p.OptionWhere(oe.Option), e)
			}
		}
	}
	return errs
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
			if passwordEnvs[name] == "" {
				shown = append(shown, name+" "+config.ShownValue(name, each[i][name]))
			}
		}
		if len(shown) > 0 {
			desc += ": " + strings.Join(shown, ", ")
		}
		descs = append(descs, desc)
	}
	for _, name := range differ {
		flag := "--" + flagName(name)
		if env := passwordEnvs[name]; env != "" {
			flag += " or " + env
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
		} else if head, cut := config.NameHead(name); cut {
			unknown = append(unknown, head+"...") // what follows a tab may be a password (atk61)
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
// the Redis (its addresses, or the Sentinel master and its sentinels) for
// error messages.
func (c *connFlags) store(getenv func(string) string) (st *store.Store, addrs string, err error) {
	vals, err := c.resolve(getenv)
	if err != nil {
		return nil, "", err
	}
	cfg, err := config.ParseRedis(vals)
	if err != nil {
		return nil, "", err
	}
	o, kb := storeOptionsOf(cfg)
	return store.New(o, kb), cfg.RedisWhere(), nil
}

// storeOptions checks the values of connOptions as the plugin checks its
// options (config.ParseRedis) and turns them into Store options.
func storeOptions(vals map[string]string) (store.Options, keys.Builder, error) {
	cfg, err := config.ParseRedis(vals)
	if err != nil {
		return store.Options{}, keys.Builder{}, err
	}
	o, kb := storeOptionsOf(cfg)
	return o, kb, nil
}

// storeOptionsOf are the plugin's store options for cfg, with guardctl's
// timeout: an operator's command may wait longer than a CONNECT.
func storeOptionsOf(cfg config.Options) (store.Options, keys.Builder) {
	o := cfg.StoreOptions()
	o.Timeout = redisTimeout
	return o, keys.Builder{Prefix: cfg.KeyPrefix}
}
