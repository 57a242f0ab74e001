package main

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// defaultLimit is how many entries guardctl list shows without --limit.
const defaultLimit = 1000

// scanCount and fetchBatch size the SCAN pages and the GET+PTTL pipelines.
const (
	scanCount  = 1000
	fetchBatch = 500
)

const listUsage = `Usage: guardctl list [--allow] [--scope SCOPE] [--limit N] [--json] [connection flags]

List the bans (the keys <prefix>block:*), or with --allow the allowlist
(<prefix>allow:*), found with SCAN on the Redis, or on every master of a
Redis Cluster, with who set each one, when it ends and why. Sorted by scope,
then value (addresses and ranges in address order). ORIGIN is auto for the
plugin's automatic bans (reason starting with "auto:"), else operator.
Values and reasons are untrusted: the table shows a value quoted (Go syntax)
when it holds odd bytes, every reason quoted, both cut to 60 bytes ("..."
after). Keys that hold no string are left out; keys the plugin can never
match (an ip or cidr value not in canonical form) are named on stderr.

Flags:
  --allow           the allowlist instead of the bans
  --scope SCOPE     only the entries of one scope: clientid, ip, cidr or
                    username
  --limit N         show the first N entries at most (default 1000) and say
                    how many more there are
  --json            one JSON document instead of the table:
                    {"list": "block", "prefix": "guard:", "total": n,
                    "more": n, "entries": [{"key": ..., "scope": ...,
                    "value": ..., "origin": "auto" or "operator",
                    "reason": ..., "expires_ms": unix ms, or null for
                    never}]}; an entry whose value is not valid UTF-8 also
                    has "value_base64", the exact bytes

`

const listFooter = `
Exit status: 0 ok (with or without entries), 1 runtime error (such as Redis
unreachable), 2 usage error.

Examples:
  guardctl list --config /etc/mosquitto/mosquitto.conf
  guardctl list --scope ip --limit 50
  guardctl list --allow --json
`

// listFlags are the parsed flags of guardctl list.
type listFlags struct {
	conn  connFlags
	allow bool
	json  bool
	scope string // "": every scope
	limit int
}

// parseListFlags parses the arguments of guardctl list. It returns
// flag.ErrHelp for -h, and any other error for a usage error.
func parseListFlags(args []string) (*listFlags, error) {
	l := &listFlags{}
	fs := flag.NewFlagSet("list", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.BoolVar(&l.allow, "allow", false, "the allowlist")
	fs.BoolVar(&l.json, "json", false, "JSON output")
	fs.StringVar(&l.scope, "scope", "", "one scope")
	fs.IntVar(&l.limit, "limit", defaultLimit, "most entries shown")
	l.conn.register(fs)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return nil, err
	}
	if len(pos) > 0 {
		return nil, fmt.Errorf("unexpected argument %s (use --scope to choose a scope)", strconv.Quote(pos[0]))
	}
	scopeGiven := false
	fs.Visit(func(f *flag.Flag) { scopeGiven = scopeGiven || f.Name == "scope" })
	if scopeGiven {
		if _, err := keys.ParseScope(l.scope); err != nil {
			return nil, fmt.Errorf("--scope: %s", strings.TrimPrefix(err.Error(), "keys: "))
		}
	}
	if l.limit < 1 {
		return nil, fmt.Errorf("--limit %d: expected a number of entries, 1 or more", l.limit)
	}
	return l, nil
}

// runList is guardctl list.
func runList(args []string, stdout, stderr io.Writer) int {
	l, err := parseListFlags(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stdout, listUsage+connUsage+listFooter)
		return exitOK
	case err != nil:
		fmt.Fprintf(stderr, "guardctl: list: %v\nRun 'guardctl list -h' for usage.\n", err)
		return exitUsage
	}
	if err := l.run(context.Background(), os.Getenv, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "guardctl: %v\n", err)
		return exitError
	}
	return exitOK
}

// listing is the result of one guardctl list.
type listing struct {
	Kind    keys.Kind
	Prefix  string
	Scope   string // "" for every scope
	Entries []listEntry
	Total   int // entries found, shown or not (keys gone or holding no string left out)
	More    int // entries found but not shown, beyond --limit
}

// listEntry is one allow or block key.
type listEntry struct {
	Key     string
	Scope   keys.Scope
	Value   string
	Reason  string
	Expires time.Time // zero: never

	addr netip.Addr   // ip scope, when the value is an address: its place in the order
	pfx  netip.Prefix // cidr scope, likewise
}

