package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/ratelimit"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// explainFindingsScan bounds the findings stream entries explain reads,
// newest first, looking for the client ID's: findings_max's default, so
// that a stream of the default length is read whole.
const explainFindingsScan = 10000

const explainUsage = `Usage: guardctl explain [--clientid ID] [--ip IP] [--username NAME]
                        [--cert ID|FILE] [--json] [limit flags] [connection flags]

Say why mosquitto-guard would refuse or accept a client, from what Redis
holds, as the plugin decides it at CONNECT: every allow and block entry that
matches (client ID, username, certificate, IP, and every range containing
the IP), who set each one, when, for how long and why, and which one decides
(an allow entry on proof, ip, cidr or cert, lifts every ban; one on a claim,
clientid or username, lifts only clientid and username bans); the failure
counts the plugin keeps for the client (how many more failures before an
automatic ban, the offences so far and the next ban's length); whether the
username is throttled; and the client ID's live connections, the principals
that used it within conflict_window and its conflict findings.

It reads Redis only, never writes, and needs no broker. A Redis user with
this ACL is enough (key_prefix guard: shown; add +select for a redis_db
other than 0):
  ACL SETUSER explain on >PASSWORD resetchannels ~guard:* ~rate:guard:* -@all +@read +time +ping
"accepted" means no list entry refuses the client: its password is still
checked. Not shown: each broker's own in-memory failure count, which may
refuse a source (rule=fail-limit) a little before Redis bans it.

Identity (at least one; give what the client sends):
  --clientid ID     its client ID, exactly (any bytes; empty: the broker
                    assigns one, or refuses, before the plugin sees it)
  --ip IP           the address it connects from: IPv4, or IPv6 (an
                    IPv4-mapped ::ffff:192.0.2.1 counts as 192.0.2.1)
  --username NAME   its username, exactly (may be empty)
  --cert ID|FILE    its client certificate: the ID (SHA-256 of the DER, in
                    any form openssl prints) or a PEM file holding it

Output:
  --json            one JSON document instead of the text (see below)

Limits (the plugin's options: from --config when given, else the defaults;
a flag beats both; the output says which value came from where):
  --fail-limit N, --fail-window D, --ban-time D, --ban-max D,
  --fail-scopes LIST, --fail-ipv6-prefix N, --username-fail-limit N,
  --conflict-window D, --clientid-max-bytes N, --username-max-bytes N

JSON: {"identity": {"clientid", "ip", "username", "cert"} (those given;
"clientid_base64"/"username_base64" too when not valid UTF-8;
"clientid_assigned": true for an empty client ID, which the broker
replaces, or refuses, before the plugin sees it),
"limits": {"fail_limit", "fail_window_ms", "ban_time_ms", "ban_max_ms",
"fail_scopes", "fail_ipv6_prefix", "username_fail_limit",
"conflict_window_ms", "clientid_max_bytes", "username_max_bytes", "backend", "clientid_conflict" (null without
--config), "from": {option: "default" | "--FLAG" | "file:line"}},
"entries": [{"key", "list": "allow"|"block", "scope", "value", "origin":
"auto"|"operator", "reason", "set_ms": unix ms or null (unknown), "ttl_ms":
ms or null (permanent), "role": "decides"|"outranked"|"lifted"|"counts"|
"unused", "lifted_by": key (role lifted)}],
"ignored": [{"key", "type", "line"}] (keys of another type than string
where an entry would be: the plugin skips them),
"verdict": {"result": "refused"|"accepted", "line", "block", "allow",
"lifted": [key], "rule": "clientid-too-long"|"username-too-long" when the
client ID or username is over its bound, or the client ID is empty and
the broker's own (41 bytes with the default auto_id_prefix) would be (then
refused whatever the entries)},
"failures": {"exempt_by": key or null, "keys":
[{"scope", "value", "counter", "counted", "allowed", "ban_at",
"full_in_ms", "banned_by": key or null, "ban_lifted_by": the allow
entry that lifts that ban for this client, or null, "offences",
"offences_forget_ms": ms, null (none) or -1 (never), "next_ban_ms"}]},
"throttle": null or {"username", "key", "throttled", "applies": false
when the plugin would not hold this client to a throttle, "ignored": why
(username_fail_limit 0, backend defer, an allow entry on proof), "origin",
"reason", "set_ms", "ttl_ms", "limit", "counter": null (off) or {"key",
"counted", "allowed", "throttle_at", "full_in_ms"}},
"clientid_state": null or {"clientid", "tracking", "live": [{"broker",
"instance", "principal", "ip", "since_ms", "lease_runs"}], "seen":
[{"principal", "ip", "broker", "connected_ms", "disconnected_ms"}],
"seen_older": n, "findings": [finding as in guardctl audit --json],
"findings_scanned": n, "findings_total": n, "findings_scan_max": n}}

`

