package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
	"github.com/mosquitto-guard/mosquitto-guard/internal/rediserr"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// fetchBatch is how many entries one GET+PTTL pipeline of List reads.
const fetchBatch = 500

// maxUnknownScope is how many keys of unknown scope a Listing names.
const maxUnknownScope = 10

// RedisError is an error Redis (or the connection to it) gave a store
// operation, as opposed to a refusal of the arguments: Err is go-redis's
// error as it came.
type RedisError struct {
	Op  string // what was being done: "list", "set entry", ...
	Err error
}

func (e *RedisError) Error() string { return "store: " + e.Op + ": " + e.Err.Error() }

func (e *RedisError) Unwrap() error { return e.Err }

// Entry is one allow or block key, as List reads it.
type Entry struct {
	Key     string
	Kind    keys.Kind
	Scope   keys.Scope
	Value   string
	Reason  string    // the key's value
	Expires time.Time // zero: never

	addr netip.Addr   // ip scope, when the value is an address: its place in the order
	pfx  netip.Prefix // cidr scope, likewise
}

// Origin says who wrote the entry, as Match.Origin does: "auto" or "operator".
func (e Entry) Origin() string { return origin(e.Reason) }

// NeverMatches says why the plugin can never match e, or "" when it can: an
// ip key that is no canonical address (keys.ParseIPKey) or a range key that
// is no canonical network (keys.ParseCIDR) or a cert key that is no
// certificate ID in lower case (keys.IsCertID), as the plugin reports them too.
// The reason is what the value should be ("expected the canonical network
// 10.0.0.0/8"), without the value itself.
func (e Entry) NeverMatches() string { return neverMatches(e.Scope, e.Value) }

func neverMatches(scope keys.Scope, value string) string {
	err := matchable(scope, value)
	if err == nil {
		return ""
	}
	// The last one: the value, quoted before it, may hold ": expected " too.
	msg := err.Error()
	if i := strings.LastIndex(msg, ": expected "); i >= 0 {
		return msg[i+2:]
	}
	return strings.TrimPrefix(msg, "keys: ")
}

// matchable returns nil when the plugin can match an entry of scope with
// value, else the error of keys.ParseIPKey or keys.ParseCIDR, or for the
// cert scope why the value is no certificate ID as keys hold it: the plugin
// looks a certificate up by keys.CertID, 64 lower-case hex digits, only.
func matchable(scope keys.Scope, value string) error {
	var err error
	switch scope {
	case keys.IP:
		_, err = keys.ParseIPKey(value)
	case keys.CIDR:
		_, err = keys.ParseCIDR(value)
	case keys.Cert:
		err = certKeyError(value)
	}
	return err
}

// certKeyError returns nil when value is a certificate ID in the form keys
// hold, else an error saying what is expected.
func certKeyError(value string) error {
	if keys.IsCertID(value) {
		return nil
	}
	return fmt.Errorf("keys: certificate ID %s: expected 64 lower-case hex digits (the SHA-256 of the certificate's DER)", logval.Quote(value))
}

// Listing is what List found.
type Listing struct {
	Kind    keys.Kind
	Prefix  string     // the key prefix listed
	Scope   keys.Scope // "": every scope
	Entries []Entry    // the first entries in order (scope, then value), at most the limit
	Total   int        // entries found, listed or not (keys gone or holding no string left out)
	More    int        // entries found beyond the limit, not read

	// UnknownScope names the first keys found under the kind that are no
	// list key (their scope is unknown: the plugin ignores them), and
	// UnknownScopeMore counts the others.
	UnknownScope     []string
	UnknownScopeMore int
	// NotString names the keys, among the first limit, that hold another
	// type than a string: no entry for the plugin either.
	NotString []string
}

// List reads the list kind (keys.Allow or keys.Block), every scope or one:
// it finds the keys with SCAN on every master (EachMaster), keeps the first
// limit of them in order (scope, then value: addresses and ranges in
// address order) in memory proportional to limit, and reads their values
// and expiries in pipelines. The SCAN pattern is built from the key prefix
// (glob characters escaped) and the list's kind and scope, never from a
// value. A limit below 1 reads no entry but counts them all. A Redis error
// is a *RedisError.
func (s *Store) List(ctx context.Context, kind keys.Kind, scope keys.Scope, limit int) (Listing, error) {
	err := checkKind(kind)
	if err == nil && scope != "" {
		_, err = keys.ParseScope(string(scope))
	}
	if err != nil {
		return Listing{}, fmt.Errorf("store: list: %w", err)
	}
	ls := Listing{Kind: kind, Prefix: s.kb.Prefix, Scope: scope}
	top := topN{limit: limit}
	var mu sync.Mutex // a cluster's masters are scanned at once
	err = scanStrings(ctx, s.rdb, listPattern(s.kb, kind, scope), func(key string) {
		e, ok := parseEntry(s.kb, key)
		mu.Lock()
		defer mu.Unlock()
		if !ok {
			if len(ls.UnknownScope) < maxUnknownScope {
				ls.UnknownScope = append(ls.UnknownScope, key)
			} else {
				ls.UnknownScopeMore++
			}
			return
		}
		top.add(e)
	})
	if err != nil {
		return Listing{}, &RedisError{Op: "list", Err: err}
	}
	chosen, total := top.result()
	if ls.Entries, ls.NotString, err = fetchEntries(ctx, s.rdb, chosen); err != nil {
		return Listing{}, &RedisError{Op: "list", Err: err}
	}
	ls.More = total - len(chosen)
	ls.Total = len(ls.Entries) + ls.More
	return ls, nil
}

