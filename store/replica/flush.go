package replica

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// FLUSHALL and FLUSHDB send no keyspace notification, and a Redis that
// restarts empty behind a proxy need not cut our connections: either way
// the replica would keep entries Redis no longer has until the next reload.
// So the Sync keeps a mark in every master, the key <prefix>epoch (on a
// cluster <prefix>epoch:{N}, one per master, N the first tag whose slot the
// master serves), holding a random value set with SET NX: every broker
// adopts the value it finds. Every flushCheckEvery it reads each mark back;
// a mark gone or changed means the keys were lost (or another broker saw it
// first and set a new one): the Sync marks again and reloads.
//
// Bound: a flush is seen within flushCheckEvery plus one round trip, and the
// replica holds Redis's keys once the reload that follows ends.
const flushCheckEvery = 500 * time.Millisecond

// notifyCheckEvery: every this many flush checks (5 s), the Sync also checks
// that the keyspace notifications it turned on are still on, and turns them
// on again and reloads if someone turned them off.
const notifyCheckEvery = 10

// maxMarkTries bounds the search for a tag whose slot a master serves: with
// k masters a tag misses with probability 1-1/k.
const maxMarkTries = 2000

// mark is one master's flush mark.
type mark struct {
	c   *redis.Client
	key string
	val string
}

