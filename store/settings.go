package store

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/internal/rediserr"
)

// SettingsFault is what a first answer of Redis says of the settings that
// point at it: a fault no retry mends, unlike a Redis that is down.
type SettingsFault int

// The faults CheckSettings tells apart.
const (
	// SettingsWrongPass: Redis refused the username and password
	// (WRONGPASS; Redis 5: invalid password).
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
	// SettingsSentinelsAsCluster: several addresses, taken as a Redis
	// Cluster's seeds, that know no CLUSTER command: sentinels, without a
	// master name set.
	SettingsSentinelsAsCluster
	// SettingsReplica: the one address is a read-only replica.
	SettingsReplica
	// SettingsClusterNode: the one address is a node of a Redis Cluster,
	// which needs two or more seeds to be used as one.
	SettingsClusterNode
	// SettingsNoAuthCommand: a password is set and Redis knows no AUTH
	// command (renamed or disabled).
	SettingsNoAuthCommand
	// SettingsProtected: Redis refuses this host (protected mode).
	SettingsProtected
	// SettingsNoSelect: the user may not SELECT the database.
	SettingsNoSelect
	// SettingsSelectRefused: Redis selects no database but 0 (cluster
	// mode, or SELECT renamed away).
	SettingsSelectRefused
	// SettingsKeyPerm: the user may not read (or, where the plugin writes,
	// write) the keys under the prefix, or redis_rate's under "rate:" and
	// the prefix.
	SettingsKeyPerm
	// SettingsNoPing: the user may not run PING, which the health probe
	// asks every 200 ms: Redis would read as down for good.
	SettingsNoPing
	// SettingsWantsTLS: redis_tls is off and the address speaks only TLS:
	// it closed the plain-text connection and answers a TLS handshake.
	SettingsWantsTLS
	// SettingsNoPerm: the user may not run a command the plugin needs
	// (CLUSTER SLOTS, SENTINEL get-master-addr-by-name, EVAL, ...).
	SettingsNoPerm
	// SettingsNoScripting: Redis knows no EVAL or EVALSHA (renamed away).
	SettingsNoScripting
	// SettingsNoPingCommand: Redis knows no PING (renamed away).
	SettingsNoPingCommand
	// SettingsNoCommand: Redis knows no command the plugin runs (renamed
	// or disabled).
	SettingsNoCommand
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
// name the sentinels do not monitor, a sentinel that is none, a sentinel,
// a replica or one node of a cluster of several shards given as the Redis,
// a user that may not run the commands the plugin needs or read and write
// its keys, a Redis without PING or scripting, or a Redis that speaks only
// TLS asked without it (checkAnswering). Any other failure (Redis down, a timeout, a TLS
// fault, which CheckTLS tells) returns nil: the plugin's health
// probe reports it, and redis_unavailable applies until Redis answers
// (atk55: each of these let the broker start, Redis down for good, its
// lists never applied, no option named).
func (s *Store) CheckSettings(ctx context.Context) error {
	return s.CheckSettingsNeeds(ctx, SettingsNeeds{Counts: true, Known: true, Tracking: true})
}

// CheckSettingsFor is CheckSettings for a configuration with conflict
// tracking on and the default username_fail_limit; counts says whether the
// plugin counts failures (redis_rate's keys under "rate:" + key_prefix,
// its script's TIME, known sources): without (backend defer), those are
// not asked for (atk61: a user with ~guard:* only was refused for a key the
// plugin never writes). The plugin asks CheckSettingsNeeds.
func (s *Store) CheckSettingsFor(ctx context.Context, counts bool) error {
	return s.CheckSettingsNeeds(ctx, SettingsNeeds{Counts: counts, Known: counts, Tracking: true})
}

// CheckSettingsNeeds is CheckSettings, asking rights for needs only.
func (s *Store) CheckSettingsNeeds(ctx context.Context, needs SettingsNeeds) error {
	o, timeout := s.probeOptions(ctx)
	// Every address dialled, for the TLS probe below.
	var dialled dialLog
	if o.TLSConfig == nil {
		o.Dialer = dialled.wrap((&net.Dialer{Timeout: timeout}).DialContext)
	}
	rdb := redis.NewUniversalClient(o)
	defer rdb.Close()
	err := rdb.Ping(ctx).Err()
	if err == nil {
		return s.checkAnswering(ctx, rdb, needs)
	}
	if f := settingsFault(err, s.clients.o.SentinelMaster != "", len(s.clients.o.Addrs) > 1); f != 0 {
		return &SettingsError{Fault: f, Err: err}
	}
	if o.TLSConfig == nil && closedByPeer(err) {
		// A Redis that speaks only TLS closes a plain-text connection
		// without a word (atk57: the broker started, Redis down for good).
		// A closed connection says nothing more (a proxy, a restart): only
		// an address that then answers a TLS handshake is a fault.
		if a, herr := speaksTLS(ctx, dialled.list()); a != "" {
			return &SettingsError{Fault: SettingsWantsTLS,
				Err: fmt.Errorf("%s closed a plain-text connection (%v) and answered a TLS handshake (%v)", a, err, herr)}
		}
	}
	return nil
}

// checkAnswering goes on with a Redis that answered PING: what it is (a
// sentinel, a replica, one node of a cluster of several shards, given as
// the one Redis), and whether this user may read and write the plugin's
// keys and run its scripts. 0 faults: nil.
func (s *Store) checkAnswering(ctx context.Context, rdb redis.UniversalClient, needs SettingsNeeds) error {
	single := s.clients.o.SentinelMaster == "" && len(s.clients.o.Addrs) == 1
	sweep := false // one GET in every slot the plugin's keys can take
	if single {
		// The default INFO (server, replication, cluster, ...) says what
		// answered, first: a cluster's replica answers MOVED too (atk60).
		// A user without INFO (or CLUSTER) rights is asked its keys in
		// every slot instead (atk57, atk60).
		addr := s.clients.o.Addrs[0]
		info, ierr := rdb.Info(ctx).Result()
		switch {
		case ierr != nil && timedOut(ctx, ierr):
			return nil // no answer in time: taken as down, not wrong (atk61: the sweep overran the bound)
		case ierr != nil:
			// Refused, or the connection closed (a proxy that knows no
			// INFO, as twemproxy closes it: atk63, a user with ~other:*
			// started the broker): the keys in every slot decide.
			sweep = true
		case strings.Contains(info, "redis_mode:sentinel"):
			return &SettingsError{Fault: SettingsIsSentinel, Err: errors.New(addr + " is a Redis Sentinel (INFO: redis_mode:sentinel)")}
		case strings.Contains(info, "\nrole:slave"):
			return &SettingsError{Fault: SettingsReplica, Err: errors.New(addr + " is a read-only replica (INFO: role:slave)")}
		case strings.Contains(info, "cluster_enabled:1") && len(slotKeys(s.kb.Prefix, slotKeyCount)) == 1:
			// A key_prefix with a hash tag puts every key of the plugin in
			// one slot: a node that serves it serves them all, whatever the
			// cluster's size (atk60: the answer depended on the user's
			// rights). The GETs below ask that slot.
		case strings.Contains(info, "cluster_enabled:1"):
			// A cluster of one shard (a managed Redis's "cluster mode" with
			// one shard) serves every key at this one address: it works, if
			// this node holds the slots (the GETs below).
			ci, cerr := rdb.ClusterInfo(ctx).Result()
			if cerr != nil {
				sweep = true
			} else if !strings.Contains(ci, "cluster_size:1\r") && !strings.Contains(ci, "cluster_size:1\n") {
				return &SettingsError{Fault: SettingsClusterNode, Err: errors.New(addr + " is a node of a Redis Cluster of several shards (INFO: cluster_enabled:1; CLUSTER INFO: " + clusterSize(ci) + ")")}
			}
		}
	}
	if f, err := s.checkKeys(ctx, rdb, single, slotKeys(s.kb.Prefix, slotKeyCount)); f != 0 {
		return &SettingsError{Fault: f, Err: err}
	}
	if f, err := s.checkWrite(ctx, rdb, single, needs); f != 0 {
		return &SettingsError{Fault: f, Err: err}
	}
	if sweep && ctx.Err() == nil {
		if f, err := s.checkKeys(ctx, rdb, single, slotKeysWithin(ctx, s.kb.Prefix, clusterSlots)); f != 0 {
			return &SettingsError{Fault: f, Err: err}
		}
	}
	return nil
}

// sweepBatch is how many GETs of the sweep go in one pipeline.
const sweepBatch = 2048

// checkKeys reads keys under the prefix (slotKeys's), sweepBatch to a
// pipelined round trip: a user whose ACL key patterns leave the prefix out
// reads nothing (atk57: ~other:* waited the first load's 10 s, then let a
// banned IP in); and with single (one address, no sentinels), a node that
// does not serve every slot (one of a Redis Cluster of several shards, a
// cluster's replica) answers MOVED for the keys of the others, which the
// plugin's client does not follow. Only a refusal of a key counts, not of
// the command (Redis 7.0 "... to access one of the keys ...", 7.2 "... to
// access a key"), and a node's refusal of the connection itself (a
// cluster's node that takes another password); 0 for no fault.
func (s *Store) checkKeys(ctx context.Context, rdb redis.UniversalClient, single bool, keys []string) (SettingsFault, error) {
	for len(keys) > 0 && ctx.Err() == nil {
		n := min(len(keys), sweepBatch)
		pipe := rdb.Pipeline()
		for _, k := range keys[:n] {
			pipe.Get(ctx, k)
		}
		keys = keys[n:]
		cmds, _ := pipe.Exec(ctx)
		for _, c := range cmds {
			var re redis.Error
			if !errors.As(c.Err(), &re) {
				continue
			}
			msg := re.Error()
			switch {
			case keyRefusal(msg):
				return SettingsKeyPerm, c.Err()
			case single && (strings.HasPrefix(msg, "MOVED ") || strings.HasPrefix(msg, "ASK ")):
				return SettingsClusterNode, fmt.Errorf("%s does not serve every key: a node of a Redis Cluster of several shards, or a cluster's replica (GET %s: %w)", s.clients.o.Addrs[0], c.Args()[1], c.Err())
			}
			// A node that refused the connection's set-up (WRONGPASS after
			// a password changed on some nodes of a cluster, NOAUTH): a
			// cluster's pipeline carries it on that node's commands only,
			// and the PING before met another node. A refused command is
			// checkWrite's to name. Never read as sentinels' answers:
			// settingsFault takes a redis.Nil from sentinels for a master
			// they do not monitor, where a GET's is a key not there
			// (afb0dbb stopped every broker behind sentinels so).
			if errors.Is(c.Err(), redis.Nil) {
				continue
			}
			if f := settingsFault(c.Err(), false, len(s.clients.o.Addrs) > 1 && s.clients.o.SentinelMaster == ""); f != 0 && f != SettingsNoPerm {
				return f, fmt.Errorf("%s (GET %s): %w", nodeFor(ctx, rdb, c.Args()[1]), c.Args()[1], c.Err())
			}
		}
	}
	return 0, nil // done, or Redis too slow to tell: taken as down, not wrong
}

// nodeFor names the Redis that serves key, for a line: a cluster's node
// by its address (atk74: the option's value lists them all).
func nodeFor(ctx context.Context, rdb redis.UniversalClient, key any) string {
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		if k, ok := key.(string); ok {
			if n, err := cc.MasterForKey(ctx, k); err == nil {
				return "the node at " + n.Options().Addr
			}
		}
		return "a node of the cluster"
	}
	return "Redis"
}

