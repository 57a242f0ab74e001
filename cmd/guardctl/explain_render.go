package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/ratelimit"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// The text shows every client-chosen value (client ID, username,
// principal) quoted as log lines quote them (logval), a key as it is when it
// is plain (showText) and otherwise quoted, cut at logval.Max bytes.

// showText shows a key or a reason as it is when it is plain text (valid
// UTF-8, printable, at most logval.Max bytes, no leading or trailing space),
// else quoted.
func showText(s string) string {
	if s == "" || len(s) > logval.Max || !utf8.ValidString(s) || strings.TrimSpace(s) != s {
		return logval.Quote(s)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return logval.Quote(s)
		}
	}
	return s
}

// valueText shows the value of an entry or counter: addresses, ranges and
// certificate IDs as they are, claims quoted.
func valueText(scope keys.Scope, v string) string {
	if scope == keys.ClientID || scope == keys.Username {
		return logval.Quote(v)
	}
	return showText(v)
}

// setText says when an entry was set: the time an automatic one carries, or
// "unknown".
func setText(m *store.Match) string {
	if at, ok := ratelimit.BannedAt(m.Reason); ok {
		return at.UTC().Format(time.RFC3339)
	}
	return "unknown"
}

func renderExplainText(w io.Writer, x *explanation) error {
	f := x.flags
	var who []string
	if f.hasClientID {
		who = append(who, "client_id="+logval.Quote(f.clientID))
	}
	if f.ip.IsValid() {
		who = append(who, "ip="+f.ip.String())
	}
	if f.hasUsername {
		who = append(who, "username="+logval.Quote(f.username))
	}
	if f.cert != "" {
		who = append(who, "cert_id="+f.cert)
	}
	fmt.Fprintf(w, "Client: %s\n", strings.Join(who, " "))
	writeLimits(w, x.limits, f.conn.config)

	fmt.Fprintln(w)
	if len(x.allows)+len(x.blocks) == 0 {
		fmt.Fprintln(w, "Entries: none matches")
	} else {
		fmt.Fprintln(w, "Entries that match, most specific first:")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  ROLE\tKEY\tORIGIN\tSET\tLEFT\tREASON")
		for _, m := range append(append([]*store.Match{}, x.blocks...), x.allows...) {
			role, by := x.role(m)
			if by != nil {
				role += " by " + showText(by.Key)
			}
			ttl := "permanent"
			if m.TTL >= 0 {
				ttl = human(m.TTL)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", role, showText(m.Key), m.Origin(), setText(m), ttl, logval.Fit(m.Reason, maxCell))
		}
		tw.Flush()
	}
	if len(x.ignored) > 0 {
		fmt.Fprintln(w, "Ignored, of another type than string:")
		for _, g := range x.ignored {
			fmt.Fprintf(w, "  %s: %s\n", showText(g.Key), ignoredText(g))
		}
	}
	fmt.Fprintf(w, "\nVerdict: %s\n", x.verdict(showText))
	if rule, _ := x.tooLong(); rule == "" && x.block == nil && x.throttle != nil {
		if why := x.throttleIgnored(showText); why != "" {
			fmt.Fprintf(w, "  the username is throttled, but not for this client: %s (see Username)\n", why)
		} else {
			fmt.Fprintf(w, "  but the username is throttled: unless this source authenticated as it within conflict_window, it is refused unchecked (see Username)\n")
		}
	}

	if f.hasClientID && !f.seesClientID() {
		fmt.Fprintf(w, "  %s\n", assignedIDNote)
	}

	writeFailures(w, x)
	if f.hasUsername {
		writeThrottle(w, x)
	}
	if x.clientID != nil {
		writeClientID(w, x)
	}
	return nil
}

func writeLimits(w io.Writer, l limits, confPath string) {
	var vals, from []string
	for _, name := range limitOptions {
		vals = append(vals, name+" "+l.show(name))
		if src := l.From[name]; src != "default" {
			from = append(from, name+" from "+src)
		}
	}
	fmt.Fprintf(w, "Limits: %s\n", strings.Join(vals, ", "))
	switch {
	case len(from) == 0 && confPath == "":
		fmt.Fprintln(w, "  (the plugin's defaults; --config reads the broker's)")
	case len(from) == 0:
		fmt.Fprintln(w, "  (the plugin's defaults: the config sets none of them)")
	default:
		fmt.Fprintf(w, "  (%s; the rest the plugin's defaults)\n", strings.Join(from, "; "))
	}
}

func writeFailures(w io.Writer, x *explanation) {
	f := x.flags
	fmt.Fprintf(w, "\nFailures (fail_scopes %s; the counts in Redis, shared by every broker):\n", x.limits.show("fail_scopes"))
	switch {
	case x.limits.Backend == config.BackendDefer && f.conn.config != "":
		fmt.Fprintln(w, "  none counted: backend defer checks no password here, so no failure is counted and nothing banned automatically")
	case x.exempt != nil:
		fmt.Fprintf(w, "  not counted for this client: %s exempts it (an allow entry on proof)\n", showText(x.exempt.Key))
	}
	for _, scope := range x.limits.FailScopes {
		switch {
		case scope == keys.ClientID && !f.hasClientID:
			fmt.Fprintln(w, "  clientid: no --clientid given")
		case scope == keys.ClientID && !f.seesClientID():
			fmt.Fprintln(w, "  clientid: the broker assigns the ID, a new one each time: no count builds up")
		case scope == keys.Username && !f.hasUsername:
			fmt.Fprintln(w, "  username: no --username given")
		case scope == keys.IP && !f.ip.IsValid():
			fmt.Fprintln(w, "  ip: no --ip given")
		}
	}
	for _, fs := range x.failures {
		fmt.Fprintf(w, "  %s %s: %d counted, %s (%s)\n", fs.Scope, valueText(fs.Scope, fs.Value),
			fs.Counted, moreBefore(fs.Allowed, "bans"), refill(fs.Count))
		if b := x.bannedBy(fs); b != nil {
			if role, by := x.role(b); role == "lifted" {
				fmt.Fprintf(w, "    banned now by %s (%s, %s), lifted for this client by %s: the ban does not refuse it\n",
					showText(b.Key), b.Origin(), left(b.TTL), showText(by.Key))
			} else {
				fmt.Fprintf(w, "    banned now by %s (%s, %s): its attempts are refused unchecked and not counted\n", showText(b.Key), b.Origin(), left(b.TTL))
			}
		}
		forget := ""
		switch {
		case fs.Offences > 0 && fs.Forget > 0:
			forget = " (forgotten in " + human(fs.Forget) + ")"
		case fs.Offences > 0 && fs.Forget < 0:
			forget = " (never forgotten: its key has no expiry)"
		}
		fmt.Fprintf(w, "    offences %d%s; the next automatic ban: %s\n", fs.Offences, forget, human(fs.NextBan))
	}
}

// refill says how a count's allowance refills, and when it is full again.
func refill(c ratelimit.Count) string {
	s := "refilling 1 per " + confDur(c.Window)
	if c.FullIn > 0 {
		s += ", full again in " + human(c.FullIn)
	}
	return s
}

// moreBefore says how many more failures pass before the one that bans
// (or throttles).
func moreBefore(allowed int, what string) string {
	if allowed == 0 {
		return "no more allowed: the next failure " + what
	}
	return fmt.Sprintf("%d more allowed: the %s failure from now %s", allowed, ordinal(allowed+1), what)
}

func writeThrottle(w io.Writer, x *explanation) {
	fmt.Fprintf(w, "\nUsername %s:\n", logval.Quote(x.flags.username))
	why := x.throttleIgnored(showText)
	switch th := x.throttle; {
	case th != nil && why != "":
		fmt.Fprintf(w, "  throttled by %s (%s, %s, set %s), but not for this client: %s\n",
			showText(th.Key), th.Origin(), left(th.TTL), setText(th), why)
	case th != nil:
		fmt.Fprintf(w, "  throttled by %s (%s, %s, set %s): its attempts from sources that did not authenticate as it within conflict_window are refused unchecked\n",
			showText(th.Key), th.Origin(), left(th.TTL), setText(th))
	default:
		fmt.Fprintln(w, "  not throttled")
	}
	if x.counter == nil {
		fmt.Fprintln(w, "  no throttle: username_fail_limit is 0")
		return
	}
	c := x.counter
	fmt.Fprintf(w, "  failures from any source: %d counted of %d, %s (%s)\n",
		c.Counted, c.Limit, moreBefore(c.Allowed, "throttles it"), refill(*c))
}

func writeClientID(w io.Writer, x *explanation) {
	cs := x.clientID
	id := x.flags.clientID
	fmt.Fprintf(w, "\nClient ID %s:\n", logval.Quote(id))
	if x.limits.Conflicts == config.ConflictOff && x.flags.conn.config != "" {
		fmt.Fprintln(w, "  clientid_conflict is off: the plugin tracks no connection")
	}
	if t := keys.Tracking(id); t != id {
		fmt.Fprintf(w, "  tracked as %s\n", t)
	}
	if len(cs.Live) == 0 {
		fmt.Fprintln(w, "  live: none")
	} else {
		fmt.Fprintf(w, "  live: %s\n", plural(len(cs.Live), "connection"))
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "    BROKER\tPRINCIPAL\tIP\tSINCE\t")
		for _, c := range cs.Live {
			note := ""
			if !cs.LeaseRuns[c.Instance] {
				note = "its broker's lease ran out (crashed): ignored, cleared soon"
			}
			fmt.Fprintf(tw, "    %s\t%s\t%s\t%s (%s ago)\t%s\n", cell(c.Broker), logval.Fit(c.Principal, maxCell), cell(c.IP),
				timestamp(c.ConnectedMs), human(x.now.Sub(time.UnixMilli(c.ConnectedMs))), note)
		}
		tw.Flush()
	}
	if len(cs.Seen) == 0 {
		fmt.Fprintf(w, "  principals within conflict_window (%s): none\n", confDur(x.limits.ConflictWindow))
	} else {
		fmt.Fprintf(w, "  principals within conflict_window (%s): %d\n", confDur(x.limits.ConflictWindow), len(cs.Seen))
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "    PRINCIPAL\tIP\tBROKER\tCONNECTED\tDISCONNECTED")
		for _, c := range cs.Seen {
			gone := "-"
			if c.DisconnectedMs > 0 {
				gone = timestamp(c.DisconnectedMs)
			}
			fmt.Fprintf(tw, "    %s\t%s\t%s\t%s\t%s\n", logval.Fit(c.Principal, maxCell), cell(c.IP), cell(c.Broker), timestamp(c.ConnectedMs), gone)
		}
		tw.Flush()
	}
	if cs.SeenOlder > 0 {
		fmt.Fprintf(w, "  (%s older than conflict_window not shown: the plugin ignores them)\n", plural(cs.SeenOlder, "principal"))
	}
	scanned := fmt.Sprintf("the newest %d of %d findings read", cs.FindingsScanned, cs.FindingsTotal)
	if int64(cs.FindingsScanned) >= cs.FindingsTotal {
		scanned = fmt.Sprintf("all %d findings read", cs.FindingsTotal)
	}
	if len(cs.Findings) == 0 {
		fmt.Fprintf(w, "  findings: none (%s)\n", scanned)
		return
	}
	fmt.Fprintf(w, "  findings: %d (%s)\n", len(cs.Findings), scanned)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "    TIME\tKIND\tACTION\tPRINCIPALS\tCOUNT\tFIRST SEEN\tLAST SEEN")
	for _, fd := range cs.Findings {
		fmt.Fprintf(tw, "    %s\t%s\t%s\t%s\t%d\t%s\t%s\n", timestamp(fd.TimeMs), cell(fd.Kind), cell(fd.Action), list(fd.Principals),
			fd.Count, timestamp(fd.FirstSeenMs), timestamp(fd.LastSeenMs))
	}
	tw.Flush()
}

