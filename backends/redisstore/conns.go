package redisstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// Conn is one connection of a client ID, as brokers record it in Redis.
// Field order matters: the JSON encoding starts with the ID, which is how
// the compare-and-delete scripts recognise an entry.
//
// Principal is compared with the principals read back from Redis, so it
// must be in its keys.Tracking form already. As a safeguard, Redis never
// gets a principal, IP or broker name longer than keys.TrackingMax: such a
// value is stored hashed.
type Conn struct {
	ID             string `json:"id"`       // unique per connection: instance-sequence
	Instance       string `json:"instance"` // the plugin instance that holds it
	Broker         string `json:"broker"`   // broker_name, for people
	Principal      string `json:"principal"`
	IP             string `json:"ip"`
	ConnectedMs    int64  `json:"connected_ms"`
	DisconnectedMs int64  `json:"disconnected_ms,omitempty"`
}

// bounded returns c as Redis stores it: no string longer than
// keys.TrackingMax. A value in its keys.Tracking form is unchanged.
func (c Conn) bounded() Conn {
	c.Principal, c.IP, c.Broker = bound(c.Principal), bound(c.IP), bound(c.Broker)
	return c
}

// bound hashes a value longer than keys.TrackingMax, as keys.Tracking does;
// it leaves shorter ones, which may be keys.Tracking forms already, alone.
func bound(s string) string {
	if len(s) > keys.TrackingMax {
		return keys.Tracking(s)
	}
	return s
}

func (c Conn) encode() string { return jsonString(c.bounded()) }

func (c Conn) prefix() string { return `{"id":` + strconv.Quote(c.ID) }

