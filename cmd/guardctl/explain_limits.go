package main

import (
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/ratelimit"
)

// limitOptions are the plugin options guardctl explain applies, in the
// order it names them. Each has a flag of the same name with dashes.
var limitOptions = []string{"fail_limit", "fail_window", "ban_time", "ban_max", "fail_scopes",
	"fail_ipv6_prefix", "username_fail_limit", "conflict_window", "clientid_max_bytes", "username_max_bytes"}

// limitFlag returns the flag of a limit option: fail_limit -> fail-limit.
func limitFlag(option string) string { return strings.ReplaceAll(option, "_", "-") }

// limits are the values explain applies, and where each came from.
type limits struct {
	Policy            ratelimit.Policy
	FailScopes        []keys.Scope
	FailIPv6Prefix    int
	UsernameFailLimit int
	ConflictWindow    time.Duration
	// ClientIDMaxBytes and UsernameMaxBytes: a client ID or username longer
	// is refused before anything else is checked (clientid_max_bytes,
	// username_max_bytes).
	ClientIDMaxBytes, UsernameMaxBytes int
	// Backend and Conflicts are the plugin's, read from --config (the
	// defaults without it): backend defer counts no failure, clientid_conflict
	// off tracks no connection.
	Backend   config.Backend
	Conflicts config.ConflictMode
	// From names where each option's value came from: "default", the flag
	// ("--fail-limit") or the config line ("/etc/mosquitto/conf.d/guard.conf:7").
	From map[string]string
}

// limitValues are the limit flags given, by option name.
type limitValues map[string]string

// register adds the limit flags to fs; each value is checked as the plugin
// checks the option's (config.CheckOption).
func (lv limitValues) register(fs *flag.FlagSet) {
	for _, name := range limitOptions {
		fs.Func(limitFlag(name), "the plugin's "+name, func(v string) error {
			if err := config.CheckOption(name, v); err != nil {
				var oe *config.OptionError
				if errors.As(err, &oe) {
					return fmt.Errorf("bad value %q: expected %s", v, oe.Expected)
				}
				return err
			}
			lv[name] = strings.TrimSpace(v)
			return nil
		})
	}
}

// resolveLimits returns the limits: the defaults, beaten by the plugin's
// options in the config file (when given), beaten by the flags. The
// plugin's options are checked whole, as the broker checks them (but
// password_file is not opened). If the config loads the plugin several
// times with limits that still differ after the flags, it is an error
// naming them and the flags that settle them.
func resolveLimits(configPath string, given limitValues) (limits, error) {
	if configPath == "" {
		return limitsOf(nil, given, nil)
	}
	plugins, err := guardPlugins(configPath)
	if err != nil {
		return limits{}, err
	}
	each := make([]limits, len(plugins))
	var errs config.Errors
	for i, p := range plugins {
		l, err := limitsOf(p.Options, given, p)
		var perr config.Errors
		switch {
		case errors.As(err, &perr):
			errs = append(errs, perr...)
		case err != nil:
			return limits{}, err
		}
		each[i] = l
	}
	if len(errs) > 0 {
		return limits{}, errs
	}
	var differ []string
	for _, name := range limitOptions {
		for _, l := range each[1:] {
			if l.show(name) != each[0].show(name) {
				differ = append(differ, name)
				break
			}
		}
	}
	if len(differ) == 0 {
		return each[0], nil
	}
	var descs, flags []string
	for i, p := range plugins {
		var vals []string
		for _, name := range differ {
			vals = append(vals, name+" "+each[i].show(name))
		}
		descs = append(descs, fmt.Sprintf("%s (%s): %s", p.Where(), p.Listener.Name, strings.Join(vals, ", ")))
	}
	for _, name := range differ {
		flags = append(flags, "--"+limitFlag(name))
	}
	return limits{}, fmt.Errorf("config %s: mosquitto-guard is loaded %d times with different %s: %s; say which with %s",
		configPath, len(plugins), strings.Join(differ, ", "), strings.Join(descs, "; "), strings.Join(flags, ", "))
}

// limitsOf parses one plugin instance's options (nil: none) with the flags
// given over them. An error about a value read from the file names its line.
func limitsOf(opts map[string]string, given limitValues, p *config.Plugin) (limits, error) {
	merged := map[string]string{}
	for k, v := range opts {
		merged[k] = v
	}
	for k, v := range given {
		merged[k] = v
	}
	o, err := config.ParseOffline(merged)
	if err != nil {
		if p == nil {
			return limits{}, err
		}
		over := map[string]bool{}
		for k, v := range given {
			over[k] = v != ""
		}
		return limits{}, checkWhole(p, merged, over)
	}
	l := limits{
		Policy: o.Policy, FailScopes: o.FailScopes, FailIPv6Prefix: o.FailIPv6Prefix,
		UsernameFailLimit: o.UsernameFailLimit, ConflictWindow: o.Conflicts.Window,
		ClientIDMaxBytes: o.ClientIDMaxBytes, UsernameMaxBytes: o.UsernameMaxBytes,
		Backend: o.Backend, Conflicts: o.Conflicts.Mode, From: map[string]string{},
	}
	for _, name := range limitOptions {
		_, inFile := opts[name]
		switch {
		case given[name] != "":
			l.From[name] = "--" + limitFlag(name)
		case inFile && p != nil:
			l.From[name] = p.OptionWhere(name)
		default:
			l.From[name] = "default"
		}
	}
	return l, nil
}

// show writes the value of a limit option as mosquitto.conf would.
func (l limits) show(name string) string {
	switch name {
	case "fail_limit":
		return fmt.Sprint(l.Policy.Limit)
	case "fail_window":
		return confDur(l.Policy.Window)
	case "ban_time":
		return confDur(l.Policy.BanTime)
	case "ban_max":
		return confDur(l.Policy.BanMax)
	case "fail_scopes":
		var s []string
		for _, sc := range l.FailScopes {
			s = append(s, string(sc))
		}
		return strings.Join(s, ",")
	case "fail_ipv6_prefix":
		return fmt.Sprint(l.FailIPv6Prefix)
	case "username_fail_limit":
		return fmt.Sprint(l.UsernameFailLimit)
	case "conflict_window":
		return confDur(l.ConflictWindow)
	case "clientid_max_bytes":
		return fmt.Sprint(l.ClientIDMaxBytes)
	case "username_max_bytes":
		return fmt.Sprint(l.UsernameMaxBytes)
	}
	return ""
}

// confDur writes a duration as mosquitto.conf would: whole days as "31d",
// else Go's form without its zero units ("1m", "1h30m", "90ms").
func confDur(d time.Duration) string {
	if d > 0 && d%(24*time.Hour) == 0 {
		return formatSince(d)
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