// The JSON document; see explainUsage.
type (
	jsonExplain struct {
		Identity jsonIdentity   `json:"identity"`
		Limits   jsonLimits     `json:"limits"`
		Entries  []jsonMatch    `json:"entries"`
		Ignored  []jsonIgnored  `json:"ignored"`
		Verdict  jsonVerdict    `json:"verdict"`
		Failures jsonFailures   `json:"failures"`
		Throttle *jsonThrottle  `json:"throttle"`
		ClientID *jsonClientIDs `json:"clientid_state"`
	}
	jsonIdentity struct {
		ClientID       *string `json:"clientid,omitempty"`
		ClientIDBase64 string  `json:"clientid_base64,omitempty"`
		ClientIDAssign bool    `json:"clientid_assigned,omitempty"`
		IP             string  `json:"ip,omitempty"`
		Username       *string `json:"username,omitempty"`
		UsernameBase64 string  `json:"username_base64,omitempty"`
		Cert           string  `json:"cert,omitempty"`
	}
	jsonLimits struct {
		FailLimit         int               `json:"fail_limit"`
		FailWindowMs      int64             `json:"fail_window_ms"`
		BanTimeMs         int64             `json:"ban_time_ms"`
		BanMaxMs          int64             `json:"ban_max_ms"`
		FailScopes        []keys.Scope      `json:"fail_scopes"`
		FailIPv6Prefix    int               `json:"fail_ipv6_prefix"`
		UsernameFailLimit int               `json:"username_fail_limit"`
		ConflictWindowMs  int64             `json:"conflict_window_ms"`
		ClientIDMaxBytes  int               `json:"clientid_max_bytes"`
		UsernameMaxBytes  int               `json:"username_max_bytes"`
		Backend           *string           `json:"backend"`
		ClientIDConflict  *string           `json:"clientid_conflict"`
		From              map[string]string `json:"from"`
	}
	jsonMatch struct {
		Key         string     `json:"key"`
		List        keys.Kind  `json:"list"`
		Scope       keys.Scope `json:"scope"`
		Value       string     `json:"value"`
		ValueBase64 string     `json:"value_base64,omitempty"`
		Origin      string     `json:"origin"`
		Reason      string     `json:"reason"`
		SetMs       *int64     `json:"set_ms"`
		TTLMs       *int64     `json:"ttl_ms"`
		Role        string     `json:"role"`
		LiftedBy    string     `json:"lifted_by,omitempty"`
	}
	jsonIgnored struct {
		Key  string `json:"key"`
		Type string `json:"type"`
		Line string `json:"line"`
	}
	jsonVerdict struct {
		Result string   `json:"result"`
		Line   string   `json:"line"`
		Block  *string  `json:"block"`
		Allow  *string  `json:"allow"`
		Lifted []string `json:"lifted"`
		Rule   string   `json:"rule,omitempty"`
	}
	jsonFailures struct {
		ExemptBy *string          `json:"exempt_by"`
		Keys     []jsonFailureKey `json:"keys"`
	}
	jsonFailureKey struct {
		Scope            keys.Scope `json:"scope"`
		Value            string     `json:"value"`
		Counter          string     `json:"counter"`
		Counted          int        `json:"counted"`
		Allowed          int        `json:"allowed"`
		BanAt            int        `json:"ban_at"`
		FullInMs         int64      `json:"full_in_ms"`
		BannedBy         *string    `json:"banned_by"`
		BanLiftedBy      *string    `json:"ban_lifted_by"`
		Offences         int        `json:"offences"`
		OffencesForgetMs *int64     `json:"offences_forget_ms"`
		NextBanMs        int64      `json:"next_ban_ms"`
	}
	jsonThrottle struct {
		Username  string       `json:"username"`
		Key       string       `json:"key"`
		Throttled bool         `json:"throttled"`
		Applies   bool         `json:"applies"`
		Ignored   string       `json:"ignored,omitempty"`
		Origin    string       `json:"origin,omitempty"`
		Reason    string       `json:"reason,omitempty"`
		SetMs     *int64       `json:"set_ms"`
		TTLMs     *int64       `json:"ttl_ms"`
		Limit     int          `json:"limit"`
		Counter   *jsonCounter `json:"counter"`
	}
	jsonCounter struct {
		Key        string `json:"key"`
		Counted    int    `json:"counted"`
		Allowed    int    `json:"allowed"`
		ThrottleAt int    `json:"throttle_at"`
		FullInMs   int64  `json:"full_in_ms"`
	}
	jsonClientIDs struct {
		ClientID        string          `json:"clientid"`
		Tracking        string          `json:"tracking"`
		Live            []jsonLive      `json:"live"`
		Seen            []jsonSeen      `json:"seen"`
		SeenOlder       int             `json:"seen_older"`
		Findings        []store.Finding `json:"findings"`
		FindingsScanned int             `json:"findings_scanned"`
		FindingsTotal   int64           `json:"findings_total"`
		FindingsScanMax int             `json:"findings_scan_max"`
	}
	jsonLive struct {
		Broker    string `json:"broker"`
		Instance  string `json:"instance"`
		Principal string `json:"principal"`
		IP        string `json:"ip"`
		SinceMs   int64  `json:"since_ms"`
		LeaseRuns bool   `json:"lease_runs"`
	}
	jsonSeen struct {
		Principal      string `json:"principal"`
		IP             string `json:"ip"`
		Broker         string `json:"broker"`
		ConnectedMs    int64  `json:"connected_ms"`
		DisconnectedMs int64  `json:"disconnected_ms"`
	}
)

