package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// defaultSince is the window of an on-demand audit, and of the first
// --since-last audit.
const defaultSince = 31 * 24 * time.Hour

// maxCell is the longest a client ID, principal, IP or broker name may be in
// the table, in bytes, quotes and escapes included.
const maxCell = 60

const auditUsage = `Usage: guardctl audit [--since DURATION | --since-last] [--json] [connection flags]

List the client-ID conflict findings mosquitto-guard reported to the Redis
stream <prefix>findings (reason DUPLICATE_CLIENT_ID_ACROSS_CONNECTIONS,
severity HIGH): grouped by client ID, the client ID with the newest finding
first, and each one's findings newest first. Repeats of a finding are folded
into one entry per fold period; COUNT, FIRST SEEN and LAST SEEN cover all of
them. Client IDs and principals are untrusted: the table shows them quoted
(Go syntax) when they hold odd bytes, and cut to 60 bytes ("..." after).

Window:
  --since DURATION  the findings reported within DURATION before now
                    (default 31d): a Go duration, or days with a d suffix:
                    31d, 7d, 1d12h, 12h, 90m
  --since-last      the findings reported since the previous --since-last
                    audit, for cron jobs (the first one covers 31d). Only a
                    --since-last audit that succeeds records its time, in
                    <prefix>audit:last, so ad-hoc audits leave the schedule be.

Output:
  --json            one JSON document instead of the table:
                    {"since": ms, "until": ms, "clients": [{"clientid": ...,
                    "findings": [finding, ...]}]}, times in unix milliseconds

`

const auditFooter = `
Exit status: 0 ok (with or without findings), 1 runtime error (such as Redis
unreachable), 2 usage error.

Example (daily cron job mailing new findings):
  guardctl audit --since-last --config /etc/mosquitto/mosquitto.conf
`

// auditFlags are the parsed flags of guardctl audit.
type auditFlags struct {
	conn      connFlags
	since     sinceFlag
	sinceLast bool
	json      bool
}

// sinceFlag is a duration flag that also takes days ("31d").
type sinceFlag struct{ d time.Duration }

func (s *sinceFlag) String() string { return formatSince(s.d) }

func (s *sinceFlag) Set(v string) error {
	d, err := parseSince(v)
	if err != nil {
		return err
	}
	s.d = d
	return nil
}

// parseSince parses a positive duration in the plugin's own form
// (config.ParseDuration): a Go duration that may start with a number of
// days: 31d, 1d12h, 12h, 90m.
func parseSince(s string) (time.Duration, error) {
	d, err := config.ParseDuration(s)
	switch {
	case err != nil || d < 0:
		return 0, fmt.Errorf("bad duration %q: expected e.g. 31d, 12h or 1d12h", s)
	case d == 0:
		return 0, fmt.Errorf("bad duration %q: must be positive", s)
	}
	return d, nil
}

// formatSince writes whole days as "31d", anything else as a Go duration.
func formatSince(d time.Duration) string {
	if d > 0 && d%(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(d/(24*time.Hour)), 10) + "d"
	}
	return d.String()
}

// parseAuditFlags parses the arguments of guardctl audit. It returns
// flag.ErrHelp for -h, and any other error for a usage error.
func parseAuditFlags(args []string) (*auditFlags, error) {
	a := &auditFlags{since: sinceFlag{defaultSince}}
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.Var(&a.since, "since", "window")
	fs.BoolVar(&a.sinceLast, "since-last", false, "since the previous --since-last audit")
	fs.BoolVar(&a.json, "json", false, "JSON output")
	a.conn.register(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	sinceGiven := false
	fs.Visit(func(f *flag.Flag) { sinceGiven = sinceGiven || f.Name == "since" })
	if sinceGiven && a.sinceLast {
		return nil, errors.New("--since and --since-last exclude each other")
	}
	return a, nil
}

// runAudit is guardctl audit.
func runAudit(args []string, stdout, stderr io.Writer) int {
	a, err := parseAuditFlags(args)
	return runSub("audit", auditUsage+connUsage+auditFooter, err, stdout, stderr,
		func() error { return a.run(context.Background(), os.Getenv, stdout, stderr) })
}

// run connects, audits, writes the report and, for --since-last, records
// the audit.
func (a *auditFlags) run(ctx context.Context, getenv func(string) string, stdout, stderr io.Writer) error {
	st, addrs, err := a.conn.store(getenv)
	if err != nil {
		return err
	}
	defer st.Close()
	now, err := redisNow(ctx, st)
	if err != nil {
		return redisError(addrs, err)
	}
	rep, err := a.collect(ctx, st, now, stderr)
	if err != nil {
		return err
	}
	render := renderTable
	if a.json {
		render = renderJSON
	}
	if err := render(stdout, rep); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if a.sinceLast {
		return st.MarkAudit(ctx, rep.Until)
	}
	return nil
}

// report is the result of one audit.
type report struct {
	Since, Until time.Time
	Clients      []clientFindings
}

// clientFindings are the findings of one client ID, newest first.
type clientFindings struct {
	ClientID string          `json:"clientid"`
	Findings []store.Finding `json:"findings"`
}

// redisNow returns the time by the Redis clock, the one stamping the stream
// entries, to the millisecond. As the first command, it dials: the dial is
// bounded as a whole, since go-redis retries failed dials on its own.
func redisNow(ctx context.Context, st *store.Store) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, redisTimeout)
	defer cancel()
	now, err := st.Client().Time(ctx).Result()
	return now.Truncate(time.Millisecond), err
}

