package store

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// readsProcessed is Redis's count of reads from its clients (INFO stats'
// total_reads_processed): a round trip is one read, or more for a request
// longer than Redis reads at once.
func readsProcessed(t *testing.T, r *testenv.Redis) int {
	t.Helper()
	for _, line := range strings.Split(r.CLI("INFO", "stats"), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "total_reads_processed:"); ok {
			n, err := strconv.Atoi(v)
			require.NoError(t, err)
			return n
		}
	}
	t.Fatal("no total_reads_processed in INFO stats")
	return 0
}

// A batch's takeovers are counted in one round trip, each as
// CountTakeoverTracked one after the other would count it (a client ID
// twice: 1 then 2); after SCRIPT FLUSH, the calls that met NOSCRIPT are
// sent again, by their source, each counted once.
func TestCountTakeoversOneRoundTrip(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	_, err := s.CountTakeoversTracked(ctx, []string{"warm"}, time.Minute) // the script cached, the connection made
	require.NoError(t, err)
	var ids []string
	var want []int64
	for i := range 50 {
		ids = append(ids, "dev-"+strconv.Itoa(i))
		want = append(want, 1)
	}
	ids, want = append(ids, "dev-0", "dev-7", "dev-0"), append(want, 2, 2, 3)

	before := readsProcessed(t, r)
	n, err := s.CountTakeoversTracked(ctx, ids, time.Minute)
	require.NoError(t, err)
	assert.Equal(t, want, n)
	reads := readsProcessed(t, r) - before - 1 // the INFO's own read
	assert.LessOrEqual(t, reads, 3, "53 counts in one round trip, not 53")

	r.CLI("SCRIPT", "FLUSH")
	n, err = s.CountTakeoversTracked(ctx, []string{"dev-1", "new", "dev-1"}, time.Minute)
	require.NoError(t, err)
	assert.Equal(t, []int64{2, 1, 3}, n, "each counted once after NOSCRIPT")
	assert.Equal(t, "3", r.CLI("GET", keys.Builder{Prefix: "guard:"}.TakeoversTracked("dev-1")))
	assert.NotEqual(t, "-1", r.CLI("PTTL", keys.Builder{Prefix: "guard:"}.TakeoversTracked("new")), "a count has its window")

	// Any other error fails the count.
	r.CLI("HSET", keys.Builder{Prefix: "guard:"}.TakeoversTracked("bad"), "f", "v")
	_, err = s.CountTakeoversTracked(ctx, []string{"dev-2", "bad"}, time.Minute)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "WRONGTYPE")
}
