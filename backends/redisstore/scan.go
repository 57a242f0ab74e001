package redisstore

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// BadRange is a range key that can never match.
type BadRange struct {
	Key string
	Err error
}

// CheckRanges scans every allow and block range key and returns those whose
// network is malformed (not a range, or host bits set): Lookup only asks for
// canonical networks, so such a key would otherwise be ignored in silence.
func (s *Store) CheckRanges(ctx context.Context) ([]BadRange, error) {
	var bad []BadRange
	for _, kind := range []keys.Kind{keys.Block, keys.Allow} {
		prefix := s.kb.List(kind, keys.CIDR, "")
		err := s.scan(ctx, globEscape(prefix)+"*", func(key string) {
			v := strings.TrimPrefix(key, prefix)
			if _, err := keys.ParseCIDR(v); err != nil {
				bad = append(bad, BadRange{Key: key, Err: err})
			}
		})
		if err != nil {
			return bad, err
		}
	}
	return bad, nil
}

// scan calls fn for every key matching pattern, on every master of a cluster.
func (s *Store) scan(ctx context.Context, pattern string, fn func(string)) error {
	each := func(ctx context.Context, c *redis.Client) error {
		it := c.Scan(ctx, 0, pattern, 1000).Iterator()
		for it.Next(ctx) {
			fn(it.Val())
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("redisstore: scan: %w", err)
		}
		return nil
	}
	if cc, ok := s.rdb.(*redis.ClusterClient); ok {
		// ForEachMaster runs in parallel; fn is not safe for concurrent use.
		var mu sync.Mutex
		locked := func(k string) { mu.Lock(); fn(k); mu.Unlock() }
		return cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			it := c.Scan(ctx, 0, pattern, 1000).Iterator()
			for it.Next(ctx) {
				locked(it.Val())
			}
			if err := it.Err(); err != nil {
				return fmt.Errorf("redisstore: scan: %w", err)
			}
			return nil
		})
	}
	if c, ok := s.rdb.(*redis.Client); ok {
		return each(ctx, c)
	}
	return fmt.Errorf("redisstore: scan: unsupported client %T", s.rdb)
}

// globEscape quotes the glob characters of a key prefix for SCAN MATCH.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