// writeProbe is what the plugin's scripts do, once: a write under a
// prefix, from Lua (EVALSHA, then EVAL when Redis has not the script).
// SettingsNeeds says which of the plugin's uses of Redis its
// configuration makes, for the start check to ask rights for those only
// (atk61, atk64: users refused for keys or commands the plugin would never
// use with their configuration).
type SettingsNeeds struct {
	// Counts: failures counted (every backend but defer): redis_rate's
	// keys under "rate:" + key_prefix and its script, the offence counts,
	// the automatic bans and the throttles.
	Counts bool
	// Known: known sources (failures counted, username_fail_limit above
	// 0): a sorted set per username.
	Known bool
	// Tracking: client-ID conflict tracking (clientid_conflict not off):
	// hashes, sets, sorted sets, a stream, scripts.
	Tracking bool
}

// writes says whether the plugin writes under key_prefix (beyond the
// replica's flush mark, whose refusal it logs and lives with) and runs
// scripts: without (backend defer, clientid_conflict off) it only reads,
// and a read-only user is enough (atk64).
func (n SettingsNeeds) writes() bool { return n.Counts || n.Tracking }

// probeCommands are the commands the plugin runs, for needs, on keys under
// key_prefix, written for k (a key under key_prefix) and rk (redis_rate's
// key for it): each is asked on its own, so that Redis's ACL, which checks a
// user's rights command by command, refuses exactly those this user may
// not run, naming the command (atk63: a user without PEXPIRE, ZADD, HSET,
// XADD or INCR started, its automatic bans never lengthened, its findings
// never written; atk64: ZRANGE BYSCORE, SSCAN, SCAN). A refused command
// leaves nothing: the commands are sent in one pipeline, which Redis runs
// to its end whatever fails, and they end with the keys' DEL (atk64: a
// script stopped at a refused command left a hash for ever).
// The lists' reads run for every configuration: SCAN (the replica's load,
// the redis backend's users), GET and PTTL.
func probeCommands(needs SettingsNeeds, k, rk string) [][]any {
	cmds := [][]any{{"scan", "0", "match", k, "count", "10"}, {"get", k}, {"pttl", k}}
	if !needs.writes() {
		return cmds
	}
	cmds = append(cmds, []any{"pexpire", k, "10000"}, []any{"del", k})
	if needs.Counts {
		// The automatic bans and throttles (a script: GET, TIME, SET ... PX,
		// PTTL; the throttle's claim a SET ... NX PX), the offence
		// counts (INCR, PEXPIRE from a script); redis_rate's script: TIME,
		// then a read and a write of its key (atk61: a user without +time
		// passed a SET alone).
		cmds = append(cmds, []any{"set", k, "1", "px", "10000"}, []any{"incr", k}, []any{"pexpire", k, "10000"},
			[]any{"time"}, []any{"get", rk}, []any{"set", rk, "1", "px", "10000"}, []any{"del", rk})
	}
	if needs.Known {
		cmds = append(cmds, []any{"del", k},
			[]any{"zadd", k, "1", "m"}, []any{"pexpire", k, "10000"}, []any{"zremrangebyrank", k, "0", "-2"},
			[]any{"zrange", k, "-inf", "+inf", "byscore", "limit", "0", "1"})
	}
	if needs.Tracking {
		cmds = append(cmds, []any{"del", k},
			[]any{"hset", k, "f", "1"}, []any{"pexpire", k, "10000"}, []any{"hincrby", k, "f", "1"}, []any{"hget", k, "f"},
			[]any{"hmget", k, "f"}, []any{"hgetall", k}, []any{"hexists", k, "f"}, []any{"hdel", k, "f"},
			[]any{"sadd", k, "m"}, []any{"pexpire", k, "10000"}, []any{"sscan", k, "0"}, []any{"srem", k, "m"},
			[]any{"zadd", k, "1", "m"}, []any{"pexpire", k, "10000"}, []any{"zscore", k, "m"},
			[]any{"zrangebyscore", k, "-inf", "+inf"}, []any{"zcard", k}, []any{"zremrangebyscore", k, "-inf", "(0"}, []any{"zrem", k, "m"},
			[]any{"xadd", k, "maxlen", "~", "1", "*", "f", "1"}, []any{"pexpire", k, "10000"},
			[]any{"del", k}, []any{"hsetnx", k, "f", "1"}, []any{"hlen", k}, []any{"pexpire", k, "10000"})
	}
	// The plugin's scripts run by EVALSHA, and by EVAL when Redis's cache
	// lost them (a restart, a failover): a user needs both, asked each on
	// its own (atk65: with the probe's script cached, a user without EVAL
	// passed, then after a restart every failure count was refused).
	cmds = append(cmds, []any{"eval", scriptProbeSrc, "1", k}, []any{"evalsha", scriptProbe.Hash(), "1", k})
	// After the DEL, in the same pipeline, a 1 ms expiry by commands this
	// configuration needs anyway (no refusal in Redis's ACL LOG of a user
	// that passes), SET only where the key is there (XX: after a DEL that
	// worked, nothing is made). For a user refused DEL it puts back what
	// was left even where the pipeline's answer came after the check's
	// bound, which passes the start as Redis down, and no second round
	// trip could be sent (atk68: a user refused DEL and PEXPIRE, Redis slow
	// to answer, kept the probe's keys their 10 s).
	cmds = append(cmds, []any{"del", k}, []any{"pexpire", k, "1"})
	if needs.Counts {
		// redis_rate's key: its script runs SET and GET, Reset a DEL, never
		// PEXPIRE (atk69: a user whose selector gives rate: keys only
		// those was refused at start by a PEXPIRE here).
		cmds = append(cmds, []any{"set", k, "1", "px", "1", "xx"}, []any{"set", rk, "1", "px", "1", "xx"})
	}
	return cmds
}

