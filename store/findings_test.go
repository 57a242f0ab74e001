package store

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// Folding runs on the findings' own times (TimeMs), so the tests pick them
// instead of sleeping through fold periods.
const (
	t0     = int64(1_767_225_600_000) // 2026-01-01T00:00:00Z
	period = 50 * time.Millisecond
	ttl    = time.Hour
)

func findingsStore(t *testing.T) (*Store, *testenv.Redis) {
	t.Helper()
	r := testenv.StartRedis(t)
	s := New(Options{Addrs: []string{r.Addr}, Timeout: time.Second}, keys.Builder{Prefix: "fg:"})
	t.Cleanup(func() { s.Close() })
	return s, r
}

func finding(clientID string, atMs int64, principals ...string) *Finding {
	return &Finding{
		Reason: ReasonDuplicateClientID, Severity: SeverityHigh, Kind: KindCrossPrincipal, Action: "flagged",
		ClientID: clientID, Principals: principals, TimeMs: atMs,
		Connections: []Conn{
			{ID: "i1-1", Instance: "i1", Broker: "b1", Principal: principals[0], IP: "192.0.2.1", ConnectedMs: atMs},
		},
	}
}

func add(t *testing.T, s *Store, f *Finding, max int64) bool {
	t.Helper()
	reported, err := s.AddFinding(context.Background(), f, period, ttl, max)
	require.NoError(t, err)
	return reported
}

func TestAddFindingFoldsRepeats(t *testing.T) {
	s, r := findingsStore(t)

	first := finding("dev-1", t0, "alice", "bob")
	require.True(t, add(t, s, first, 1000), "first occurrence is reported")
	assert.NotEmpty(t, first.ID)
	assert.Equal(t, int64(1), first.Count)
	assert.Equal(t, FoldID(KindCrossPrincipal, "dev-1", []string{"alice", "bob"}), first.Fold)

	for i, at := range []int64{t0 + 10, t0 + 30, t0 + 49} {
		f := finding("dev-1", at, "alice", "bob")
		assert.False(t, add(t, s, f, 1000), "repeat within the fold period")
		assert.Empty(t, f.ID)
		assert.Equal(t, int64(i+2), f.Count, "repeats are counted")
	}
	assert.Equal(t, "1", r.CLI("XLEN", "fg:findings"))

	again := finding("dev-1", t0+50, "alice", "bob")
	require.True(t, add(t, s, again, 1000), "reported again once the period is over")
	assert.Equal(t, int64(5), again.Count)
	assert.NotEqual(t, first.ID, again.ID)
	assert.False(t, add(t, s, finding("dev-1", t0+60, "alice", "bob"), 1000), "the period restarts at the last report")
	assert.Equal(t, "2", r.CLI("XLEN", "fg:findings"))

	fold := "fg:fold:" + first.Fold
	assert.Equal(t, "6", r.CLI("HGET", fold, "count"))
	assert.Equal(t, strconv.FormatInt(t0, 10), r.CLI("HGET", fold, "first_ms"))
	assert.Equal(t, strconv.FormatInt(t0+60, 10), r.CLI("HGET", fold, "last_ms"))
	pttl, err := strconv.Atoi(r.CLI("PTTL", fold))
	require.NoError(t, err)
	assert.InDelta(t, ttl.Milliseconds(), pttl, 60_000, "the fold hash expires after ttl")
}

func TestAddFindingFoldsSeparately(t *testing.T) {
	s, r := findingsStore(t)
	require.True(t, add(t, s, finding("dev-1", t0, "alice", "bob"), 1000))
	require.True(t, add(t, s, finding("dev-1", t0+1, "alice", "carol"), 1000), "other principals")
	require.True(t, add(t, s, finding("dev-2", t0+2, "alice", "bob"), 1000), "other client ID")
	dup := finding("dev-1", t0+3, "alice", "bob")
	dup.Kind = KindDuplicate
	require.True(t, add(t, s, dup, 1000), "other kind")
	require.False(t, add(t, s, finding("dev-1", t0+4, "alice", "bob"), 1000), "same as the first")
	assert.Equal(t, "4", r.CLI("XLEN", "fg:findings"))
}