// run connects, collects the entries and writes them.
func (l *listFlags) run(ctx context.Context, getenv func(string) string, stdout, stderr io.Writer) error {
	st, addrs, err := l.conn.store(getenv)
	if err != nil {
		return err
	}
	defer st.Close()
	if err := ping(ctx, st); err != nil {
		return redisError(addrs, err)
	}
	kind := keys.Block
	if l.allow {
		kind = keys.Allow
	}
	ls, err := collectList(ctx, st, kind, l.scope, l.limit, stderr)
	if err != nil {
		return redisError(addrs, err)
	}
	render := renderListTable
	if l.json {
		render = renderListJSON
	}
	if err := render(stdout, ls); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return nil
}

// ping checks that Redis answers. As the first command, it dials: the dial
// is bounded as a whole, since go-redis retries failed dials on its own.
func ping(ctx context.Context, st *store.Store) error {
	ctx, cancel := context.WithTimeout(ctx, redisTimeout)
	defer cancel()
	return st.Client().Ping(ctx).Err()
}

// collectList finds the keys of kind (and scope, unless empty), keeps the
// first limit of them in order and reads their values and expiries. Keys
// the plugin can never match are named on stderr.
func collectList(ctx context.Context, st *store.Store, kind keys.Kind, scope string, limit int, stderr io.Writer) (listing, error) {
	kb := st.Keys()
	pattern := keys.GlobEscape(kb.Prefix) + string(kind) + ":"
	if scope != "" {
		pattern += scope + ":"
	}
	pattern += "*"

	top := topN{limit: limit}
	var odd []string // the first keys under the pattern that are no list key (unknown scope)
	nodd := 0
	var mu sync.Mutex
	err := scanKeys(ctx, st.Client(), pattern, func(key string) {
		e, ok := newEntry(kb, key)
		mu.Lock()
		defer mu.Unlock()
		if !ok {
			if nodd++; len(odd) < 10 {
				odd = append(odd, key)
			}
			return
		}
		top.add(e)
	})
	if err != nil {
		return listing{}, err
	}
	for _, k := range odd {
		fmt.Fprintf(stderr, "guardctl: %s is no list key (unknown scope), which the plugin ignores; not shown\n", showKey(k))
	}
	if nodd > len(odd) {
		fmt.Fprintf(stderr, "guardctl: and %d more keys of unknown scope\n", nodd-len(odd))
	}
	chosen, total := top.result()
	entries, notString, err := fetchEntries(ctx, st.Client(), chosen)
	if err != nil {
		return listing{}, err
	}
	for _, k := range notString {
		fmt.Fprintf(stderr, "guardctl: %s holds no string; not shown\n", showKey(k))
	}
	for _, e := range entries {
		if why := neverMatches(e); why != "" {
			fmt.Fprintf(stderr, "guardctl: %s can never match: %s\n", showKey(e.Key), why)
		}
	}
	more := total - len(chosen)
	return listing{Kind: kind, Prefix: kb.Prefix, Scope: scope, Entries: entries, Total: len(entries) + more, More: more}, nil
}

