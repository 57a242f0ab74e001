package store

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// SetEntry writes the entry of value in the list kind (keys.Allow or
// keys.Block) and scope: the key keys.Builder.List names, holding reason,
// expiring after ttl (zero: never; else at least 1ms, kept to the
// millisecond). An existing entry of the same key, automatic or not, is
// replaced. The change is then published (PublishChange), so every
// broker's replica has it at once, even where Redis keyspace notifications
// are off. It returns the key written.
//
// value must be in the form the plugin matches: an ip value a canonical
// address (keys.ParseIPKey), a cidr value a canonical network
// (keys.ParseCIDR), a cert value a certificate ID in lower case
// (keys.IsCertID; keys.ParseCertID makes one); SetEntry refuses, writing nothing, an entry that could
// never match. It does not look at reason: keeping keys.AutoBanMarker to
// the plugin's own bans is the caller's part. A Redis error is a
// *RedisError.
func (s *Store) SetEntry(ctx context.Context, kind keys.Kind, scope keys.Scope, value, reason string, ttl time.Duration) (string, error) {
	if err := checkList(kind, scope); err != nil {
		return "", fmt.Errorf("store: set entry: %w", err)
	}
	if err := matchable(scope, value); err != nil {
		return "", fmt.Errorf("store: set entry: %w", err)
	}
	if ttl < 0 || (ttl > 0 && ttl < time.Millisecond) {
		return "", fmt.Errorf("store: set entry: expiry %s: expected zero (never) or at least 1ms", ttl)
	}
	key := s.kb.List(kind, scope, value)
	if err := s.rdb.Set(ctx, key, reason, ttl.Truncate(time.Millisecond)).Err(); err != nil {
		return "", &RedisError{Op: "set entry", Err: err}
	}
	return key, s.PublishChange(ctx, key)
}

// DeleteEntry deletes the entry of value in the list kind and scope, then
// publishes the change (PublishChange) whether or not the key existed: a
// replica that missed an earlier deletion catches up. It returns the key
// and whether it existed. Any value is taken: deleting an entry the plugin
// could never match is harmless. A Redis error is a *RedisError.
func (s *Store) DeleteEntry(ctx context.Context, kind keys.Kind, scope keys.Scope, value string) (key string, existed bool, err error) {
	if err := checkList(kind, scope); err != nil {
		return "", false, fmt.Errorf("store: delete entry: %w", err)
	}
	key = s.kb.List(kind, scope, value)
	n, err := s.rdb.Del(ctx, key).Result()
	if err != nil {
		return "", false, &RedisError{Op: "delete entry", Err: err}
	}
	return key, n > 0, s.PublishChange(ctx, key)
}

// delAutoScript deletes KEYS[1] when its value starts with ARGV[1]
// (keys.AutoBanMarker), and says in the same step what it found: 1
// deleted, 0 no such key, -1 a string of another origin (an operator's),
// -2 a key of another type. One step, so that an automatic ban written
// between a delete and a second look is not called an operator's (atk54).
var delAutoScript = redis.NewScript(`
local t = redis.call('TYPE', KEYS[1])
if type(t) == 'table' then t = t['ok'] end
if t == 'none' then return 0 end
if t ~= 'string' then return -2 end
local v = redis.call('GET', KEYS[1])
if string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then
	return redis.call('DEL', KEYS[1])
end
return -1
`)

// Kept is what DeleteAutoEntry found and left.
type Kept int

// What DeleteAutoEntry left.
const (
	KeptNothing     Kept = iota // deleted, or no such key
	KeptOperators               // an entry of another origin (an operator's)
	KeptAnotherType             // a key that is no list entry (another type than a string)
)

// DeleteAutoEntry deletes the entry of value in the list kind and scope only
// if it is the plugin's own (its value starts with keys.AutoBanMarker), and
// publishes the change when it did. It returns the key, whether it was
// deleted and what it left there, judged in the same step as the delete.
// guardctl unban uses it for the hashed form of a long value
// (keys.Tracking), which may also be a client ID or username of its own
// that an operator banned. A Redis error is a *RedisError.
func (s *Store) DeleteAutoEntry(ctx context.Context, kind keys.Kind, scope keys.Scope, value string) (key string, deleted bool, kept Kept, err error) {
	if err := checkList(kind, scope); err != nil {
		return "", false, KeptNothing, fmt.Errorf("store: delete automatic entry: %w", err)
	}
	key = s.kb.List(kind, scope, value)
	n, err := delAutoScript.Run(ctx, s.rdb, []string{key}, keys.AutoBanMarker).Int()
	if err != nil {
		return "", false, KeptNothing, &RedisError{Op: "delete automatic entry", Err: err}
	}
	switch {
	case n > 0:
		return key, true, KeptNothing, s.PublishChange(ctx, key)
	case n == -1:
		return key, false, KeptOperators, nil
	case n == -2:
		return key, false, KeptAnotherType, nil
	}
	return key, false, KeptNothing, nil
}

// PublishChange tells every replica that key changed: the one way the
// plugin (its automatic bans and throttles) and SetEntry and DeleteEntry
// publish a change. The change must be done when it is called (its reply
// received): on a Redis Cluster the key and the channel may belong to
// different nodes, and a replica re-reads the key as soon as it gets the
// message. A Redis error is a *RedisError.
func (s *Store) PublishChange(ctx context.Context, key string) error {
	if err := s.rdb.Publish(ctx, s.kb.Changes(), key).Err(); err != nil {
		return &RedisError{Op: "publish change", Err: err}
	}
	return nil
}

// checkList checks that kind and scope name an allow or block list.
func checkList(kind keys.Kind, scope keys.Scope) error {
	if err := checkKind(kind); err != nil {
		return err
	}
	_, err := keys.ParseScope(string(scope))
	return err
}

// checkKind checks that kind is keys.Allow or keys.Block.
func checkKind(kind keys.Kind) error {
	if kind != keys.Allow && kind != keys.Block {
		return fmt.Errorf("%s is no list (expected allow or block)", logval.Quote(string(kind)))
	}
	return nil
}