const explainFooter = `
Exit status: 0 ok (refused or accepted alike), 1 runtime error (such as Redis
unreachable), 2 usage error.

Examples:
  guardctl explain --ip 203.0.113.7 --config /etc/mosquitto/mosquitto.conf
  guardctl explain --clientid sensor-17 --username alice --ip 192.0.2.8
  guardctl explain --cert /etc/fleet/dev-17.pem --json
`

// explainFlags are the parsed arguments of guardctl explain.
type explainFlags struct {
	conn   connFlags
	limits limitValues
	json   bool

	clientID, username string
	hasClientID        bool
	hasUsername        bool
	ip                 netip.Addr
	cert               string // the certificate ID, "" without --cert
}

// parseExplainFlags parses the arguments of guardctl explain. It returns
// flag.ErrHelp for -h, and any other error for a usage error.
func parseExplainFlags(args []string) (*explainFlags, error) {
	e := &explainFlags{limits: limitValues{}}
	fs := flag.NewFlagSet("explain", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	var ip, cert string
	fs.StringVar(&e.clientID, "clientid", "", "client ID")
	fs.StringVar(&e.username, "username", "", "username")
	fs.StringVar(&ip, "ip", "", "IP address")
	fs.StringVar(&cert, "cert", "", "certificate ID or PEM file")
	fs.BoolVar(&e.json, "json", false, "JSON output")
	e.limits.register(fs)
	e.conn.register(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (the identity goes in --clientid, --ip, --username, --cert)", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	e.hasClientID, e.hasUsername = given["clientid"], given["username"]
	if !e.hasClientID && !e.hasUsername && !given["ip"] && !given["cert"] {
		return nil, errors.New("nothing to explain: give at least one of --clientid, --ip, --username, --cert")
	}
	if given["ip"] {
		a, err := keys.NormalizeIP(ip)
		if err != nil {
			return nil, fmt.Errorf("--ip %q: expected %s", ip, expected(keys.IP))
		}
		e.ip = a
	}
	if given["cert"] {
		id, err := certValue(cert)
		if err != nil {
			return nil, fmt.Errorf("--cert: %v", err)
		}
		e.cert = id
	}
	return e, nil
}

// runExplain is guardctl explain.
func runExplain(args []string, stdout, stderr io.Writer) int {
	e, err := parseExplainFlags(args)
	return runSub("explain", explainUsage+connUsage+explainFooter, err, stdout, stderr,
		func() error { return e.run(context.Background(), os.Getenv, stdout) })
}

// run connects, collects and writes the explanation.
func (e *explainFlags) run(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	lim, err := resolveLimits(e.conn.config, e.limits)
	if err != nil {
		return err
	}
	st, addrs, err := e.conn.store(getenv)
	if err != nil {
		return err
	}
	defer st.Close()
	if err := ping(ctx, st); err != nil {
		return redisError(addrs, err)
	}
	x, err := e.collect(ctx, st, lim)
	if err != nil {
		return redisError(addrs, err)
	}
	render := renderExplainText
	if e.json {
		render = renderExplainJSON
	}
	if err := render(stdout, x); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return nil
}

// explanation is everything explain found, for the renderers.
type explanation struct {
	flags  *explainFlags
	limits limits
	kb     keys.Builder
	now    time.Time

	allows, blocks []*store.Match // most specific first
	allow, block   *store.Match   // store.Resolve's answer
	throttle       *store.Match
	ignored        []store.Ignored // keys of another type than string: the plugin skips them

	exempt   *store.Match // the allow entry on proof that keeps failures from counting
	failures []ratelimit.State
	counter  *ratelimit.Count // the username's count toward its throttle; nil when off or no username

	clientID *store.ClientIDState
}

// collect reads everything from Redis, each step bounded by redisTimeout.
func (e *explainFlags) collect(ctx context.Context, st *store.Store, lim limits) (*explanation, error) {
	x := &explanation{flags: e, limits: lim, kb: st.Keys(), now: time.Now()}
	step := func(fn func(ctx context.Context) error) error {
		ctx, cancel := context.WithTimeout(ctx, redisTimeout)
		defer cancel()
		return fn(ctx)
	}
	q := store.Query{ClientID: e.clientID, IP: e.ip, Username: e.username, HasUsername: e.hasUsername, Cert: e.cert}
	withID := e.seesClientID()
	err := step(func(ctx context.Context) error {
		m, err := st.Matching(ctx, q, withID)
		x.allows, x.blocks, x.throttle, x.ignored = m.Allows, m.Blocks, m.Throttle, m.Ignored
		return err
	})
	if err != nil {
		return nil, err
	}
	// The decision is the plugin's own: the code its CONNECT path runs.
	x.allow, x.block = store.Resolve(x.allows, x.blocks)
	if store.Exempt(x.allow) {
		x.exempt = x.allow
	}

	rl := ratelimit.New(st.Client(), st.Keys(), lim.Policy)
	for _, scope := range lim.FailScopes {
		if (scope == keys.ClientID && !withID) || (scope == keys.Username && !e.hasUsername) {
			continue
		}
		s, v, ok := keys.FailKey(scope, e.ip, lim.FailIPv6Prefix, e.clientID, e.username)
		if !ok {
			continue
		}
		err := step(func(ctx context.Context) error {
			fs, err := rl.Peek(ctx, s, v)
			x.failures = append(x.failures, fs)
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	if e.hasUsername && lim.UsernameFailLimit > 0 {
		err := step(func(ctx context.Context) error {
			c, err := rl.PeekThrottle(ctx, e.username, lim.UsernameFailLimit)
			x.counter = &c
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	if withID {
		err := step(func(ctx context.Context) error {
			cs, err := st.ClientIDState(ctx, e.clientID, lim.ConflictWindow, x.now, explainFindingsScan)
			x.clientID = &cs
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	return x, nil
}

// seesClientID says whether the plugin sees the client ID given. An empty
// one never reaches it: Mosquitto (handle_connect.c) assigns the client an
// ID of its own (auto_id_prefix, then a random UUID) under MQTT 3.1.1 with
// clean session or MQTT 5 when allow_zero_length_clientid is true, its
// default, and otherwise refuses the CONNECT itself (MQTT 3.1 always). So no
// entry or count on a client ID applies to it.
func (e *explainFlags) seesClientID() bool { return e.hasClientID && e.clientID != "" }

// assignedIDBytes is the length of the ID the broker gives a client that
// sends an empty one: auto_id_prefix's default "auto-" and a 36-byte UUID.
const assignedIDBytes = len("auto-") + 36

// assignedIDNote says what the broker does with an empty client ID.
const assignedIDNote = `the client ID is empty, and the plugin never sees an empty one: the broker gives the client an ID of its own ` +
	`(auto_id_prefix, "auto-" by default, then a random UUID) under MQTT 3.1.1 with clean session or MQTT 5 ` +
	`when allow_zero_length_clientid is true (the default), and otherwise refuses the CONNECT itself (MQTT 3.1 always); ` +
	`no clientid entry or count applies`

// ignoredText says what a key of another type does: nothing, as the
// replica skips it (replica.Sync.fetch, which logs "it holds another type
// than a string (WRONGTYPE), so it bans or allows nothing").
func ignoredText(g store.Ignored) string {
	what := "bans"
	switch {
	case g.Throttle:
		what = "throttles"
	case g.Kind == keys.Allow:
		what = "allows"
	}
	return fmt.Sprintf("%s nothing: holds a %s, not a string (the plugin skips it, and logs it once)", what, g.Type)
}

// role says what an entry does in the decision, and the allow entry that
// lifts it (role "lifted").
func (x *explanation) role(m *store.Match) (role string, by *store.Match) {
	switch {
	case m.Kind == keys.Allow && m == x.allow:
		return "counts", nil
	case m.Kind == keys.Allow:
		return "unused", nil
	case m == x.block:
		return "decides", nil
	case x.allow != nil && keys.Exempts(x.allow.Scope, m.Scope):
		return "lifted", x.allow
	}
	return "outranked", nil
}

// throttleIgnored says why the plugin would not hold this client to its
// username's throttle, as plugin.authenticate and checkLimits decide; ""
// when it would (then only a source that authenticated as the username
// within conflict_window passes).
func (x *explanation) throttleIgnored(show func(string) string) string {
	switch {
	case x.limits.UsernameFailLimit <= 0:
		// plugin.NewWith keeps no known sources then, and checkLimits
		// looks at no throttle.
		return "username_fail_limit is 0: the plugin keeps no throttle and ignores throttle keys"
	case !x.limits.Backend.Checks(x.flags.hasUsername):
		return "backend defer checks no password: no failure limit or throttle applies"
	case x.exempt != nil:
		return show(x.exempt.Key) + " exempts this client from the failure limits and the throttle (an allow entry on proof)"
	}
	return ""
}

// lifted returns the block entries the allow entry that counts lifts.
func (x *explanation) lifted() []*store.Match {
	var out []*store.Match
	for _, b := range x.blocks {
		if r, _ := x.role(b); r == "lifted" {
			out = append(out, b)
		}
	}
	return out
}

// bannedBy returns the block entry of a counted key, when it is banned.
func (x *explanation) bannedBy(fs ratelimit.State) *store.Match {
	for _, b := range x.blocks {
		if b.Scope == fs.Scope && b.Value == fs.Value {
			return b
		}
	}
	return nil
}

// verdict is the one-line answer: "refused by KEY (ORIGIN, LEFT: REASON)",
// "accepted: no entry", or "accepted: ALLOW lifts BLOCK, ...".
func (x *explanation) verdict(show func(string) string) string {
	if rule, line := x.tooLong(); rule != "" {
		return line
	}
	if b := x.block; b != nil {
		line := fmt.Sprintf("refused by %s (%s, %s: %s)", show(b.Key), b.Origin(), left(b.TTL), show(b.Reason))
		if x.allow != nil {
			line += fmt.Sprintf("; %s does not lift it (an allow entry on a claim lifts only clientid and username bans)", show(x.allow.Key))
		}
		return line
	}
	if x.allow == nil {
		return "accepted: no entry"
	}
	lifted := x.lifted()
	if len(lifted) == 0 {
		return fmt.Sprintf("accepted: %s (no block entry to lift)", show(x.allow.Key))
	}
	names := make([]string, len(lifted))
	for i, b := range lifted {
		names[i] = show(b.Key)
	}
	return fmt.Sprintf("accepted: %s lifts %s", show(x.allow.Key), strings.Join(names, ", "))
}

// tooLong is the plugin's refusal of a client ID or username over
// clientid_max_bytes or username_max_bytes, which comes before every list
// entry and password: its rule and verdict line, or "" when neither is.
func (x *explanation) tooLong() (rule, line string) {
	f, l := x.flags, x.limits
	switch {
	case f.seesClientID() && l.ClientIDMaxBytes > 0 && len(f.clientID) > l.ClientIDMaxBytes:
		return "clientid-too-long", fmt.Sprintf("refused: clientid-too-long (%d bytes, over clientid_max_bytes %d): before any entry, its password unchecked and no failure counted",
			len(f.clientID), l.ClientIDMaxBytes)
	case f.hasClientID && f.clientID == "" && l.ClientIDMaxBytes > 0 && l.ClientIDMaxBytes < assignedIDBytes:
		// The plugin sees the broker's own ID, over the bound, or no
		// CONNECT at all (the broker refuses it): refused either way.
		return "clientid-too-long", fmt.Sprintf("refused: clientid-too-long (the client ID is empty: the broker's own, auto-<UUID>, is %d bytes with the default auto_id_prefix, over clientid_max_bytes %d; "+
			"a broker that assigns none refuses the CONNECT itself): before any entry, its password unchecked and no failure counted",
			assignedIDBytes, l.ClientIDMaxBytes)
	case f.hasUsername && l.UsernameMaxBytes > 0 && len(f.username) > l.UsernameMaxBytes:
		return "username-too-long", fmt.Sprintf("refused: username-too-long (%d bytes, over username_max_bytes %d): before any entry, its password unchecked and no failure counted",
			len(f.username), l.UsernameMaxBytes)
	}
	return "", ""
}

// left says how long an entry has left: "6d 3h left", or "permanent".
func left(ttl time.Duration) string {
	if ttl < 0 {
		return "permanent"
	}
	return human(ttl) + " left"
}

// human writes a duration in its two largest units, rounded to the
// smaller: "6d 3h", "5m 20s", "42s"; "<1s" under a second.
func human(d time.Duration) string {
	if d <= 0 {
		return "0s"
	}
	units := []struct {
		d    time.Duration
		name string
	}{{24 * time.Hour, "d"}, {time.Hour, "h"}, {time.Minute, "m"}, {time.Second, "s"}}
	for i, u := range units[:len(units)-1] {
		small := units[i+1]
		r := d.Round(small.d)
		if r < u.d {
			continue
		}
		if rest := (r % u.d) / small.d; rest != 0 {
			return fmt.Sprintf("%d%s %d%s", r/u.d, u.name, rest, small.name)
		}
		return fmt.Sprintf("%d%s", r/u.d, u.name)
	}
	if d < time.Second {
		return "<1s"
	}
	return fmt.Sprintf("%ds", d.Round(time.Second)/time.Second)
}

// ordinal writes n as "1st", "2nd", "3rd", "4th", "11th", ...
func ordinal(n int) string {
	suffix := "th"
	switch n % 100 {
	case 11, 12, 13:
	default:
		switch n % 10 {
		case 1:
			suffix = "st"
		case 2:
			suffix = "nd"
		case 3:
			suffix = "rd"
		}
	}
	return fmt.Sprintf("%d%s", n, suffix)
}