// newEntry parses a key found by SCAN; ok is false when it is no list key.
func newEntry(kb keys.Builder, key string) (e listEntry, ok bool) {
	_, scope, value, ok := kb.Split(key)
	if !ok {
		return listEntry{}, false
	}
	e = listEntry{Key: key, Scope: scope, Value: value}
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
func compareEntries(a, b listEntry) int {
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
	kept  []listEntry
	total int
}

func (t *topN) add(e listEntry) {
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
	t.kept = slices.CompactFunc(t.kept, func(a, b listEntry) bool { return a.Key == b.Key })
	t.total -= n - len(t.kept)
	clear(t.kept[len(t.kept):n])
	if len(t.kept) > t.limit {
		clear(t.kept[t.limit:])
		t.kept = t.kept[:t.limit]
	}
}

// result returns the first limit entries in order, and how many entries
// there were.
func (t *topN) result() ([]listEntry, int) {
	t.compact()
	return t.kept, t.total
}

// scanKeys calls fn with every string key matching pattern, on each master
// of a cluster. On a cluster fn is called from one goroutine per master at
// once.
func scanKeys(ctx context.Context, rdb redis.UniversalClient, pattern string, fn func(key string)) error {
	scan := func(ctx context.Context, c *redis.Client) error {
		found := false
		err := scanPages(ctx, c, pattern, "string", func(key string) { found = true; fn(key) })
		var rerr redis.Error
		if !found && errors.As(err, &rerr) {
			// A server without SCAN TYPE (before Redis 6.0): scan every
			// type; fetchEntries leaves out what holds no string.
			return scanPages(ctx, c, pattern, "", fn)
		}
		return err
	}
	switch c := rdb.(type) {
	case *redis.Client:
		return scan(ctx, c)
	case *redis.ClusterClient:
		return c.ForEachMaster(ctx, scan)
	}
	return fmt.Errorf("unsupported Redis client %T", rdb)
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

// fetchEntries reads the reason and remaining lifetime of entries, in
// pipelines of GET and PTTL. Entries whose key is gone by now are dropped;
// so are keys that hold no string, which are returned apart.
func fetchEntries(ctx context.Context, rdb redis.UniversalClient, entries []listEntry) (kept []listEntry, notString []string, err error) {
	kept = make([]listEntry, 0, len(entries))
	for batch := range slices.Chunk(entries, fetchBatch) {
		pipe := rdb.Pipeline()
		gets := make([]*redis.StringCmd, len(batch))
		ttls := make([]*redis.DurationCmd, len(batch))
		for i, e := range batch {
			gets[i] = pipe.Get(ctx, e.Key)
			ttls[i] = pipe.PTTL(ctx, e.Key)
		}
		_, _ = pipe.Exec(ctx) // each command's error is looked at below
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

// neverMatches says why the plugin can never match e, or "" when it can: an
// ip key that is no canonical address (keys.ParseIPKey) or a range key that
// is no canonical network (keys.ParseCIDR), as the plugin reports them too.
func neverMatches(e listEntry) string {
	var err error
	switch e.Scope {
	case keys.IP:
		_, err = keys.ParseIPKey(e.Value)
	case keys.CIDR:
		_, err = keys.ParseCIDR(e.Value)
	}
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

// origin is "auto" for the plugin's automatic bans, else "operator".
func (e listEntry) origin() string {
	return store.Match{Reason: e.Reason}.Origin()
}

// noun names n entries of ls's list.
func (ls listing) noun(n int) string {
	one, many := "ban", "bans"
	if ls.Kind == keys.Allow {
		one, many = "allowlist entry", "allowlist entries"
	}
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}

// renderListTable writes ls as a table under a summary line.
func renderListTable(w io.Writer, ls listing) error {
	scope := ""
	if ls.Scope != "" {
		scope = " with scope " + ls.Scope
	}
	var err error
	switch {
	case len(ls.Entries) == 0 && ls.More == 0:
		none := "bans"
		if ls.Kind == keys.Allow {
			none = "allowlist entries"
		}
		_, err = fmt.Fprintf(w, "no %s%s\n", none, scope)
		return err
	case ls.More > 0:
		_, err = fmt.Fprintf(w, "%s%s, the first %d shown; %d more not shown (--limit)\n", ls.noun(ls.Total), scope, len(ls.Entries), ls.More)
	default:
		_, err = fmt.Fprintf(w, "%s%s\n", ls.noun(len(ls.Entries)), scope)
	}
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SCOPE\tVALUE\tORIGIN\tEXPIRES\tREASON")
	for _, e := range ls.Entries {
		expires := "never"
		if !e.Expires.IsZero() {
			expires = e.Expires.UTC().Round(time.Second).Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Scope, cell(e.Value), e.origin(), expires, logval.Fit(e.Reason, maxCell))
	}
	return tw.Flush()
}

// jsonEntry is an entry in guardctl list --json.
type jsonEntry struct {
	Key         string     `json:"key"`
	Scope       keys.Scope `json:"scope"`
	Value       string     `json:"value"`
	ValueBase64 string     `json:"value_base64,omitempty"`
	Origin      string     `json:"origin"`
	Reason      string     `json:"reason"`
	ExpiresMs   *int64     `json:"expires_ms"`
}

// renderListJSON writes ls as one JSON document.
func renderListJSON(w io.Writer, ls listing) error {
	entries := make([]jsonEntry, 0, len(ls.Entries))
	for _, e := range ls.Entries {
		je := jsonEntry{Key: e.Key, Scope: e.Scope, Value: e.Value, Origin: e.origin(), Reason: e.Reason}
		if !utf8.ValidString(e.Value) {
			je.ValueBase64 = base64.StdEncoding.EncodeToString([]byte(e.Value))
		}
		if !e.Expires.IsZero() {
			ms := e.Expires.UnixMilli()
			je.ExpiresMs = &ms
		}
		entries = append(entries, je)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(struct {
		List    keys.Kind   `json:"list"`
		Prefix  string      `json:"prefix"`
		Scope   string      `json:"scope,omitempty"`
		Total   int         `json:"total"`
		More    int         `json:"more"`
		Entries []jsonEntry `json:"entries"`
	}{ls.Kind, ls.Prefix, ls.Scope, ls.Total, ls.More, entries})
}
