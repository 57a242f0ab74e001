package store

import (
	"context"
	"errors"
	"strings"

	"github.com/redis/go-redis/v9"
)

// SettingsFault is what a first answer of Redis says of the settings that
// point at it: a fault no retry mends, unlike a Redis that is down.
type SettingsFault int

// The faults CheckSettings tells apart.
const (
	// SettingsWrongPass: Redis refused the username and password
	// (WRONGPASS), or a password where it has none.
	SettingsWrongPass SettingsFault = iota + 1
	// SettingsNoAuth: Redis requires a password and none was given (NOAUTH).
	SettingsNoAuth
	// SettingsDB: the database number is not one Redis has.
	SettingsDB
	// SettingsNotCluster: several addresses (a Redis Cluster's seeds) name
	// a Redis with cluster support disabled.
	SettingsNotCluster
	// SettingsUnknownMaster: the sentinels monitor no master of that name.
	SettingsUnknownMaster
	// SettingsNotSentinel: an address given as a sentinel is no sentinel.
	SettingsNotSentinel
	// SettingsIsSentinel: the address given as Redis is a sentinel (no
	// master name set).
	SettingsIsSentinel
)

// SettingsError is a first answer of Redis that says its settings are wrong.
type SettingsError struct {
	Fault SettingsFault
	Err   error
}

func (e *SettingsError) Error() string { return "store: settings: " + e.Err.Error() }

func (e *SettingsError) Unwrap() error { return e.Err }

// CheckSettings asks Redis once within ctx, with a client of its own that
// neither retries nor redials, and returns a *SettingsError when its answer
// says the settings are wrong: a refused password, a database it does not
// have, a cluster seed list for a Redis without cluster support, a master
// name the sentinels do not monitor, a sentinel that is none, or a
// sentinel given as the Redis. Any other failure (Redis down, a timeout,
// a TLS fault, which CheckTLS tells) returns nil: the plugin's health
// probe reports it, and redis_unavailable applies until Redis answers
// (atk55: each of these let the broker start, Redis down for good, its
// lists never applied, no option named).
func (s *Store) CheckSettings(ctx context.Context) error {
	o, _ := s.probeOptions(ctx)
	rdb := redis.NewUniversalClient(o)
	defer rdb.Close()
	err := rdb.Ping(ctx).Err()
	if err == nil {
		if s.clients.o.SentinelMaster != "" || len(s.clients.o.Addrs) > 1 {
			return nil
		}
		// A sentinel answers PING too: its INFO says what it is.
		info, ierr := rdb.Info(ctx, "server").Result()
		if ierr == nil && strings.Contains(info, "redis_mode:sentinel") {
			return &SettingsError{Fault: SettingsIsSentinel, Err: errors.New(s.clients.o.Addrs[0] + " is a Redis Sentinel (INFO: redis_mode:sentinel)")}
		}
		return nil
	}
	if f := settingsFault(err, s.clients.o.SentinelMaster != ""); f != 0 {
		return &SettingsError{Fault: f, Err: err}
	}
	return nil
}

// settingsFault is the fault err, the first PING's error, names; 0 for
// none (Redis down, a timeout, anything else). sentinel: through sentinels.
func settingsFault(err error, sentinel bool) SettingsFault {
	if sentinel && errors.Is(err, redis.Nil) {
		// go-redis's failover client: SENTINEL get-master-addr-by-name
		// answered nil on every sentinel it asked.
		return SettingsUnknownMaster
	}
	var re redis.Error
	if !errors.As(err, &re) {
		return 0
	}
	msg := re.Error()
	switch {
	case strings.HasPrefix(msg, "WRONGPASS"), strings.Contains(msg, "without any password configured"):
		return SettingsWrongPass
	case strings.HasPrefix(msg, "NOAUTH"):
		return SettingsNoAuth
	case strings.Contains(msg, "DB index is out of range"):
		return SettingsDB
	case strings.Contains(msg, "cluster support disabled"):
		return SettingsNotCluster
	case sentinel && strings.Contains(strings.ToLower(msg), "unknown command") && strings.Contains(strings.ToLower(msg), "sentinel"):
		return SettingsNotSentinel
	}
	return 0
}
