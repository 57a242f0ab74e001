package main

import (
	"bytes"
	"errors"
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

func TestParseSince(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"31d": 31 * 24 * time.Hour, "7d": 7 * 24 * time.Hour, "1d": 24 * time.Hour,
		"12h": 12 * time.Hour, "90m": 90 * time.Minute, "1.5h": 90 * time.Minute,
		"1d12h": 36 * time.Hour, "0d1s": time.Second, "100000d": 100000 * 24 * time.Hour,
	} {
		got, err := parseSince(in)
		if assert.NoError(t, err, in) {
			assert.Equal(t, want, got, in)
		}
	}
	for _, in := range []string{"", "d", "0", "0d", "0s", "-1d", "+1d", "-5h", "1d-5h", "1.5d", "31D", "31", "3x",
		"1dd", "d5h", " 1d", "1d ", "106752d", "99999999999999999999d"} {
		_, err := parseSince(in)
		assert.Error(t, err, "%q", in)
	}
}

func TestFormatSince(t *testing.T) {
	assert.Equal(t, "31d", formatSince(31*24*time.Hour))
	assert.Equal(t, "12h0m0s", formatSince(12*time.Hour))
	assert.Equal(t, "36h0m0s", formatSince(36*time.Hour))
}

func TestParseAuditFlags(t *testing.T) {
	a, err := parseAuditFlags(nil)
	require.NoError(t, err)
	assert.Equal(t, defaultSince, a.since.d)
	assert.False(t, a.sinceLast)
	assert.False(t, a.json)

	a, err = parseAuditFlags([]string{"--since", "7d", "--json"})
	require.NoError(t, err)
	assert.Equal(t, 7*24*time.Hour, a.since.d)
	assert.True(t, a.json)

	a, err = parseAuditFlags([]string{"-since-last"})
	require.NoError(t, err)
	assert.True(t, a.sinceLast)

	_, err = parseAuditFlags([]string{"-h"})
	assert.True(t, errors.Is(err, flag.ErrHelp))
	for _, args := range [][]string{
		{"--since", "3x"}, {"--since"}, {"--nope"}, {"extra"}, {"--since", "1h", "--since-last"}, {"--redis-db", "x"},
	} {
		_, err := parseAuditFlags(args)
		assert.Error(t, err, "%q", args)
		assert.False(t, errors.Is(err, flag.ErrHelp))
	}
}

func TestAuditUsageListsEveryFlag(t *testing.T) {
	var out bytes.Buffer
	require.Equal(t, exitOK, runAudit([]string{"-h"}, &out, &out))
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	var a auditFlags
	a.conn.register(fs)
	names := []string{"since", "since-last", "json"}
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	for _, n := range names {
		assert.Contains(t, out.String(), "--"+n+" ", "usage documents --%s", n)
	}
	assert.Contains(t, out.String(), "Only a\n                    --since-last audit that succeeds records its time")
}

func f(id, clientID string, timeMs int64) store.Finding {
	return store.Finding{ID: id, ClientID: clientID, TimeMs: timeMs}
}

func TestGroupOrdering(t *testing.T) {
	in := []store.Finding{
		f("100-0", "a", 1000),
		f("101-0", "b", 3000),
		f("102-0", "a", 5000),
		f("103-0", "c", 4000),
		f("104-0", "b", 2000),
		f("104-1", "c", 4000), // same time as 103-0: the later entry first
		f("99-5", "d", 500),
	}
	got := group(in)
	var ids, clients []string
	for _, c := range got {
		clients = append(clients, c.ClientID)
		for _, f := range c.Findings {
			assert.Equal(t, c.ClientID, f.ClientID)
			ids = append(ids, f.ID)
			assert.NotNil(t, f.Principals, "JSON shows [] rather than null")
			assert.NotNil(t, f.Connections)
		}
	}
	assert.Equal(t, []string{"a", "c", "b", "d"}, clients, "groups by their newest finding")
	assert.Equal(t, []string{"102-0", "100-0", "104-1", "103-0", "101-0", "104-0", "99-5"}, ids, "newest first within a group")
	assert.Equal(t, "100-0", in[0].ID, "the input is left alone")
	assert.NotNil(t, group(nil), "no findings: an empty list")
	assert.Empty(t, group(nil))
}