// cleanupNeeded says whether a DEL or PEXPIRE of the probe failed, which
// may have left a key behind.
func cleanupNeeded(cmds [][]any, replies []*redis.Cmd) bool {
	for i, r := range replies {
		if name := cmds[i][0]; (name == "del" || name == "pexpire") && r.Err() != nil {
			return true
		}
	}
	return false
}

// probeCleanup puts back what a refused DEL or PEXPIRE of the probe may
// have left (atk65: a user without both left a stream for ever): SET
// replaces a key of any type, and the key then lives 1 ms; where SET is
// refused too, PEXPIRE gives what is there 1 ms (atk67: a user refused DEL
// and SET kept the probe's key its 10 s). Their replies are not asked: a
// user may lack SET (conflict tracking alone runs none). A user refused
// DEL, PEXPIRE and SET alike keeps what it wrote.
func probeCleanup(needs SettingsNeeds, k, rk string) [][]any {
	cmds := [][]any{{"del", k}, {"set", k, "1", "px", "1"}, {"pexpire", k, "1"}}
	if needs.Counts {
		cmds = append(cmds, []any{"del", rk}, []any{"set", rk, "1", "px", "1"}, []any{"pexpire", rk, "1"})
	}
	return cmds
}

// scriptProbe is run by EVAL and by EVALSHA, as the plugin's scripts are,
// reading its key: a user that may not run either, or a Redis with
// scripting renamed away.
const scriptProbeSrc = `return redis.call('PTTL', KEYS[1])`

