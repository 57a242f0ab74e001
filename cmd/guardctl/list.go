package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// defaultLimit is how many entries guardctl list shows without --limit.
const defaultLimit = 1000

const listUsage = `Usage: guardctl list [--allow] [--scope SCOPE] [--limit N] [--json] [connection flags]

List the bans (the keys <prefix>block:*), or with --allow the allowlist
(<prefix>allow:*), found with SCAN on the Redis, or on every master of a
Redis Cluster, with who set each one, when it ends and why. Sorted by scope,
then value (addresses and ranges in address order). ORIGIN is auto for the
plugin's automatic bans (reason starting with "auto:"), else operator.
Values and reasons are untrusted: the table shows a value quoted (Go syntax)
when it holds odd bytes, every reason quoted, both cut to 60 bytes ("..."
after), but a certificate ID, and a clientid or username value that is a
tracking form (sha256: and 64 hex digits: the automatic bans of a value over
256 bytes or starting with sha256:), are shown whole. Keys that hold no string are
left out; keys the plugin can never match (an ip or cidr value not in
canonical form, a cert value not 64 lower-case hex digits) are named on
stderr.

Flags:
  --allow           the allowlist instead of the bans
  --scope SCOPE     only the entries of one scope: clientid, ip, cidr,
                    username or cert
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
  guardctl list --scope cert
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
	return runSub("list", listUsage+connUsage+listFooter, err, stdout, stderr,
		func() error { return l.run(context.Background(), os.Getenv, stdout, stderr) })
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
	ls, err := st.List(ctx, kind, keys.Scope(l.scope), l.limit)
	if err != nil {
		return redisError(addrs, err)
	}
	warnList(stderr, ls)
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

// warnList names on stderr the keys ls leaves out and the entries the
// plugin can never match.
func warnList(w io.Writer, ls store.Listing) {
	for _, k := range ls.UnknownScope {
		fmt.Fprintf(w, "guardctl: %s is no list key (unknown scope), which the plugin ignores; not shown\n", showKey(k))
	}
	if ls.UnknownScopeMore > 0 {
		fmt.Fprintf(w, "guardctl: and %d more keys of unknown scope\n", ls.UnknownScopeMore)
	}
	for _, k := range ls.NotString {
		fmt.Fprintf(w, "guardctl: %s holds no string; not shown\n", showKey(k))
	}
	for _, e := range ls.Entries {
		if why := e.NeverMatches(); why != "" {
			fmt.Fprintf(w, "guardctl: %s can never match: %s\n", showKey(e.Key), why)
		}
	}
}

// noun names n entries of the list kind.
func noun(kind keys.Kind, n int) string {
	one, many := "ban", "bans"
	if kind == keys.Allow {
		one, many = "allowlist entry", "allowlist entries"
	}
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}

// renderListTable writes ls as a table under a summary line.
func renderListTable(w io.Writer, ls store.Listing) error {
	scope := ""
	if ls.Scope != "" {
		scope = " with scope " + string(ls.Scope)
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
		_, err = fmt.Fprintf(w, "%s%s, the first %d shown; %d more not shown (--limit)\n", noun(ls.Kind, ls.Total), scope, len(ls.Entries), ls.More)
	default:
		_, err = fmt.Fprintf(w, "%s%s\n", noun(ls.Kind, len(ls.Entries)), scope)
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
		value := cell(e.Value)
		if (e.Scope == keys.Cert && keys.IsCertID(e.Value)) || ((e.Scope == keys.ClientID || e.Scope == keys.Username) && keys.IsTrackingHash(e.Value)) {
			value = e.Value // 64 hex digits, or sha256: and 64: shown whole, to be copied into unban
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Scope, value, e.Origin(), expires, logval.Fit(e.Reason, maxCell))
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
func renderListJSON(w io.Writer, ls store.Listing) error {
	entries := make([]jsonEntry, 0, len(ls.Entries))
	for _, e := range ls.Entries {
		je := jsonEntry{Key: e.Key, Scope: e.Scope, Value: e.Value, Origin: e.Origin(), Reason: e.Reason}
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
		Scope   keys.Scope  `json:"scope,omitempty"`
		Total   int         `json:"total"`
		More    int         `json:"more"`
		Entries []jsonEntry `json:"entries"`
	}{ls.Kind, ls.Prefix, ls.Scope, ls.Total, ls.More, entries})
}