func TestStreamID(t *testing.T) {
	ms, seq := streamID("1700000000000-42")
	assert.Equal(t, uint64(1700000000000), ms)
	assert.Equal(t, uint64(42), seq)
	ms, seq = streamID("junk")
	assert.Zero(t, ms)
	assert.Zero(t, seq)
}

func TestCells(t *testing.T) {
	for in, want := range map[string]string{
		"alice":                    "alice",
		"":                         `""`,
		"two words":                `"two words"`,
		"a,b":                      `"a,b"`,
		`q"uote`:                   `"q\"uote"`,
		`back\slash`:               `"back\\slash"`,
		"line\nbreak":              `"line\nbreak"`,
		"tab\t":                    `"tab\t"`,
		"\xff":                     `"\xff"`,
		"é":                        `"é"`,
		"192.0.2.1":                "192.0.2.1",
		"2001:db8::1":              "2001:db8::1",
		strings.Repeat("x", 60):    strings.Repeat("x", 60),
		strings.Repeat("x", 61):    strings.Repeat("x", 57) + "...",
		strings.Repeat("\x00", 30): `"` + strings.Repeat(`\x00`, 13) + `"...`,
	} {
		assert.Equal(t, want, cell(in), "%q", in)
	}
	assert.Equal(t, "-", list(nil))
	assert.Equal(t, `alice,"eve,admin",bob`, list([]string{"alice", "eve,admin", "alice", "bob"}), "distinct values, in order")
}

func TestQuoteCut(t *testing.T) {
	assert.Equal(t, `"dev-1"`, logval.Fit("dev-1", 60))
	assert.Equal(t, `"a:b*c"`, logval.Fit("a:b*c", 60))
	long := strings.Repeat("x", 20_000)
	got := logval.Fit(long, 60)
	assert.Equal(t, `"`+strings.Repeat("x", 55)+`"...`, got)
	assert.Len(t, got, 60)

	// Multi-byte characters are never split.
	got = logval.Fit(strings.Repeat("é", 40), 60)
	assert.Equal(t, `"`+strings.Repeat("é", 27)+`"...`, got)
	assert.LessOrEqual(t, len(got), 60)

	for _, s := range []string{strings.Repeat("\n", 100), strings.Repeat("\xff", 100), strings.Repeat("a\x00", 100), strings.Repeat("😀", 100)} {
		got := logval.Fit(s, 60)
		assert.LessOrEqual(t, len(got), 60, "%q", got)
		assert.True(t, strings.HasSuffix(got, `"...`), "%q", got)
		assert.NotContains(t, got, "\n")
		assert.NotContains(t, got, "\t")
	}
}

func TestRenderNoFindings(t *testing.T) {
	since := time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 3600))
	var out bytes.Buffer
	require.NoError(t, renderTable(&out, report{Since: since, Until: since.Add(time.Hour), Clients: group(nil)}))
	assert.Equal(t, "no findings since 2026-01-02T02:04:05Z\n", out.String())

	out.Reset()
	require.NoError(t, renderJSON(&out, report{Since: since, Until: since.Add(time.Hour), Clients: group(nil)}))
	assert.JSONEq(t, `{"since": 1767319445000, "until": 1767323045000, "clients": []}`, out.String())
}

func TestPlural(t *testing.T) {
	assert.Equal(t, "1 finding", plural(1, "finding"))
	assert.Equal(t, "2 client IDs", plural(2, "client ID"))
	assert.Equal(t, "0 findings", plural(0, "finding"))
}