var scriptProbe = redis.NewScript(scriptProbeSrc)

// checkWrite asks, for needs, the commands of probeCommands in one
// pipeline and, where the plugin writes, one script, on one key under
// key_prefix and redis_rate's under "rate:" + key_prefix (deleted after): with
// single a read-only replica (READONLY; through sentinels it is a
// failover's moment, which passes by itself: atk61), a user whose key
// patterns leave either key out or give only read access (NOPERM for a
// key), a user refused a command, EVAL or EVALSHA (NOPERM), a Redis with
// one of them renamed away, and with single a MOVED, stop the start
// (atk59, atk63: each started the broker, its failures counted on this
// broker only, no ban written or lengthened, no finding written). Other
// replies (OOM, BUSY, LOADING, NOREPLICAS, a syntax error of an older
// Redis) pass by themselves: 0.
//
// On a Redis Cluster each master is asked too, on a key in its own slots
// (masterProbeKeys): the two keys above fall on two nodes at most, and a
// third node whose ACL refused the user HSET or gave it read-only keys
// started the broker, its share of the plugin's keys unwritable for good
// (atk75).
func (s *Store) checkWrite(ctx context.Context, rdb redis.UniversalClient, single bool, needs SettingsNeeds) (SettingsFault, error) {
	k, rk := s.kb.Prefix+"settings-check", "rate:"+s.kb.Prefix+"settings-check"
	if f, err := s.checkWriteOn(ctx, rdb, single, needs, k, rk); f != 0 {
		return f, err
	}
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		for _, k := range s.masterProbeKeys(ctx, cc) {
			if f, err := s.checkWriteOn(ctx, rdb, single, needs, k, "rate:"+k); f != 0 {
				return f, err
			}
		}
	}
	return 0, nil
}

