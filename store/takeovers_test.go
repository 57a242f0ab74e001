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

func takeovers(ids ...string) []Takeover {
	ts := make([]Takeover, len(ids))
	for i, id := range ids {
		ts[i] = Takeover{Tracked: id, ConnID: "i-" + strconv.Itoa(i+1)}
	}
	return ts
}

// A batch's takeovers are counted in one round trip, each as CountTakeover
// one after the other would count it (a client ID twice: 1 then 2); after
// SCRIPT FLUSH, the calls that met NOSCRIPT are sent again, by their
// source, each counted once.
func TestCountTakeoversOneRoundTrip(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	kb := keys.Builder{Prefix: "guard:"}
	_, err := s.CountTakeovers(ctx, takeovers("warm"), time.Minute, 3) // the script cached, the connection made
	require.NoError(t, err)
	var ids []string
	var want []int64
	for i := range 50 {
		ids = append(ids, "dev-"+strconv.Itoa(i))
		want = append(want, 1)
	}
	ids, want = append(ids, "dev-0", "dev-7", "dev-0"), append(want, 2, 2, 3)

	before := readsProcessed(t, r)
	n, err := s.CountTakeovers(ctx, takeovers(ids...), time.Minute, 3)
	require.NoError(t, err)
	assert.Equal(t, want, n)
	reads := readsProcessed(t, r) - before - 1 // the INFO's own read
	assert.LessOrEqual(t, reads, 3, "53 counts in one round trip, not 53")

	r.CLI("SCRIPT", "FLUSH")
	n, err = s.CountTakeovers(ctx, []Takeover{{"dev-1", "x-1"}, {"new", "x-2"}, {"dev-1", "x-3"}}, time.Minute, 5)
	require.NoError(t, err)
	assert.Equal(t, []int64{2, 1, 3}, n, "each counted once after NOSCRIPT")
	assert.Equal(t, "3", r.CLI("HLEN", kb.TakeoverConnsTracked("dev-1")))
	assert.NotEqual(t, "-1", r.CLI("PTTL", kb.TakeoverConnsTracked("new")), "a count has its window")

	// Any other error fails that call alone: -1, and the error returned
	// with the counts that ran. Before, every count of the batch was
	// dropped.
	r.CLI("SET", kb.TakeoverConnsTracked("bad"), "v")
	n, err = s.CountTakeovers(ctx, takeovers("dev-2", "bad", "dev-4"), time.Minute, 3)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "WRONGTYPE")
	assert.Equal(t, []int64{2, -1, 2}, n, "the others counted")
}

// A batch of takeover counts that Redis ran and whose replies were lost
// with the connection (go-redis's background client sends the whole
// pipeline again on a new one) counts each connection once: before, each
// was a counter's INCR, and the batch counted twice (a device's first
// takeover read as its second, and takeover_limit reached early).
func TestCountTakeoversSentAgainCountOnce(t *testing.T) {
	r := testenv.StartRedis(t)
	s := New(Options{Addrs: []string{closingProxy(t, r.Addr, "takeoverconns:cut-", true)}, Timeout: time.Second}, keys.Builder{Prefix: "guard:"})
	t.Cleanup(func() { s.Close() })
	bg := s.Background()
	ctx := context.Background()
	_, err := bg.CountTakeovers(ctx, takeovers("warm"), time.Minute, 3) // the script cached
	require.NoError(t, err)
	n, err := bg.CountTakeovers(ctx, takeovers("cut-a", "cut-b", "cut-c"), time.Minute, 3)
	require.NoError(t, err, "sent again on a new connection")
	assert.Equal(t, []int64{1, 1, 1}, n)
	for _, id := range []string{"cut-a", "cut-b", "cut-c"} {
		assert.Equal(t, "1", r.CLI("HLEN", keys.Builder{Prefix: "guard:"}.TakeoverConnsTracked(id)), id)
	}
}