// b64 is the base64 of s when s is not valid UTF-8 (JSON would change it), else "".
func b64(s string) string {
	if utf8.ValidString(s) {
		return ""
	}
	return base64.StdEncoding.EncodeToString([]byte(s))
}

func msPtr(d time.Duration) *int64 {
	ms := d.Milliseconds()
	return &ms
}

func strPtr(s string) *string { return &s }

// ttlMs is an entry's time left in ms, nil when permanent.
func ttlMs(m *store.Match) *int64 {
	if m.TTL < 0 {
		return nil
	}
	return msPtr(m.TTL)
}

func setMs(m *store.Match) *int64 {
	at, ok := ratelimit.BannedAt(m.Reason)
	if !ok {
		return nil
	}
	ms := at.UnixMilli()
	return &ms
}

func renderExplainJSON(w io.Writer, x *explanation) error {
	f, l := x.flags, x.limits
	doc := jsonExplain{
		Limits: jsonLimits{
			FailLimit: l.Policy.Limit, FailWindowMs: l.Policy.Window.Milliseconds(), BanTimeMs: l.Policy.BanTime.Milliseconds(),
			BanMaxMs: l.Policy.BanMax.Milliseconds(), FailScopes: l.FailScopes, FailIPv6Prefix: l.FailIPv6Prefix,
			UsernameFailLimit: l.UsernameFailLimit, ConflictWindowMs: l.ConflictWindow.Milliseconds(),
			ClientIDMaxBytes: l.ClientIDMaxBytes, UsernameMaxBytes: l.UsernameMaxBytes,
			From: l.From,
		},
		Entries:  []jsonMatch{},
		Ignored:  []jsonIgnored{},
		Failures: jsonFailures{Keys: []jsonFailureKey{}},
	}
	if f.conn.config != "" {
		doc.Limits.Backend, doc.Limits.ClientIDConflict = strPtr(string(l.Backend)), strPtr(string(l.Conflicts))
	}
	if f.hasClientID {
		doc.Identity.ClientID, doc.Identity.ClientIDBase64 = strPtr(f.clientID), b64(f.clientID)
		doc.Identity.ClientIDAssign = !f.seesClientID()
	}
	if f.ip.IsValid() {
		doc.Identity.IP = f.ip.String()
	}
	if f.hasUsername {
		doc.Identity.Username, doc.Identity.UsernameBase64 = strPtr(f.username), b64(f.username)
	}
	doc.Identity.Cert = f.cert

	for _, m := range append(append([]*store.Match{}, x.blocks...), x.allows...) {
		role, by := x.role(m)
		jm := jsonMatch{Key: m.Key, List: m.Kind, Scope: m.Scope, Value: m.Value, ValueBase64: b64(m.Value),
			Origin: m.Origin(), Reason: m.Reason, SetMs: setMs(m), TTLMs: ttlMs(m), Role: role}
		if by != nil {
			jm.LiftedBy = by.Key
		}
		doc.Entries = append(doc.Entries, jm)
	}
	for _, g := range x.ignored {
		doc.Ignored = append(doc.Ignored, jsonIgnored{Key: g.Key, Type: g.Type, Line: ignoredText(g)})
	}
	raw := func(s string) string { return s }
	doc.Verdict = jsonVerdict{Result: "accepted", Line: x.verdict(raw), Lifted: []string{}}
	if x.block != nil {
		doc.Verdict.Result, doc.Verdict.Block = "refused", strPtr(x.block.Key)
	}
	if rule, _ := x.tooLong(); rule != "" {
		doc.Verdict.Result, doc.Verdict.Rule = "refused", rule
	}
	if x.allow != nil {
		doc.Verdict.Allow = strPtr(x.allow.Key)
	}
	for _, b := range x.lifted() {
		doc.Verdict.Lifted = append(doc.Verdict.Lifted, b.Key)
	}

	if x.exempt != nil {
		doc.Failures.ExemptBy = strPtr(x.exempt.Key)
	}
	for _, fs := range x.failures {
		k := jsonFailureKey{Scope: fs.Scope, Value: fs.Value, Counter: fs.Key, Counted: fs.Counted, Allowed: fs.Allowed,
			BanAt: fs.Allowed + 1, FullInMs: fs.FullIn.Milliseconds(), Offences: fs.Offences, NextBanMs: fs.NextBan.Milliseconds()}
		if b := x.bannedBy(fs); b != nil {
			k.BannedBy = strPtr(b.Key)
			if role, by := x.role(b); role == "lifted" {
				k.BanLiftedBy = strPtr(by.Key)
			}
		}
		switch {
		case fs.Forget > 0:
			k.OffencesForgetMs = msPtr(fs.Forget)
		case fs.Forget < 0:
			k.OffencesForgetMs = msPtr(-time.Millisecond)
		}
		doc.Failures.Keys = append(doc.Failures.Keys, k)
	}

	if f.hasUsername {
		th := &jsonThrottle{Username: f.username, Key: x.kb.Throttle(f.username), Limit: l.UsernameFailLimit,
			Ignored: x.throttleIgnored(raw)}
		th.Applies = th.Ignored == ""
		if x.throttle != nil {
			th.Key, th.Throttled, th.Origin, th.Reason = x.throttle.Key, true, x.throttle.Origin(), x.throttle.Reason
			th.SetMs, th.TTLMs = setMs(x.throttle), ttlMs(x.throttle)
		}
		if c := x.counter; c != nil {
			th.Counter = &jsonCounter{Key: c.Key, Counted: c.Counted, Allowed: c.Allowed, ThrottleAt: c.Allowed + 1, FullInMs: c.FullIn.Milliseconds()}
		}
		doc.Throttle = th
	}
	if cs := x.clientID; cs != nil {
		j := &jsonClientIDs{ClientID: f.clientID, Tracking: keys.Tracking(f.clientID), Live: []jsonLive{}, Seen: []jsonSeen{},
			SeenOlder: cs.SeenOlder, Findings: cs.Findings, FindingsScanned: cs.FindingsScanned, FindingsTotal: cs.FindingsTotal,
			FindingsScanMax: explainFindingsScan}
		if j.Findings == nil {
			j.Findings = []store.Finding{}
		}
		for _, c := range cs.Live {
			j.Live = append(j.Live, jsonLive{Broker: c.Broker, Instance: c.Instance, Principal: c.Principal, IP: c.IP,
				SinceMs: c.ConnectedMs, LeaseRuns: cs.LeaseRuns[c.Instance]})
		}
		for _, c := range cs.Seen {
			j.Seen = append(j.Seen, jsonSeen{Principal: c.Principal, IP: c.IP, Broker: c.Broker, ConnectedMs: c.ConnectedMs, DisconnectedMs: c.DisconnectedMs})
		}
		doc.ClientID = j
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(doc)
}