func decodeConns(m map[string]string) []Conn {
	out := make([]Conn, 0, len(m))
	for _, v := range m {
		var c Conn
		if json.Unmarshal([]byte(v), &c) == nil && c.ID != "" {
			out = append(out, c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ConnectedMs > out[j].ConnectedMs })
	return out
}

// casScript replaces (or, with an empty ARGV[3], deletes) field ARGV[1] of
// hash KEYS[1] only if its value starts with ARGV[2]: a connection's
// disconnect must not overwrite the record of a newer connection of the same
// principal (possibly on another broker).
var casScript = redis.NewScript(`
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v or string.sub(v, 1, #ARGV[2]) ~= ARGV[2] then return 0 end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
return 1`)

// State is what Redis knows of one client ID.
type State struct {
	Live []Conn // live connections on every broker, newest first
	Seen []Conn // the latest connection of each principal within the window, newest first
}

// ClientIDStates reads the state of several client IDs in one round trip.
func (s *Store) ClientIDStates(ctx context.Context, ids []string) (map[string]State, error) {
	type cmds struct{ live, seen *redis.MapStringStringCmd }
	pending := make(map[string]cmds, len(ids))
	pipe := s.rdb.Pipeline()
	for _, id := range ids {
		if _, ok := pending[id]; !ok {
			pending[id] = cmds{pipe.HGetAll(ctx, s.kb.Conn(id)), pipe.HGetAll(ctx, s.kb.Seen(id))}
		}
	}
	if len(pending) == 0 {
		return map[string]State{}, nil
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("redisstore: client id state: %w", err)
	}
	out := make(map[string]State, len(pending))
	for id, c := range pending {
		out[id] = State{Live: decodeConns(c.live.Val()), Seen: decodeConns(c.seen.Val())}
	}
	return out, nil
}

// ConnWrite is what one batch of connection events changes for one client
// ID on one broker instance. ClientID is the client ID itself: Redis gets
// its keys.Tracking form. Only that instance writes its field of the
// client ID's live hash, and it applies its events in order, so it writes
// the final state of the batch, no compare-and-delete needed.
type ConnWrite struct {
	ClientID string
	Instance string
	SetLive  bool // write Live: the instance's live connection now (nil: none)
	Live     *Conn
	Seen     *Conn // record this connection as its principal's latest use
	Left     *Conn // record this connection's disconnect, if it is still its principal's latest use
}

// WriteConns applies a batch of writes in one round trip.
func (s *Store) WriteConns(ctx context.Context, ws []ConnWrite, window time.Duration) error {
	if len(ws) == 0 {
		return nil
	}
	err := s.writeConns(ctx, ws, window, false)
	if err != nil && strings.Contains(err.Error(), "NOSCRIPT") {
		// The script cache was flushed (or this is a new node): send the
		// script itself. Every write is idempotent, so replaying is safe.
		err = s.writeConns(ctx, ws, window, true)
	}
	if err != nil {
		return fmt.Errorf("redisstore: record connections: %w", err)
	}
	return nil
}

func (s *Store) writeConns(ctx context.Context, ws []ConnWrite, window time.Duration, full bool) error {
	cas := casScript.EvalSha
	if full {
		cas = casScript.Eval
	}
	pipe := s.rdb.Pipeline()
	for _, w := range ws {
		switch {
		case w.SetLive && w.Live != nil:
			pipe.HSet(ctx, s.kb.Conn(w.ClientID), w.Instance, w.Live.encode())
			pipe.SAdd(ctx, s.kb.BrokerConns(w.Instance), keys.Tracking(w.ClientID))
		case w.SetLive:
			pipe.HDel(ctx, s.kb.Conn(w.ClientID), w.Instance)
			pipe.SRem(ctx, s.kb.BrokerConns(w.Instance), keys.Tracking(w.ClientID))
		}
		if w.Seen != nil {
			pipe.HSet(ctx, s.kb.Seen(w.ClientID), bound(w.Seen.Principal), w.Seen.encode())
			pipe.PExpire(ctx, s.kb.Seen(w.ClientID), window)
		}
		if w.Left != nil {
			cas(ctx, pipe, []string{s.kb.Seen(w.ClientID)}, bound(w.Left.Principal), w.Left.prefix(), w.Left.encode())
		}
	}
	_, err := pipe.Exec(ctx)
	return err
}

// LiveConns returns the live connections of clientID on every broker.
func (s *Store) LiveConns(ctx context.Context, clientID string) ([]Conn, error) {
	m, err := s.rdb.HGetAll(ctx, s.kb.Conn(clientID)).Result()
	if err != nil {
		return nil, fmt.Errorf("redisstore: live conns: %w", err)
	}
	return decodeConns(m), nil
}

// PublishChange tells every replica that key changed.
func (s *Store) PublishChange(ctx context.Context, key string) error {
	if err := s.rdb.Publish(ctx, s.kb.Changes(), key).Err(); err != nil {
		return fmt.Errorf("redisstore: publish change: %w", err)
	}
	return nil
}

// CountTakeover counts one duplicate connection of clientID and returns how
// many there were within window (a fixed window from the first).
func (s *Store) CountTakeover(ctx context.Context, clientID string, window time.Duration) (int64, error) {
	key := s.kb.Takeovers(clientID)
	n, err := s.rdb.Incr(ctx, key).Result()
	if err == nil && n == 1 {
		err = s.rdb.PExpire(ctx, key, window).Err()
	}
	if err != nil {
		return 0, fmt.Errorf("redisstore: count takeover: %w", err)
	}
	return n, nil
}

// RenewLease extends instance's lease to now+ttl and returns the instances
// whose lease still runs and those whose lease ran out (dead brokers).
func (s *Store) RenewLease(ctx context.Context, instance string, ttl time.Duration) (live map[string]bool, dead []string, err error) {
	now := time.Now().UnixMilli()
	key := s.kb.Brokers()
	pipe := s.rdb.Pipeline()
	pipe.ZAdd(ctx, key, redis.Z{Score: float64(now + ttl.Milliseconds()), Member: instance})
	alive := pipe.ZRangeByScore(ctx, key, &redis.ZRangeBy{Min: strconv.FormatInt(now, 10), Max: "+inf"})
	gone := pipe.ZRangeByScore(ctx, key, &redis.ZRangeBy{Min: "-inf", Max: "(" + strconv.FormatInt(now, 10), Count: 100})
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, nil, fmt.Errorf("redisstore: renew lease: %w", err)
	}
	live = map[string]bool{}
	for _, m := range alive.Val() {
		live[m] = true
	}
	return live, gone.Val(), nil
}

// Reap removes every live-connection entry of instance and its lease: for a
// broker that died without cleaning up, or one shutting down (clients still
// connected at shutdown get no DISCONNECT). Safe to run on several brokers at once.
func (s *Store) Reap(ctx context.Context, instance string) error {
	set := s.kb.BrokerConns(instance)
	var cursor uint64
	for {
		ids, next, err := s.rdb.SScan(ctx, set, cursor, "", 500).Result()
		if err != nil {
			return fmt.Errorf("redisstore: reap: %w", err)
		}
		if len(ids) > 0 {
			pipe := s.rdb.Pipeline()
			for _, id := range ids {
				pipe.HDel(ctx, s.kb.ConnTracked(id), instance)
			}
			if _, err := pipe.Exec(ctx); err != nil {
				return fmt.Errorf("redisstore: reap: %w", err)
			}
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	if err := s.rdb.Del(ctx, set).Err(); err != nil {
		return fmt.Errorf("redisstore: reap: %w", err)
	}
	if err := s.rdb.ZRem(ctx, s.kb.Brokers(), instance).Err(); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("redisstore: reap: %w", err)
	}
	return nil
}