func TestAddFindingTrimsStream(t *testing.T) {
	s, r := findingsStore(t)
	for i := range 300 {
		require.True(t, add(t, s, finding(fmt.Sprint("dev-", i), t0, "alice"), 100))
	}
	n, err := strconv.Atoi(r.CLI("XLEN", "fg:findings"))
	require.NoError(t, err)
	assert.GreaterOrEqual(t, n, 100, "approximate trimming keeps at least max")
	assert.LessOrEqual(t, n, 200, "and at most about one stream node more")
}

func TestFindingsNewestFirstWithFoldTotals(t *testing.T) {
	s, _ := findingsStore(t)
	ctx := context.Background()
	before := time.Now().Add(-time.Second)

	a := finding("dev-a", t0, "alice", "bob")
	require.True(t, add(t, s, a, 1000))
	require.False(t, add(t, s, finding("dev-a", t0+20, "alice", "bob"), 1000))
	time.Sleep(5 * time.Millisecond)
	mid := time.Now()
	time.Sleep(5 * time.Millisecond)
	b := finding("dev-b", t0+100, "carol")
	require.True(t, add(t, s, b, 1000))
	c := finding("dev-a", t0+200, "alice", "bob")
	require.True(t, add(t, s, c, 1000), "period over: reported again")

	got, err := s.Findings(ctx, before)
	require.NoError(t, err)
	require.Len(t, got, 3)
	assert.Equal(t, []string{c.ID, b.ID, a.ID}, []string{got[0].ID, got[1].ID, got[2].ID}, "newest first")

	// Every entry of a fold carries the fold's totals.
	for _, i := range []int{0, 2} {
		assert.Equal(t, "dev-a", got[i].ClientID)
		assert.Equal(t, int64(3), got[i].Count)
		assert.Equal(t, t0, got[i].FirstSeenMs)
		assert.Equal(t, t0+200, got[i].LastSeenMs)
	}
	assert.Equal(t, t0+200, got[0].TimeMs)
	assert.Equal(t, t0, got[2].TimeMs)
	assert.Equal(t, int64(1), got[1].Count)

	want := *b
	want.FirstSeenMs, want.LastSeenMs = b.TimeMs, b.TimeMs
	assert.Equal(t, want, got[1], "every field round-trips")

	got, err = s.Findings(ctx, mid)
	require.NoError(t, err)
	require.Len(t, got, 2, "only the entries reported from since on")
	assert.Equal(t, c.ID, got[0].ID)
	assert.Equal(t, b.ID, got[1].ID)

	got, err = s.Findings(ctx, time.Now().Add(time.Hour))
	require.NoError(t, err)
	assert.Empty(t, got)
}

func TestFindingsWithoutFoldHash(t *testing.T) {
	s, r := findingsStore(t)
	f := finding("dev-1", t0, "alice")
	require.True(t, add(t, s, f, 1000))
	require.False(t, add(t, s, finding("dev-1", t0+1, "alice"), 1000))
	r.CLI("DEL", "fg:fold:"+f.Fold) // expired
	got, err := s.Findings(context.Background(), time.Now().Add(-time.Minute))
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.Equal(t, int64(1), got[0].Count, "the count stored with the entry")
	assert.Equal(t, t0, got[0].FirstSeenMs)
	assert.Equal(t, t0, got[0].LastSeenMs)
}

func TestFindingsHostileClientIDs(t *testing.T) {
	s, _ := findingsStore(t)
	ids := []string{
		"a:b:c", "*", "fg:findings", "line\nbreak", "tab\there", "", " ",
		"\xff\xfe not utf-8", "nul\x00byte", `"quoted",comma`,
		strings.Repeat("x", 20_000),
	}
	for i, id := range ids {
		require.True(t, add(t, s, finding(id, t0+int64(i), "alice"), 1000), "%q", id)
	}
	got, err := s.Findings(context.Background(), time.Now().Add(-time.Minute))
	require.NoError(t, err)
	require.Len(t, got, len(ids))
	for i, id := range ids {
		f := got[len(ids)-1-i]
		assert.Equal(t, keys.Tracking(id), f.ClientID, "client ID %d round-trips exactly (a long one as its hash)", i)
		assert.Equal(t, int64(1), f.Count, "client ID %d has its own fold", i)
		assert.Equal(t, FoldID(KindCrossPrincipal, keys.Tracking(id), []string{"alice"}), f.Fold)
	}
}