// collect reads the findings reported in the audit window: from the start
// the flags ask for up to now (by the Redis clock). Entries added from now
// on are left to the next audit, so successive --since-last audits neither
// miss nor repeat an entry.
func (a *auditFlags) collect(ctx context.Context, st *store.Store, now time.Time, stderr io.Writer) (report, error) {
	since := now.Add(-a.since.d)
	if a.sinceLast {
		last, ok, err := st.LastAudit(ctx)
		switch {
		case err != nil:
			return report{}, err
		case ok:
			since = last
		default:
			fmt.Fprintf(stderr, "guardctl: no previous audit recorded (%s); auditing the last %s\n", st.Keys().AuditLast(), formatSince(defaultSince))
		}
	}
	if since.Before(time.UnixMilli(0)) {
		since = time.UnixMilli(0)
	}
	all, err := st.Findings(ctx, since)
	if err != nil {
		return report{}, err
	}
	kept := all[:0]
	for _, f := range all {
		if ms, _ := streamID(f.ID); ms < uint64(now.UnixMilli()) {
			kept = append(kept, f)
		}
	}
	return report{Since: since, Until: now, Clients: group(kept)}, nil
}

// group sorts findings newest first (by time, then stream entry) and groups
// them by client ID, the client ID with the newest finding first.
func group(findings []store.Finding) []clientFindings {
	sorted := slices.Clone(findings)
	slices.SortStableFunc(sorted, func(x, y store.Finding) int {
		if c := cmp.Compare(y.TimeMs, x.TimeMs); c != 0 {
			return c
		}
		xm, xs := streamID(x.ID)
		ym, ys := streamID(y.ID)
		return cmp.Or(cmp.Compare(ym, xm), cmp.Compare(ys, xs))
	})
	out := []clientFindings{}
	index := map[string]int{}
	for _, f := range sorted {
		if f.Principals == nil {
			f.Principals = []string{}
		}
		if f.Connections == nil {
			f.Connections = []store.Conn{}
		}
		i, ok := index[f.ClientID]
		if !ok {
			i = len(out)
			index[f.ClientID] = i
			out = append(out, clientFindings{ClientID: f.ClientID})
		}
		out[i].Findings = append(out[i].Findings, f)
	}
	return out
}

// streamID splits a stream entry ID ("1700000000000-3"); bad IDs give 0, 0.
func streamID(id string) (ms, seq uint64) {
	m, s, _ := strings.Cut(id, "-")
	ms, _ = strconv.ParseUint(m, 10, 64)
	seq, _ = strconv.ParseUint(s, 10, 64)
	return ms, seq
}

// renderJSON writes the report as one JSON document.
func renderJSON(w io.Writer, r report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(struct {
		Since   int64            `json:"since"`
		Until   int64            `json:"until"`
		Clients []clientFindings `json:"clients"`
	}{r.Since.UnixMilli(), r.Until.UnixMilli(), r.Clients})
}

// renderTable writes the report as a table, one line per finding, under a
// summary line.
func renderTable(w io.Writer, r report) error {
	n := 0
	for _, c := range r.Clients {
		n += len(c.Findings)
	}
	if n == 0 {
		_, err := fmt.Fprintf(w, "no findings since %s\n", timestamp(r.Since.UnixMilli()))
		return err
	}
	if _, err := fmt.Fprintf(w, "%s for %s since %s\n", plural(n, "finding"), plural(len(r.Clients), "client ID"), timestamp(r.Since.UnixMilli())); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tCLIENT ID\tKIND\tACTION\tPRINCIPALS\tCOUNT\tFIRST SEEN\tLAST SEEN\tIPS\tBROKERS")
	for _, c := range r.Clients {
		id := logval.Fit(c.ClientID, maxCell)
		for _, f := range c.Findings {
			var ips, brokers []string
			for _, conn := range f.Connections {
				ips, brokers = append(ips, conn.IP), append(brokers, conn.Broker)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n",
				timestamp(f.TimeMs), id, cell(f.Kind), cell(f.Action), list(f.Principals), f.Count,
				timestamp(f.FirstSeenMs), timestamp(f.LastSeenMs), list(ips), list(brokers))
		}
	}
	return tw.Flush()
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

// timestamp formats unix milliseconds as UTC RFC 3339.
func timestamp(ms int64) string {
	return time.UnixMilli(ms).UTC().Format(time.RFC3339)
}

// list joins the distinct values, each as cell shows it, with commas; "-"
// when there are none.
func list(values []string) string {
	var cells []string
	for _, v := range values {
		if c := cell(v); !slices.Contains(cells, c) {
			cells = append(cells, c)
		}
	}
	if len(cells) == 0 {
		return "-"
	}
	return strings.Join(cells, ",")
}

// cell shows an untrusted value in a table cell: as it is when it is plain
// (printable ASCII, no space, comma, quote or backslash), else quoted; at
// most maxCell bytes either way.
func cell(s string) string {
	for i := 0; i < len(s); i++ {
		if b := s[i]; b <= ' ' || b >= 0x7f || b == ',' || b == '"' || b == '\\' {
			return logval.Fit(s, maxCell)
		}
	}
	switch {
	case s == "":
		return `""`
	case len(s) > maxCell:
		return s[:maxCell-3] + "..."
	}
	return s
}
