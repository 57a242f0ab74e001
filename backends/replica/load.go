package replica

import (
	"context"
	"fmt"
	"runtime/debug"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// load reads every replicated key into a fresh replica and swaps it in.
// Keys that change while it runs are refetched after the swap, so the
// snapshot cannot bring back a value older than a change already applied.
func (s *Sync) load(ctx context.Context) error {
	start := time.Now()
	s.mu.Lock()
	s.loading = map[string]struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.loading = nil
		s.mu.Unlock()
	}()

	fresh := New(s.kb)
	kinds := []string{string(keys.Block), string(keys.Allow), "throttle"}
	if s.o.Users {
		kinds = append(kinds, string(keys.User))
	}
	var patterns []string
	for _, k := range kinds {
		patterns = append(patterns, keys.GlobEscape(s.kb.Prefix)+k+":*")
	}
	var bad []string
	for _, p := range patterns {
		err := s.eachMaster(ctx, func(c *redis.Client) error {
			it := c.Scan(ctx, 0, p, 2000).Iterator()
			batch := make([]string, 0, 2000)
			flush := func() error {
				vals, err := s.fetch(ctx, batch)
				if err != nil {
					return err
				}
				for i, k := range batch {
					if v := vals[i]; v != nil {
						if err := fresh.Put(k, v.Value, v.Expires); err != nil {
							bad = append(bad, err.Error()) // names the key and what was expected
						}
					}
				}
				batch = batch[:0]
				return nil
			}
			for it.Next(ctx) {
				if batch = append(batch, it.Val()); len(batch) == cap(batch) {
					if err := flush(); err != nil {
						return err
					}
				}
			}
			if err := it.Err(); err != nil {
				return err
			}
			return flush()
		})
		if err != nil {
			return fmt.Errorf("load: %w", err)
		}
	}

	s.r.swap(fresh)
	// The load's garbage (pipeline replies, the replaced maps) would keep
	// the process's memory at twice the replica's size until the next GC
	// cycles; give it back now.
	debug.FreeOSMemory()
	s.mu.Lock()
	for k := range s.loading {
		s.dirty[k] = struct{}{}
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	first := !s.ready.Swap(true)
	for _, b := range bad {
		s.o.Log(true, b)
	}
	if first {
		s.o.Log(false, fmt.Sprintf("replica loaded %d keys in %s", fresh.Len(), time.Since(start).Round(time.Millisecond)))
	}
	return nil
}

// swap replaces r's contents with fresh's.
func (r *Replica) swap(fresh *Replica) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.exact, r.ranges, r.users, r.count = fresh.exact, fresh.ranges, fresh.users, fresh.count
}

// eachMaster runs fn on the single client, or on every master of a cluster.
func (s *Sync) eachMaster(ctx context.Context, fn func(*redis.Client) error) error {
	switch c := s.rdb.(type) {
	case *redis.Client:
		return fn(c)
	case *redis.ClusterClient:
		return c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return fn(m) })
	}
	return fmt.Errorf("unsupported client %T", s.rdb)
}

// enableNotifications turns on the keyspace notifications the replica
// needs (K: keyspace channel; g, $, x: generic, string and expiry events),
// keeping whatever else is on. Where CONFIG is not allowed, the change
// channel and the periodic reload still keep the replica in step.
func (s *Sync) enableNotifications(ctx context.Context) {
	_ = s.eachMaster(ctx, func(c *redis.Client) error {
		cur, err := c.ConfigGet(ctx, "notify-keyspace-events").Result()
		if err != nil {
			s.o.Log(true, "replica: cannot read notify-keyspace-events ("+err.Error()+"); relying on the change channel and a reload every "+s.o.ResyncEvery.String())
			return nil
		}
		flags := cur["notify-keyspace-events"]
		want := flags
		for _, f := range []string{"K", "g", "$", "x"} {
			if !strings.Contains(want, f) && !(f != "K" && strings.Contains(want, "A")) {
				want += f
			}
		}
		if want == flags {
			return nil
		}
		if err := c.ConfigSet(ctx, "notify-keyspace-events", want).Err(); err != nil {
			s.o.Log(true, "replica: cannot turn on keyspace notifications ("+err.Error()+"); relying on the change channel and a reload every "+s.o.ResyncEvery.String())
			return nil
		}
		s.o.Log(false, fmt.Sprintf("replica: turned on keyspace notifications (notify-keyspace-events %q, was %q)", want, flags))
		return nil
	})
}