func TestLastAuditRoundTrip(t *testing.T) {
	s, r := findingsStore(t)
	ctx := context.Background()
	_, ok, err := s.LastAudit(ctx)
	require.NoError(t, err)
	assert.False(t, ok, "no audit yet")

	at := time.Date(2026, 3, 4, 5, 6, 7, 891_234_567, time.UTC)
	require.NoError(t, s.MarkAudit(ctx, at))
	assert.Equal(t, strconv.FormatInt(at.UnixMilli(), 10), r.CLI("GET", "fg:audit:last"))
	got, ok, err := s.LastAudit(ctx)
	require.NoError(t, err)
	require.True(t, ok)
	assert.True(t, got.Equal(at.Truncate(time.Millisecond)), "got %v", got)

	require.NoError(t, s.MarkAudit(ctx, at.Add(time.Hour)))
	got, _, err = s.LastAudit(ctx)
	require.NoError(t, err)
	assert.True(t, got.Equal(at.Add(time.Hour).Truncate(time.Millisecond)), "a later mark replaces it")

	r.CLI("SET", "fg:audit:last", "garbage")
	_, _, err = s.LastAudit(ctx)
	assert.ErrorContains(t, err, "bad value")
}

// A finding on a 65 535-byte client ID between principals of 65 535 bytes
// is stored bounded, and its repeats still fold.
func TestAddFindingBoundsLongValues(t *testing.T) {
	s, r := findingsStore(t)
	id := strings.Repeat("C", 65535)
	user := keys.Tracking(strings.Repeat("U", 65535)) // as the plugin passes a principal
	raw := strings.Repeat("V", 65535)                 // a caller that forgot: hashed all the same
	mk := func(at int64) *Finding {
		f := finding(id, at, "<anonymous>", user, raw)
		f.Connections = append(f.Connections,
			Conn{ID: "i2-1", Instance: "i2", Broker: "b2", Principal: user, IP: "192.0.2.2", ConnectedMs: at - 1},
			Conn{ID: "i3-1", Instance: "i3", Broker: "b3", Principal: raw, IP: "192.0.2.3", ConnectedMs: at - 2})
		return f
	}
	f := mk(t0)
	require.True(t, add(t, s, f, 1000))
	assert.Equal(t, id, f.ClientID, "the caller keeps the client ID itself, for its log line")
	bounded := []string{"<anonymous>", user, keys.Tracking(raw)}
	assert.Equal(t, FoldID(KindCrossPrincipal, keys.Tracking(id), bounded), f.Fold)
	require.False(t, add(t, s, mk(t0+1), 1000), "a repeat on the same long client ID folds")

	got, err := s.Findings(context.Background(), time.Now().Add(-time.Minute))
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.Equal(t, keys.Tracking(id), got[0].ClientID)
	assert.Equal(t, bounded, got[0].Principals)
	require.Len(t, got[0].Connections, 3)
	assert.Equal(t, keys.Tracking(raw), got[0].Connections[2].Principal)
	assert.Equal(t, int64(2), got[0].Count)

	msgs, err := s.Client().XRange(context.Background(), "fg:findings", "-", "+").Result()
	require.NoError(t, err)
	size := 0
	for k, v := range msgs[0].Values {
		size += len(k) + len(fmt.Sprint(v))
	}
	assert.Less(t, size, 2048, "the stream entry")
	assert.Contains(t, r.CLI("XRANGE", "fg:findings", "-", "+"), `["<anonymous>","sha256:`, "JSON keeps < and > as they are")
}
