package replica

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// maxReloadChanges: past this many keys changed by one reload, the Sync
// reports them with one OnManyChanges call instead of one OnChange each.
const maxReloadChanges = 1000

// load reads every replicated key into a fresh replica and swaps it in.
// Keys that change while it runs are refetched after the swap, so the
// snapshot cannot bring back a value older than a change already applied.
// A key of another type than string is skipped (logged once) and the rest
// applied. Every reload after the first reports the keys it changed, as
// notifications do: they are changes that did not reach the replica.
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

	fresh := s.r.sizedLike()
	kinds := []string{string(keys.Block), string(keys.Allow), "throttle"}
	if s.o.Users {
		kinds = append(kinds, string(keys.User))
	}
	var patterns []string
	for _, k := range kinds {
		patterns = append(patterns, keys.GlobEscape(s.kb.Prefix)+k+":*")
	}
	var (
		mu    sync.Mutex // the masters of a cluster are scanned concurrently
		bad   []string
		wrong []string
	)
	for _, p := range patterns {
		err := store.EachMaster(ctx, s.rdb, func(ctx context.Context, c *redis.Client) error {
			it := c.Scan(ctx, 0, p, 2000).Iterator()
			// Keys are fetched and stored walkChunk at a time, with a
			// yield to Go's scheduler after each batch (see walkChunk):
			// parsing a pipeline's replies from a socket that has them
			// all never blocks, and a pipeline of 2 000 keys held a P for
			// Go's whole 10 ms time slice.
			batch := make([]string, 0, walkChunk)
			flush := func() error {
				defer runtime.Gosched()
				vals, wrongType, err := s.fetch(ctx, batch)
				if err != nil {
					return err
				}
				for i, k := range batch {
					if v := vals[i]; v != nil {
						if err := fresh.Put(k, v.Value, v.Expires); err != nil {
							mu.Lock()
							bad = append(bad, err.Error()) // names the key and what was expected
							mu.Unlock()
						}
					}
				}
				mu.Lock()
				wrong = append(wrong, wrongType...)
				mu.Unlock()
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

	first := !s.ready.Load()
	var changed []change
	var many bool
	switch {
	case first:
		// Clients let in before it (Redis down at start) are checked by one
		// OnManyChanges rather than a report of every key.
		many = fresh.Len() > 0
	case s.o.OnChange != nil || s.o.OnManyChanges != nil:
		changed, many = s.r.changes(fresh, time.Now(), maxReloadChanges)
	}
	if !first && (many || len(changed) > 0) && s.o.BeforeReloadSwap != nil {
		s.o.BeforeReloadSwap(fresh)
	}
	s.r.swap(fresh)
	s.applied.Store(time.Now().UnixNano())
	// The replaced maps and the load's garbage are left to the collector
	// and to Go's background scavenger, which hands freed memory back to
	// the system a little at a time. debug.FreeOSMemory here (until
	// 2026-12-03) forced a full collection and then scavenged the whole
	// heap in one call that cannot be preempted: 26 to 39 ms on one of the
	// two Ps with 300 000 keys, while the other ran mark workers, and the
	// broker thread, coming back from Mosquitto's code, waited for a P that
	// long (TestReloadLeavesTheBrokerThreadAP).
	s.mu.Lock()
	for k := range s.loading {
		s.dirty[k] = struct{}{}
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	if first && s.o.OnFirstLoad != nil {
		s.o.OnFirstLoad()
	}
	s.ready.Store(true)
	for _, b := range bad {
		s.o.Log(true, b)
	}
	s.wrongTypes(wrong, true)
	if first {
		s.o.Log(false, fmt.Sprintf("replica loaded %d keys in %s", fresh.Len(), time.Since(start).Round(time.Millisecond)))
	}
	s.reportReload(changed, many, first)
	return nil
}

// reportReload tells the plugin what a reload changed.
func (s *Sync) reportReload(changed []change, many, first bool) {
	if many {
		if !first {
			s.o.Log(false, fmt.Sprintf("replica: the reload changed more than %d keys", maxReloadChanges))
		}
		if s.o.OnManyChanges != nil {
			s.o.OnManyChanges()
		}
		return
	}
	report := s.o.OnChange
	if s.o.OnReloadChange != nil {
		report = s.o.OnReloadChange
	}
	if report == nil {
		return
	}
	for _, c := range changed {
		var e *Entry
		if cur, ok := s.r.Get(c.key); ok {
			e = &cur
		}
		report(c.key, e, c.old)
	}
}

// wrongTypes logs the keys under a replicated prefix that hold another type
// than string, once each while they stay so: such a key is skipped (it is
// no entry, as it is none for the plugin's direct lookups). all says keys
// is every such key (a load): the others are forgotten.
func (s *Sync) wrongTypes(keys []string, all bool) {
	s.wrongMu.Lock()
	defer s.wrongMu.Unlock()
	if all || s.wrongLogged == nil {
		prev := s.wrongLogged
		s.wrongLogged = map[string]struct{}{}
		for _, k := range keys {
			if _, ok := prev[k]; ok && len(s.wrongLogged) < maxWrongRemembered {
				s.wrongLogged[k] = struct{}{}
			}
		}
	}
	logged, more := 0, 0
	for _, k := range keys {
		if _, ok := s.wrongLogged[k]; ok {
			continue
		}
		if len(s.wrongLogged) < maxWrongRemembered {
			s.wrongLogged[k] = struct{}{}
		}
		if logged == maxWrongLines {
			more++
			continue
		}
		logged++
		s.o.Log(true, fmt.Sprintf("replica: skipping key %s: it holds another type than a string (WRONGTYPE), so it bans or allows nothing", logval.Quote(k)))
	}
	if more > 0 {
		s.o.Log(true, fmt.Sprintf("replica: skipping %d more keys of another type than string", more))
	}
}

// wrongTypeFixed forgets that key held another type.
func (s *Sync) wrongTypeFixed(key string) {
	s.wrongMu.Lock()
	delete(s.wrongLogged, key)
	s.wrongMu.Unlock()
}

const (
	maxWrongLines      = 20     // per load or batch of changes
	maxWrongRemembered = 10_000 // keys not logged again
)

// swap replaces r's contents with fresh's.
func (r *Replica) swap(fresh *Replica) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.exact, r.ranges, r.users, r.throttles, r.count = fresh.exact, fresh.ranges, fresh.users, fresh.throttles, fresh.count
	r.lists, r.exactN = fresh.lists, fresh.exactN
	r.gen++
}

// change is a key a reload changed, and what the replica held before.
type change struct {
	key string
	old *Entry // nil: nothing (or an expired entry)
}

// sameSlot says whether a reload leaves an entry as it was: the same value
// and, within a second, the same expiry (a reload reads the TTL afresh).
func sameSlot(a, b slot) bool {
	if a.value != b.value || (a.exp == 0) != (b.exp == 0) {
		return false
	}
	d := a.exp - b.exp
	return d < 1000 && d > -1000
}

func (e slot) entry(key string) *Entry {
	out := &Entry{Key: key, Value: e.value}
	if e.exp != 0 {
		out.Expires = time.UnixMilli(e.exp)
	}
	return out
}

// changes lists the keys whose live entries differ between r and fresh
// (fresh is not shared yet): added, changed or removed. It gives up, with
// many true, past max keys. It holds r's read lock for at most walkChunk
// entries at a time.
func (r *Replica) changes(fresh *Replica, now time.Time, max int) (out []change, many bool) {
	ms := now.UnixMilli()
	add := func(key string, old slot, had bool) bool {
		if len(out) >= max {
			many = true
			return false
		}
		c := change{key: key}
		if had && old.live(ms) {
			c.old = old.entry(key)
		}
		out = append(out, c)
		return true
	}
	// differs says whether fresh's entry e is news: live, and not what r holds.
	differs := func(e, old slot, had bool) bool {
		return e.live(ms) && !(had && old.live(ms) && sameSlot(e, old))
	}
	type strMap struct {
		fresh  map[string]slot
		cur    func() map[string]slot
		prefix string
	}
	strMaps := []strMap{
		{fresh.exact, func() map[string]slot { return r.exact }, ""},
		{fresh.users, func() map[string]slot { return r.users }, r.kb.User("")},
		{fresh.throttles, func() map[string]slot { return r.throttles }, r.kb.Throttle("")},
	}
	type rangeMap struct {
		fresh map[netip.Prefix]slot
		cur   func() map[netip.Prefix]slot
		kind  keys.Kind
	}
	var rangeMaps []rangeMap
	for _, kind := range []keys.Kind{keys.Allow, keys.Block} {
		for f := 0; f < 2; f++ {
			lens := map[int]bool{}
			for l := range fresh.ranges[listIndex(kind)][f].byLen {
				lens[l] = true
			}
			r.mu.RLock()
			for _, l := range r.ranges[listIndex(kind)][f].lens {
				lens[l] = true
			}
			r.mu.RUnlock()
			for l := range lens {
				rangeMaps = append(rangeMaps, rangeMap{fresh.ranges[listIndex(kind)][f].byLen[l],
					func() map[netip.Prefix]slot { return r.ranges[listIndex(kind)][f].byLen[l] }, kind})
			}
		}
	}
	ok := true
	// Added or changed: fresh's live entries that r lacks or holds otherwise.
	for _, m := range strMaps {
		ok = ok && compare(r, m.fresh, m.cur, func(k string, e, old slot, had bool) bool {
			return !differs(e, old, had) || add(m.prefix+k, old, had)
		})
	}
	for _, m := range rangeMaps {
		ok = ok && compare(r, m.fresh, m.cur, func(p netip.Prefix, e, old slot, had bool) bool {
			return !differs(e, old, had) || add(r.kb.List(m.kind, keys.CIDR, p.String()), old, had)
		})
	}
	// Removed: r's live entries that fresh lacks.
	for _, m := range strMaps {
		if ok {
			walk(r, m.cur, func(k string, old slot) {
				if _, in := m.fresh[k]; ok && !in && old.live(ms) {
					ok = add(m.prefix+k, old, true)
				}
			}, func() {})
		}
	}
	for _, m := range rangeMaps {
		if ok {
			walk(r, m.cur, func(p netip.Prefix, old slot) {
				if _, in := m.fresh[p]; ok && !in && old.live(ms) {
					ok = add(r.kb.List(m.kind, keys.CIDR, p.String()), old, true)
				}
			}, func() {})
		}
	}
	if many {
		return nil, true
	}
	return out, false
}

// compare calls fn for every entry of fresh with what r holds under the
// same key, holding r's read lock for at most walkChunk entries at a time;
// it stops (returning false) when fn returns false.
func compare[K comparable](r *Replica, fresh map[K]slot, cur func() map[K]slot, fn func(k K, e, old slot, had bool) bool) bool {
	n := 0
	r.mu.RLock()
	defer func() { r.mu.RUnlock() }()
	for k, e := range fresh {
		old, had := cur()[k]
		if !fn(k, e, old, had) {
			return false
		}
		if n++; n%walkChunk == 0 {
			r.mu.RUnlock()
			runtime.Gosched() // see walkChunk
			r.mu.RLock()
		}
	}
	return true
}

// enableNotifications turns on the keyspace notifications the replica
// needs (K: keyspace channel; g, $, x: generic, string and expiry events),
// keeping whatever else is on. Where CONFIG is not allowed, the change
// channel and the periodic reload still keep the replica in step.
func (s *Sync) enableNotifications(ctx context.Context) {
	// A refusal (CONFIG not allowed) is logged once until it changes or
	// passes; a Redis that does not answer is not logged here at all: the
	// health probe says so once, and the session retries every few
	// seconds (a README-only attacker counted this line once a second
	// while Redis was down).
	refused := func(what string, err error) {
		if !store.IsReply(err) {
			return
		}
		s.notifyMu.Lock()
		defer s.notifyMu.Unlock()
		if s.notifyRefused == err.Error() {
			return
		}
		s.notifyRefused = err.Error()
		s.o.Log(true, "replica: cannot "+what+" ("+err.Error()+"); relying on the change channel and a reload every "+s.o.ResyncEvery.String())
	}
	_ = store.EachMaster(ctx, s.rdb, func(ctx context.Context, c *redis.Client) error {
		s.checkEviction(ctx, c)
		cur, err := c.ConfigGet(ctx, "notify-keyspace-events").Result()
		if err != nil {
			refused("read notify-keyspace-events", err)
			return nil
		}
		flags := cur["notify-keyspace-events"]
		want := missingFlags(flags)
		if want == flags {
			return nil
		}
		if err := c.ConfigSet(ctx, "notify-keyspace-events", want).Err(); err != nil {
			refused("turn on keyspace notifications", err)
			return nil
		}
		s.o.Log(false, fmt.Sprintf("replica: turned on keyspace notifications (notify-keyspace-events %q, was %q)", want, flags))
		return nil
	})
}

// checkEviction warns, once for each node until its setting changes, when
// Redis may evict keys: a maxmemory limit with a policy other than
// noeviction. Auto-bans, throttles and failure counts carry TTLs, so a
// volatile-* policy evicts them first (a ban lifted before its time), and
// client-ID tracking's records go unnoticed (README, Known limits). It
// reads INFO memory, which a managed Redis that refuses CONFIG still
// answers (atk34: the warning was silent there); a refusal of INFO says
// nothing here (the failover check says it once).
func (s *Sync) checkEviction(ctx context.Context, c *redis.Client) {
	info, err := c.Info(ctx, "memory").Result()
	if err != nil {
		return
	}
	var limit, policy string
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		switch {
		case !ok:
		case k == "maxmemory":
			limit = v
		case k == "maxmemory_policy":
			policy = v
		}
	}
	setting := ""
	if limit != "" && limit != "0" && policy != "" && policy != "noeviction" {
		setting = "maxmemory " + limit + ", maxmemory-policy " + policy
	}
	node := store.NodeName(c)
	s.notifyMu.Lock()
	defer s.notifyMu.Unlock()
	if s.evictionSaid == nil {
		s.evictionSaid = map[string]string{}
	}
	if s.evictionSaid[node] == setting {
		return
	}
	s.evictionSaid[node] = setting
	if setting != "" {
		s.o.Log(true, fmt.Sprintf("replica: redis at %s may evict the guard's keys (%s): a ban, throttle or failure count with a TTL can go before its time, and client-ID tracking's records unnoticed; set maxmemory-policy noeviction", node, setting))
	}
}