// mark sets (or adopts) the flush mark on every master. Where Redis refuses
// the key (an ACL, a read-only replica) it logs why and returns no marks:
// flushes are then noticed at the next periodic reload only.
func (s *Sync) mark(ctx context.Context) ([]mark, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var buf [16]byte
	_, _ = rand.Read(buf[:])
	val := hex.EncodeToString(buf[:])
	_, cluster := s.rdb.(*redis.ClusterClient)
	var (
		mu      sync.Mutex
		marks   []mark
		refused error
	)
	err := store.EachMaster(ctx, s.rdb, func(ctx context.Context, c *redis.Client) error {
		for i := 0; i < maxMarkTries; i++ {
			key := s.kb.Prefix + "epoch"
			if cluster {
				key = fmt.Sprintf("%sepoch:{%d}", s.kb.Prefix, i)
			}
			// SETNX then GET, not SET NX GET: that needs Redis 7.
			err := c.SetNX(ctx, key, val, 0).Err()
			var got string
			if err == nil {
				got, err = c.Get(ctx, key).Result()
			}
			if _, moved := redis.IsMovedError(err); moved {
				continue // another master's slot
			}
			if _, ask := redis.IsAskError(err); ask {
				continue
			}
			if store.IsReply(err) && !transient(err) {
				mu.Lock()
				refused = err
				mu.Unlock()
				return nil
			}
			if err != nil {
				return err
			}
			mu.Lock()
			marks = append(marks, mark{c: c, key: key, val: got})
			mu.Unlock()
			return nil
		}
		mu.Lock()
		refused = fmt.Errorf("no slot of master %s found in %d tries", store.NodeName(c), maxMarkTries)
		mu.Unlock()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("flush mark: %w", err)
	}
	if refused != nil {
		if !s.markRefused {
			s.o.Log(true, "replica: cannot keep the flush mark "+s.kb.Prefix+"epoch ("+refused.Error()+"); a FLUSHALL or FLUSHDB is noticed at the next reload, within "+s.o.ResyncEvery.String())
		}
		s.markRefused = true
		return nil, nil
	}
	s.markRefused = false
	s.noteMarks(marks)
	return marks, nil
}

// noteMarks compares marks with the values this Sync saw on the same keys
// before, in this session or an earlier one, and calls OnFlushed once if
// any changed: that master's keys were lost. A flush check finds a FLUSHALL
// (the mark gone: mark sets a new one); an empty restart cuts the session,
// and the next one sets a new mark, which no check of the old session saw
// (issue 12: the known sources of devices connected through it were then
// not written again until each reconnected). A Redis restarted with its
// data, or a subscription cut, keeps the mark: nothing is called. seen holds
// one entry per mark key met, at most maxMarkTries (the cluster's tags).
// Session goroutine only.
func (s *Sync) noteMarks(marks []mark) {
	if s.seen == nil {
		s.seen = map[string]string{}
	}
	changed := false
	for _, m := range marks {
		if old, ok := s.seen[m.key]; ok && old != m.val {
			changed = true
		}
		s.seen[m.key] = m.val
	}
	if changed && s.o.OnFlushed != nil {
		s.o.OnFlushed()
	}
}

// transient says whether a Redis error reply passes by itself: the session
// starts again. Other replies (NOPERM, READONLY, OOM, an unknown command)
// stop the flush mark until the next periodic reload.
func transient(err error) bool {
	return redis.IsLoadingError(err) || redis.IsClusterDownError(err) || redis.IsTryAgainError(err) || redis.IsMasterDownError(err) ||
		isBusy(err) // a script past busy-reply-threshold: over when it ends
}

// isBusy says whether err is, or wraps, Redis's BUSY reply.
func isBusy(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && strings.HasPrefix(re.Error(), "BUSY ")
}

// lost says why the keys of some master are gone ("" when they are not):
// its mark is missing or changed. A master that does not answer in time
// says nothing: the subscription notices a lost connection. flushed: the
// mark was read, gone or with another value (not an error reply such as
// MOVED, nor a replaced node's client): the keys were lost, whether or not
// the mark can be set again (mark: OnFlushed).
func (s *Sync) lost(ctx context.Context, marks []mark) (why string, flushed bool) {
	ctx, cancel := context.WithTimeout(ctx, flushCheckEvery)
	defer cancel()
	for _, m := range marks {
		got, err := m.c.Get(ctx, m.key).Result()
		switch {
		case errors.Is(err, redis.Nil):
			return fmt.Sprintf("the flush mark %s on %s is gone: the keys were flushed (FLUSHALL, FLUSHDB) or lost (Redis restarted empty)", m.key, store.NodeName(m.c)), true
		case err == nil && got != m.val:
			return fmt.Sprintf("the flush mark %s on %s changed: the keys were flushed or lost, or moved", m.key, store.NodeName(m.c)), true
		case transient(err):
			// Busy (a script past busy-reply-threshold) or loading: as a
			// master that does not answer in time, it says nothing (a
			// review of 2392d1c: a BUSY reloaded, and its mark's BUSY then
			// ended the session).
			continue
		case store.IsReply(err):
			// Not a flush: a slot moved, or Redis refused the read (an ACL
			// change; a rotated password fails the next connection's AUTH).
			_, moved := redis.IsMovedError(err)
			if _, ask := redis.IsAskError(err); moved || ask {
				return fmt.Sprintf("the flush mark %s on %s moved (%s)", m.key, store.NodeName(m.c), store.OneLine(err)), false
			}
			return fmt.Sprintf("the flush mark %s on %s could not be read (%s)", m.key, store.NodeName(m.c), store.OneLine(err)), false
		case errors.Is(err, redis.ErrClosed):
			return "the cluster's masters changed", false // the node's client was replaced
		}
	}
	return "", false
}

// notificationsLost says why changes stopped reaching us ("" when they
// did not): someone turned the keyspace notifications the Sync needs off.
// It turns them on again.
func (s *Sync) notificationsLost(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, flushCheckEvery)
	defer cancel()
	var (
		mu  sync.Mutex
		why string
	)
	_ = store.EachMaster(ctx, s.rdb, func(ctx context.Context, c *redis.Client) error {
		cur, err := c.ConfigGet(ctx, "notify-keyspace-events").Result()
		if err != nil {
			return nil // CONFIG refused: the change channel and the reloads carry the changes
		}
		if flags := cur["notify-keyspace-events"]; missingFlags(flags) != flags {
			mu.Lock()
			why = fmt.Sprintf("keyspace notifications were turned off on %s (notify-keyspace-events %q)", store.NodeName(c), flags)
			mu.Unlock()
		}
		return nil
	})
	if why != "" {
		s.enableNotifications(ctx)
	}
	return why
}

// missingFlags returns flags with the notification classes the replica
// needs added (K: keyspace channel; g, $, x, e: generic, string, expiry and
// eviction events; A stands for g$xe and more). Eviction: a Redis under
// maxmemory drops keys by its policy, an allow key among them, and without
// e the replica kept applying it until the next reload (a hostile tester's
// finding: a banned client let in by an evicted allow).
func missingFlags(flags string) string {
	want := flags
	for _, f := range []string{"K", "g", "$", "x", "e"} {
		if !strings.Contains(want, f) && !(f != "K" && strings.Contains(want, "A")) {
			want += f
		}
	}
	return want
}