// listPattern is the SCAN pattern of the keys of kind (and scope, unless
// empty) under kb's prefix.
func listPattern(kb keys.Builder, kind keys.Kind, scope keys.Scope) string {
	pattern := keys.GlobEscape(kb.Prefix) + string(kind) + ":"
	if scope != "" {
		pattern += string(scope) + ":"
	}
	return pattern + "*"
}

// parseEntry parses a key found by SCAN; ok is false when it is no list key.
func parseEntry(kb keys.Builder, key string) (e Entry, ok bool) {
	kind, scope, value, ok := kb.Split(key)
	if !ok {
		return Entry{}, false
	}
	e = Entry{Key: key, Kind: kind, Scope: scope, Value: value}
	switch scope {
	case keys.IP:
		e.addr, _ = netip.ParseAddr(value)
	case keys.CIDR:
		e.pfx, _ = netip.ParsePrefix(value)
	}
	return e, true
}

// compareEntries orders entries by scope, then value: addresses and ranges
// in address order (then by prefix length), ahead of values that do not
// parse, which, like client IDs and usernames, go in byte order.
func compareEntries(a, b Entry) int {
	if c := cmp.Compare(a.Scope, b.Scope); c != 0 {
		return c
	}
	switch av, bv := a.addr.IsValid(), b.addr.IsValid(); {
	case av && bv:
		if c := a.addr.Compare(b.addr); c != 0 {
			return c
		}
	case av != bv:
		return boolOrder(av)
	}
	switch av, bv := a.pfx.IsValid(), b.pfx.IsValid(); {
	case av && bv:
		if c := cmp.Or(a.pfx.Addr().Compare(b.pfx.Addr()), cmp.Compare(a.pfx.Bits(), b.pfx.Bits())); c != 0 {
			return c
		}
	case av != bv:
		return boolOrder(av)
	}
	return strings.Compare(a.Value, b.Value)
}

// boolOrder puts true first.
func boolOrder(first bool) int {
	if first {
		return -1
	}
	return 1
}

// topN keeps the first limit entries, in order, of all it is given, in
// memory proportional to limit whatever the number of keys.
type topN struct {
	limit int
	kept  []Entry
	total int
}

func (t *topN) add(e Entry) {
	t.kept = append(t.kept, e)
	t.total++
	if len(t.kept)-t.limit >= max(t.limit, 1024) {
		t.compact()
	}
}

// compact sorts the kept entries, drops the duplicates SCAN may return
// (while the Redis dictionary is being rehashed) and keeps limit of them.
func (t *topN) compact() {
	slices.SortFunc(t.kept, compareEntries)
	n := len(t.kept)
	t.kept = slices.CompactFunc(t.kept, func(a, b Entry) bool { return a.Key == b.Key })
	t.total -= n - len(t.kept)
	clear(t.kept[len(t.kept):n])
	if len(t.kept) > t.limit {
		clear(t.kept[max(t.limit, 0):])
		t.kept = t.kept[:max(t.limit, 0)]
	}
}

// result returns the first limit entries in order, and how many entries
// there were.
func (t *topN) result() ([]Entry, int) {
	t.compact()
	return t.kept, t.total
}

// fetchEntries reads the reason and remaining lifetime of entries, in
// pipelines of GET and PTTL. Entries whose key is gone by now are dropped;
// so are keys that hold no string, which are returned apart.
func fetchEntries(ctx context.Context, rdb redis.UniversalClient, entries []Entry) (kept []Entry, notString []string, err error) {
	kept = make([]Entry, 0, len(entries))
	for batch := range slices.Chunk(entries, fetchBatch) {
		pipe := rdb.Pipeline()
		gets := make([]*redis.StringCmd, len(batch))
		ttls := make([]*redis.DurationCmd, len(batch))
		for i, e := range batch {
			gets[i] = pipe.Get(ctx, e.Key)
			ttls[i] = pipe.PTTL(ctx, e.Key)
		}
		cmds, err := pipe.Exec(ctx) // each command's error is looked at below
		if perr := rediserr.PipelineErr(cmds, err); perr != nil {
			return nil, nil, perr
		}
		now := time.Now()
		for i, e := range batch {
			reason, err := gets[i].Result()
			switch {
			case errors.Is(err, redis.Nil):
				continue
			case err != nil && strings.HasPrefix(err.Error(), "WRONGTYPE"):
				notString = append(notString, e.Key)
				continue
			case err != nil:
				return nil, nil, err
			}
			ttl, err := ttls[i].Result()
			if err != nil {
				return nil, nil, err
			}
			switch {
			case ttl == -2*time.Millisecond || ttl == -2: // gone between GET and PTTL
				continue
			case ttl >= 0:
				e.Expires = now.Add(ttl)
			}
			e.Reason = reason
			kept = append(kept, e)
		}
	}
	return kept, notString, nil
}