// masterProbeKeys are keys under the prefix, one in the slots of each
// master of cc that holds none of the default probe's keys (slotKeys'
// form, settings-check:{n}, whose "rate:" twin shares its slot). None
// where the cluster's slots cannot be read (taken as no fault: the
// cluster client needs CLUSTER SLOTS itself, and its refusal is named
// before), and none for a master the prefix's hash tag never reaches.
func (s *Store) masterProbeKeys(ctx context.Context, cc *redis.ClusterClient) []string {
	//lint:ignore SA1019 CLUSTER SHARDS is Redis 7.0's; Redis 6 has CLUSTER SLOTS only, which go-redis's cluster client reads itself
	slots, err := cc.ClusterSlots(ctx).Result()
	if err != nil {
		return nil
	}
	asked := map[string]bool{}
	for _, k := range []string{s.kb.Prefix + "settings-check", "rate:" + s.kb.Prefix + "settings-check"} {
		for _, r := range slots {
			if sl := keySlot(k); sl >= r.Start && sl <= r.End && len(r.Nodes) > 0 {
				asked[r.Nodes[0].Addr] = true
			}
		}
	}
	var out []string
	for _, r := range slots {
		if len(r.Nodes) == 0 || asked[r.Nodes[0].Addr] {
			continue
		}
		for n := 0; n < 24*slotKeyCount; n++ {
			k := s.kb.Prefix + "settings-check:{" + strconv.Itoa(n) + "}"
			if sl := keySlot(k); sl >= r.Start && sl <= r.End {
				asked[r.Nodes[0].Addr] = true
				out = append(out, k)
				break
			}
		}
	}
	return out
}

