package store

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// resentStore is a store whose Redis connection ends after Redis ran the
// first request holding trigger, before its reply (closingProxy): go-redis
// sends it again on a new connection, as after a failover's CLIENT KILL.
func resentStore(t *testing.T, trigger string) (*Store, *testenv.Redis) {
	t.Helper()
	r := testenv.StartRedis(t)
	s := New(Options{Addrs: []string{closingProxy(t, r.Addr, trigger, true)}, Timeout: time.Second}, keys.Builder{Prefix: "fg:"})
	t.Cleanup(func() { s.Close() })
	return s.Background(), r
}

// A finding whose fold call go-redis sent again is reported, and counted
// once. Before, the call sent again found the alerted_ms its first run
// had set and answered "a repeat": the finding was neither logged nor
// stored (atk91: 14 of 300 devices past takeover_limit, while Redis's
// connections were reset, never reported).
func TestAddFindingFoldSentAgainReportsOnce(t *testing.T) {
	const at = t0 + 777
	s, r := resentStore(t, strconv.FormatInt(at, 10))
	require.True(t, add(t, s, finding("dev-0", t0, "alice", "bob"), 1000), "the script cached")

	f := finding("dev-1", at, "alice", "bob")
	reported, err := s.AddFinding(context.Background(), f, period, ttl, 1000)
	require.NoError(t, err, "sent again on a new connection")
	assert.True(t, reported, "the finding is reported")
	assert.Equal(t, int64(1), f.Count)
	assert.NotEmpty(t, f.ID)
	assert.Equal(t, "1", r.CLI("HGET", "fg:fold:"+f.Fold, "count"), "counted once")
	assert.Equal(t, "2", r.CLI("XLEN", "fg:findings"))

	// The next occurrence is a repeat, as it was.
	g := finding("dev-1", at+1, "alice", "bob")
	assert.False(t, add(t, s, g, 1000))
	assert.Equal(t, int64(2), g.Count)
}

// A stream entry go-redis wrote twice (its XADD sent again after the
// reply was lost) reads as one finding; two occurrences of one finding
// reported a fold period apart stay two. Before, Findings, and so
// guardctl audit, listed the entry twice (atk91: 17 client IDs).
func TestFindingsXAddSentAgainReadsOnce(t *testing.T) {
	s, r := resentStore(t, "xadd")
	ctx := context.Background()
	require.True(t, add(t, s, finding("dev-1", t0, "alice", "bob"), 1000))
	require.Equal(t, "2", r.CLI("XLEN", "fg:findings"), "the XADD was sent again")
	require.True(t, add(t, s, finding("dev-1", t0+period.Milliseconds(), "alice", "bob"), 1000), "a fold period later")

	all, err := s.Findings(ctx, time.Now().Add(-time.Minute))
	require.NoError(t, err)
	assert.Len(t, all, 2, "one entry per occurrence")
	ex, _, err := s.findingsOf(ctx, "dev-1", 100)
	require.NoError(t, err)
	assert.Len(t, ex, 2, "guardctl explain's view too")
}

// A fold sent again after another broker folded the same finding in
// between still gets its first answer: the last 8 calls' tokens are kept,
// not the last one's. With the last one's alone, the other call's token
// had replaced it, the call sent again counted once more and answered "a
// repeat", and the other call had answered "a repeat" too: nobody
// reported the finding (atk92).
func TestAddFindingFoldSentAgainAfterAnotherBroker(t *testing.T) {
	const at = t0 + 777
	s, r := resentStore(t, strconv.FormatInt(at, 10))
	other := New(Options{Addrs: []string{r.Addr}, Timeout: time.Second}, keys.Builder{Prefix: "fg:"})
	t.Cleanup(func() { other.Close() })
	require.True(t, add(t, s, finding("dev-0", t0, "alice", "bob"), 1000), "the script cached")

	f := finding("dev-1", at, "alice", "bob")
	type result struct {
		reported bool
		err      error
	}
	done := make(chan result, 1)
	go func() {
		reported, err := s.AddFinding(context.Background(), f, period, ttl, 1000)
		done <- result{reported, err}
	}()
	fold := "fg:fold:" + FoldID(KindCrossPrincipal, "dev-1", []string{"alice", "bob"})
	deadline := time.Now().Add(2 * time.Second)
	for r.CLI("HGET", fold, "count") != "1" {
		require.True(t, time.Now().Before(deadline), "the first call did not run")
		time.Sleep(5 * time.Millisecond)
	}
	// The other broker's call, while the first one's reply is held back.
	g := finding("dev-1", at+1, "alice", "bob")
	reported, err := other.AddFinding(context.Background(), g, period, ttl, 1000)
	require.NoError(t, err)
	assert.False(t, reported, "a repeat within the fold period")

	res := <-done
	require.NoError(t, res.err)
	assert.True(t, res.reported, "the first call's answer, given again")
	assert.Equal(t, int64(1), f.Count, "its own count, not the other call's")
	assert.Equal(t, "2", r.CLI("HGET", fold, "count"), "each counted once")
}
