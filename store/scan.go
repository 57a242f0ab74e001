package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// scanCount is the COUNT hint of one SCAN page.
const scanCount = 1000

// EachMaster runs fn on rdb's one Redis, or on every master of a Redis
// Cluster: what a command that concerns every key (SCAN, CONFIG,
// PSUBSCRIBE to keyspace notifications, which are per node) must reach. On
// a cluster fn runs on every master at once, one goroutine each, and
// EachMaster returns the first error. The clients New makes are of these
// two types; any other is an error.
//
// With Sentinel (Options.SentinelMaster) rdb is a *redis.Client whose every
// connection goes to the master the sentinels name when it is dialled: fn
// gets that client, so each of its commands reaches the master of the
// moment (go-redis closes its pooled connections to the old master on the
// sentinels' +switch-master). A subscription it makes, though, stays on the
// server it was made on until that server drops it: the replica checks
// (FollowsSentinel, replica.Sync) that the master has not changed.
func EachMaster(ctx context.Context, rdb redis.UniversalClient, fn func(context.Context, *redis.Client) error) error {
	switch c := rdb.(type) {
	case *redis.Client:
		return fn(ctx, c)
	case *redis.ClusterClient:
		return c.ForEachMaster(ctx, fn)
	}
	return fmt.Errorf("store: unsupported Redis client %T", rdb)
}

// scanStrings calls fn with every string key matching pattern, on every
// master (EachMaster): on a cluster from one goroutine per master at once.
// SCAN may return a key twice (while Redis rehashes its dictionary).
func scanStrings(ctx context.Context, rdb redis.UniversalClient, pattern string, fn func(key string)) error {
	return EachMaster(ctx, rdb, func(ctx context.Context, c *redis.Client) error {
		found := false
		err := scanPages(ctx, c, pattern, "string", func(key string) { found = true; fn(key) })
		var rerr redis.Error
		if !found && errors.As(err, &rerr) {
			// A server without SCAN TYPE (before Redis 6.0): scan every
			// type; the reads after leave out what holds no string.
			return scanPages(ctx, c, pattern, "", fn)
		}
		return err
	})
}

// scanPages runs SCAN MATCH pattern (TYPE typ, unless empty) to the end.
func scanPages(ctx context.Context, c *redis.Client, pattern, typ string, fn func(key string)) error {
	var cmd *redis.ScanCmd
	if typ != "" {
		cmd = c.ScanType(ctx, 0, pattern, scanCount, typ)
	} else {
		cmd = c.Scan(ctx, 0, pattern, scanCount)
	}
	it := cmd.Iterator()
	for it.Next(ctx) {
		fn(it.Val())
	}
	return it.Err()
}

// NodeName names the Redis that c reaches, for log lines: its address, or
// for a client that follows a Sentinel master (whose Options().Addr is a
// placeholder) "the Sentinel master".
func NodeName(c *redis.Client) string {
	if FollowsSentinel(c) {
		return "the Sentinel master"
	}
	return c.Options().Addr
}

// FollowsSentinel says whether rdb is a client that follows the master the
// sentinels name (Options.SentinelMaster).
func FollowsSentinel(rdb redis.UniversalClient) bool {
	c, ok := rdb.(*redis.Client)
	return ok && c.Options().Addr == failoverAddr
}

// failoverAddr is the Addr go-redis gives a failover client's options.
const failoverAddr = "FailoverClient"