// checkWriteOn is checkWrite's probe on the keys k and rk.
func (s *Store) checkWriteOn(ctx context.Context, rdb redis.UniversalClient, single bool, needs SettingsNeeds, k, rk string) (SettingsFault, error) {
	pipe := rdb.Pipeline()
	cmds := probeCommands(needs, k, rk)
	replies := make([]*redis.Cmd, len(cmds))
	for i, c := range cmds {
		replies[i] = pipe.Do(ctx, c...)
	}
	_, _ = pipe.Exec(ctx) // each reply is read below
	if cleanupNeeded(cmds, replies) {
		// A second round trip, only then: a user without SET (conflict
		// tracking alone runs none) would have every start logged as a
		// refusal in Redis's ACL LOG (atk66).
		clean := rdb.Pipeline()
		for _, c := range probeCleanup(needs, k, rk) {
			clean.Do(ctx, c...)
		}
		_, _ = clean.Exec(ctx) // its replies are not asked
	}
	for i, r := range replies {
		if f, err := s.probeFault(r.Err(), single, strings.ToUpper(cmds[i][0].(string)), cmdKey(cmds[i])); f != 0 {
			return f, err
		}
	}
	return 0, nil
}

// cmdKey is the key a probe command names ("" for SCAN and TIME).
func cmdKey(c []any) string {
	switch c[0] {
	case "scan", "time":
		return ""
	case "eval", "evalsha":
		return c[3].(string)
	}
	return c[1].(string)
}

// probeFault is the fault Redis's reply err to the probe command cmd (on
// key) shows, 0 for none.
func (s *Store) probeFault(err error, single bool, cmd, key string) (SettingsFault, error) {
	var re redis.Error
	if err == nil || !errors.As(err, &re) {
		return 0, nil
	}
	msg := re.Error()
	low := strings.ToLower(msg)
	on := cmd
	if key != "" {
		on += " " + key
	}
	switch {
	case single && strings.HasPrefix(msg, "READONLY"):
		return SettingsReplica, fmt.Errorf("%s answered %w", on, err)
	case keyRefusal(msg):
		return SettingsKeyPerm, fmt.Errorf("%s: %w", on, err)
	case strings.HasPrefix(msg, "NOPERM"), strings.Contains(low, "can't run this command"):
		// The second: a command a script calls (Redis 7.0: "ERR The user
		// executing the script can't run this command or subcommand").
		return SettingsNoPerm, fmt.Errorf("%s: %w", on, err)
	case unknownCommand(low, "eval") || unknownCommand(low, "evalsha"):
		return SettingsNoScripting, err
	case strings.Contains(low, "unknown command"):
		return SettingsNoCommand, fmt.Errorf("%s: %w", on, err)
	case single && (strings.HasPrefix(msg, "MOVED ") || strings.HasPrefix(msg, "ASK ")):
		return SettingsClusterNode, fmt.Errorf("%s does not serve every key: a node of a Redis Cluster of several shards, or a cluster's replica (%s: %w)", s.clients.o.Addrs[0], on, err)
	}
	return 0, nil
}

// keyRefusal says whether msg, Redis's reply, refuses a key (its ACL key
// patterns), not a command: "NOPERM this user has no permissions to access
// one of the keys used as arguments" (Redis 6.0 to 7.0), "NOPERM No
// permissions to access a key" (7.2 and later), against "... to run the
// 'hset' command", where 7.2 names the user: a user named "keyring"
// refused a command is no key refusal (atk65).
func keyRefusal(msg string) bool {
	if !strings.HasPrefix(msg, "NOPERM") {
		return false
	}
	low := strings.ToLower(msg)
	return !strings.Contains(low, "to run the '") && (strings.Contains(low, "one of the keys") || strings.Contains(low, "access a key"))
}

// unknownCommand says whether low, Redis's reply in lower case, says it
// knows no command cmd: "unknown command 'eval'", or with backquotes
// (Redis 6.0 and before, KeyDB: "unknown command `eval`").
func unknownCommand(low, cmd string) bool {
	return strings.Contains(low, "unknown command") && (strings.Contains(low, "'"+cmd+"'") || strings.Contains(low, "`"+cmd+"`"))
}

// timedOut says whether err is a wait that ran out: ctx's, or a network
// deadline (the client's read timeout).
func timedOut(ctx context.Context, err error) bool {
	var ne net.Error
	return ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// Unavailable says whether err is a reply by which Redis says it cannot
// serve now, not that it refuses this command: loading its data, its
// master or cluster down, a slot moving, a replica written during a
// failover, its client limit reached. The plugin takes these for Redis
// down, as it does no answer at all.
func Unavailable(err error) bool {
	for _, prefix := range []string{"LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "max number of clients"} {
		if redis.HasErrorPrefix(err, prefix) {
			return true
		}
	}
	return false
}

// IsReply says whether err is an error reply from Redis: it answered (not a
// lost connection, not a timeout, not a missing key). See rediserr.
func IsReply(err error) bool { return rediserr.IsReply(err) }

// IsWrongType says whether err is, or wraps, Redis's WRONGTYPE reply. See
// rediserr.
func IsWrongType(err error) bool { return rediserr.IsWrongType(err) }

// IsKeyReply says whether err is, or wraps, a reply about what one key
// holds, not an outage. See rediserr.
func IsKeyReply(err error) bool { return rediserr.IsKeyReply(err) }

// speaksTLS tries a TLS handshake with each address at once, within ctx,
// trusting any certificate (it only asks what the port speaks): the first
// address whose server completes it, or answers with a TLS alert (it
// wants a client certificate), and that answer; "" when none does.
func speaksTLS(ctx context.Context, addrs []string) (string, error) {
	type answer struct {
		addr string
		err  error
	}
	found := make(chan answer, len(addrs))
	for _, a := range addrs {
		go func() {
			d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}} //nolint:gosec // only asks whether the port speaks TLS; nothing is sent
			c, err := d.DialContext(ctx, "tcp", a)
			if err == nil {
				c.Close()
				found <- answer{a, errors.New("handshake completed")}
				return
			}
			// A received alert: crypto/tls returns a *net.OpError "remote
			// error" over TCP (tls.AlertError only for QUIC; atk60).
			var oe *net.OpError
			if errors.As(err, &oe) && oe.Op == "remote error" {
				found <- answer{a, err}
				return
			}
			found <- answer{}
		}()
	}
	for range addrs {
		if an := <-found; an.addr != "" {
			return an.addr, an.err
		}
	}
	return "", nil
}

// leaves are err's errors, unwrapped through errors.Join (go-redis joins
// the sentinels' answers) and single wrapping.
func leaves(err error) []error {
	switch u := err.(type) {
	case interface{ Unwrap() []error }:
		var out []error
		for _, e := range u.Unwrap() {
			out = append(out, leaves(e)...)
		}
		return out
	case interface{ Unwrap() error }:
		if inner := u.Unwrap(); inner != nil {
			return leaves(inner)
		}
	}
	return []error{err}
}

// allNil says whether every sentinel answered nil to the master's name:
// one that did not answer, or was just started and monitors nothing yet,
// beside one that names no such master, is no configuration error (atk56).
func allNil(err error) bool {
	for _, e := range leaves(err) {
		if !errors.Is(e, redis.Nil) {
			return false
		}
	}
	return true
}

// settingsFault is the fault err, the first PING's error, names; 0 for
// none (Redis down, a timeout, anything else). sentinel: through sentinels.
func settingsFault(err error, sentinel, cluster bool) SettingsFault {
	if sentinel && errors.Is(err, redis.Nil) {
		// go-redis's failover client: SENTINEL get-master-addr-by-name
		// answered nil on every sentinel it asked.
		if allNil(err) {
			return SettingsUnknownMaster
		}
		return 0
	}
	var re redis.Error
	if !errors.As(err, &re) {
		return 0
	}
	msg := re.Error()
	low := strings.ToLower(msg)
	unknown := func(cmd string) bool { return unknownCommand(low, cmd) }
	switch {
	case strings.HasPrefix(msg, "WRONGPASS"), strings.Contains(msg, "without any password configured"),
		strings.Contains(msg, "invalid password"): // Redis 5 and before
		return SettingsWrongPass
	case strings.HasPrefix(msg, "NOAUTH"):
		return SettingsNoAuth
	case strings.HasPrefix(msg, "DENIED"):
		return SettingsProtected
	case strings.HasPrefix(msg, "NOPERM") && strings.Contains(low, "'select' command"):
		return SettingsNoSelect
	case strings.HasPrefix(msg, "NOPERM") && strings.Contains(low, "'ping' command"):
		return SettingsNoPing
	case strings.HasPrefix(msg, "NOPERM"):
		// Another command the first connection needs: CLUSTER SLOTS for
		// seeds, SENTINEL get-master-addr-by-name for sentinels (atk59).
		return SettingsNoPerm
	case unknown("ping"):
		return SettingsNoPingCommand
	case strings.Contains(low, "select is not allowed in cluster mode"), unknown("select"):
		return SettingsSelectRefused
	case strings.Contains(msg, "DB index is out of range"):
		return SettingsDB
	case strings.Contains(msg, "cluster support disabled"):
		return SettingsNotCluster
	case unknown("auth"):
		return SettingsNoAuthCommand
	case sentinel && unknown("sentinel"):
		return SettingsNotSentinel
	case cluster && unknown("cluster"):
		return SettingsSentinelsAsCluster
	}
	return 0
}

// clusterSize is the cluster_size line of a CLUSTER INFO reply.
func clusterSize(ci string) string {
	for _, l := range strings.Split(ci, "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "cluster_size:") {
			return l
		}
	}
	return "cluster_size unknown"
}

// ProbedCommands are the names (lower case) of the commands the start
// check asks for needs: a test compares them with those a broker runs.
func ProbedCommands(needs SettingsNeeds) map[string]bool {
	names := map[string]bool{}
	for _, c := range probeCommands(needs, "k", "rk") {
		names[c[0].(string)] = true
	}
	return names
}
