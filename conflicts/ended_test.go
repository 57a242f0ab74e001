package conflicts

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// recStore is a real store that also keeps the writes the worker sends,
// the client IDs of the findings it adds, and the takeovers it counts.
type recStore struct {
	*store.Store
	mu        sync.Mutex
	writes    []store.ConnWrite
	findings  map[string][]string // client ID: the principals of each finding
	takeovers map[string]int      // client ID (tracking form): takeovers counted
}

func (s *recStore) CountTakeovers(ctx context.Context, ts []store.Takeover, window time.Duration, limit int) ([]int64, error) {
	s.mu.Lock()
	if s.takeovers == nil {
		s.takeovers = map[string]int{}
	}
	for _, tk := range ts {
		s.takeovers[tk.Tracked]++
	}
	s.mu.Unlock()
	return s.Store.CountTakeovers(ctx, ts, window, limit)
}

// takeoversOf is how many takeovers of client ID id the stores counted
// (Redis keeps at most takeover_limit of them).
func takeoversOf(id string, ss ...*recStore) int {
	n := 0
	for _, s := range ss {
		s.mu.Lock()
		n += s.takeovers[id]
		s.mu.Unlock()
	}
	return n
}

func (s *recStore) WriteConns(ctx context.Context, ws []store.ConnWrite, window time.Duration) ([]store.State, error) {
	s.mu.Lock()
	s.writes = append(s.writes, ws...)
	s.mu.Unlock()
	return s.Store.WriteConns(ctx, ws, window)
}

func (s *recStore) AddFinding(ctx context.Context, f *store.Finding, period, ttl time.Duration, max int64) (bool, error) {
	s.mu.Lock()
	if s.findings == nil {
		s.findings = map[string][]string{}
	}
	s.findings[f.ClientID] = append(s.findings[f.ClientID], strings.Join(f.Principals, ","))
	s.mu.Unlock()
	return s.Store.AddFinding(ctx, f, period, ttl, max)
}

// ended counts the writes folded as ended.
func (s *recStore) ended() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, w := range s.writes {
		if w.Ended {
			n++
		}
	}
	return n
}

// newRecStore is a recStore on r (prefix guard:, a 5 s timeout), closed
// at the test's end.
func newRecStore(t testing.TB, r *testenv.Redis) *recStore {
	s := &recStore{Store: store.New(store.Options{Addrs: []string{r.Addr}, Timeout: 5 * time.Second}, keys.Builder{Prefix: "guard:"})}
	t.Cleanup(func() { s.Close() })
	return s
}

func redisTracker(t *testing.T, r *testenv.Redis, instance string, opts Options) (*Tracker, *recStore, *clock) {
	t.Helper()
	s := newRecStore(t, r)
	c, clk, _ := tracker(t, s, opts)
	c.instance = instance
	return c, s, clk
}

// commandsSoFar is the commands Redis ran (INFO commandstats, those run by
// scripts included), INFO's own left out.
func commandsSoFar(t *testing.T, r *testenv.Redis) int64 {
	var n int64
	for _, line := range strings.Split(r.CLI("INFO", "commandstats"), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(k, "cmdstat_") || k == "cmdstat_info" {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(v, "calls="), ",")
		c, err := strconv.ParseInt(calls, 10, 64)
		require.NoError(t, err, line)
		n += c
	}
	return n
}

// dumpKeys is the keys of client ID id and of instance's brokerconns set
// as Redis holds them: type, content, and whether they expire.
func dumpKeys(t *testing.T, r *testenv.Redis, ids []string, instance string) map[string]string {
	kb := keys.Builder{Prefix: "guard:"}
	ks := []string{kb.BrokerConns(instance)}
	for _, id := range ids {
		ks = append(ks, kb.Conn(id), kb.Seen(id))
	}
	out := map[string]string{}
	for _, k := range ks {
		v := strings.TrimSpace(r.CLI("TYPE", k))
		switch v {
		case "hash":
			// Field and value pairs, sorted: a hash's order is not its content.
			lines := strings.Split(strings.TrimSpace(r.CLI("HGETALL", k)), "\n")
			var fields []string
			for i := 0; i+1 < len(lines); i += 2 {
				fields = append(fields, lines[i]+"="+lines[i+1])
			}
			sort.Strings(fields)
			v += " " + strings.Join(fields, " ")
		case "set":
			v += " " + r.CLI("SMEMBERS", k)
		}
		ttl, err := strconv.ParseInt(strings.TrimSpace(r.CLI("PTTL", k)), 10, 64)
		require.NoError(t, err)
		switch {
		case ttl < 0:
			v += fmt.Sprintf(" ttl %d", ttl)
		case ttl > (time.Hour - time.Minute).Milliseconds():
			v += " expires in the window"
		default:
			v += " expires early"
		}
		out[k] = v
	}
	return out
}

// A new client ID that connects and disconnects within one batch costs
// Redis 9 commands under clientid_conflict flag (the live hash read, the
// seen record's PEXPIRE, HSET, PEXPIRE and read back; and, since atk82, the
// principal's client-ID index: EVALSHA, ZADD, PEXPIRE, ZCARD), not 16 (the
// pair: HSET, HGETALL, SADD, the seen 4, HDEL, SREM, the compare-and-set,
// the index's 4), and
// leaves nothing live behind: no field, no brokerconns member; its seen
// record holds its end.
func TestEndedPairCost(t *testing.T) {
	r := testenv.StartRedis(t)
	opts := testOptions()
	opts.Window = time.Hour
	c, s, clk := redisTracker(t, r, "0123456789ab", opts)
	ctx := context.Background()
	pairs := func(from, n int) []event {
		var batch []event
		for i := from; i < from+n; i++ {
			x := c.NewConn("user-"+strconv.Itoa(i), "192.0.2.1", clk.now())
			batch = append(batch,
				event{kind: evConnect, clientID: "device-" + strconv.Itoa(i), conn: x},
				event{kind: evDisconnect, clientID: "device-" + strconv.Itoa(i), conn: x})
		}
		return batch
	}
	require.NoError(t, c.handle(ctx, pairs(0, 1))) // connection made
	const n = 64
	before := commandsSoFar(t, r)
	require.NoError(t, c.handle(ctx, pairs(1, n)))
	per := float64(commandsSoFar(t, r)-before) / n
	assert.LessOrEqual(t, per, 9.0, "Redis commands per new client ID connecting and disconnecting within one batch")
	t.Logf("%.2f Redis commands per new client ID", per)
	assert.Equal(t, n+1, s.ended())

	var ids []string
	for i := 0; i <= n; i++ {
		ids = append(ids, "device-"+strconv.Itoa(i))
	}
	dump := dumpKeys(t, r, ids, c.instance)
	kb := keys.Builder{Prefix: "guard:"}
	assert.Equal(t, "none ttl -2", dump[kb.BrokerConns(c.instance)], "no brokerconns member")
	for _, id := range ids {
		assert.Equal(t, "none ttl -2", dump[kb.Conn(id)], "no live field of %s", id)
		assert.Contains(t, dump[kb.Seen(id)], `"disconnected_ms":`+strconv.FormatInt(clk.now().UnixMilli(), 10), id)
		assert.Contains(t, dump[kb.Seen(id)], "expires in the window", id)
	}
}

// A connection folded as ended leaves Redis as its pair of writes does:
// the same bytes in the client ID's seen hash (its final record, the same
// TTL), its live hash and this instance's brokerconns set; and the same
// findings. The pair is the connect in one batch and its disconnect in the
// next, at the same instant: the writes a batch holding both made before
// the fold. Cases: a new client ID; one another principal holds live on
// another broker (a finding); one another principal used within the
// window (a finding); a principal too long for Redis (stored hashed).
func TestEndedPairStoresTheSame(t *testing.T) {
	ctx := context.Background()
	long := strings.Repeat("p", 300)
	ids := []string{"dev-new", "dev-live", "dev-seen", "dev-long"}
	run := func(fold bool) (map[string]string, map[string][]string) {
		r := testenv.StartRedis(t)
		opts := testOptions()
		opts.Window = time.Hour
		other, _, oclk := redisTracker(t, r, "i2", opts)
		c, s, clk := redisTracker(t, r, "i1", opts)
		// dev-live: carol connected on i2, still live; dev-seen: dave
		// connected and left on i2.
		carol := other.NewConn("carol", "192.0.2.3", oclk.now())
		dave := other.NewConn("dave", "192.0.2.4", oclk.now())
		require.NoError(t, other.handle(ctx, []event{
			{kind: evConnect, clientID: "dev-live", conn: carol},
			{kind: evConnect, clientID: "dev-seen", conn: dave},
		}))
		require.NoError(t, other.handle(ctx, []event{{kind: evDisconnect, clientID: "dev-seen", conn: dave}}))
		other.renew()
		c.renew()
		clk.advance(time.Second)

		var connects, disconnects []event
		for i, id := range ids {
			p := "alice"
			if id == "dev-long" {
				p = long
			}
			x := c.NewConn(p, "192.0.2."+strconv.Itoa(10+i), clk.now())
			connects = append(connects, event{kind: evConnect, clientID: id, conn: x})
			disconnects = append(disconnects, event{kind: evDisconnect, clientID: id, conn: x})
		}
		if fold {
			var batch []event
			for i := range connects {
				batch = append(batch, connects[i], disconnects[i])
			}
			require.NoError(t, c.handle(ctx, batch))
			assert.Equal(t, len(ids), s.ended())
		} else {
			require.NoError(t, c.handle(ctx, connects))
			require.NoError(t, c.handle(ctx, disconnects))
			assert.Zero(t, s.ended())
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		return dumpKeys(t, r, ids, "i1"), s.findings
	}
	pairDump, pairFound := run(false)
	foldDump, foldFound := run(true)
	assert.Equal(t, pairDump, foldDump)
	assert.Equal(t, pairFound, foldFound)
	assert.Equal(t, map[string][]string{"dev-live": {"alice,carol"}, "dev-seen": {"alice,dave"}}, foldFound)
	kb := keys.Builder{Prefix: "guard:"}
	assert.Contains(t, foldDump[kb.Seen("dev-long")], keys.Tracking(long), "a long principal is stored hashed")
	assert.Contains(t, foldDump[kb.Conn("dev-live")], "carol", "the other broker's live entry is untouched")
}

// Two brokers, two principals, the same client IDs, every connection short
// (its connect and disconnect in one batch, folded as ended on both): the
// conflict is still found for every client ID, by whichever broker's read
// of the seen hash comes last.
func TestEndedPairsCrossPrincipal(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	a, as, _ := redisTracker(t, r, "ia", testOptions())
	b, bs, _ := redisTracker(t, r, "ib", testOptions())
	a.renew()
	b.renew()
	const n = 100
	var wg sync.WaitGroup
	for side, w := range []*Tracker{a, b} {
		wg.Add(1)
		go func(p string, w *Tracker) {
			defer wg.Done()
			for i := 0; i < n; i++ {
				x := w.NewConn(p, "192.0.2.1", w.now())
				id := "dev-" + strconv.Itoa(i)
				assert.NoError(t, w.handle(ctx, []event{{kind: evConnect, clientID: id, conn: x}, {kind: evDisconnect, clientID: id, conn: x}}))
			}
		}([]string{"alice", "bob"}[side], w)
	}
	wg.Wait()
	assert.Equal(t, n, as.ended())
	assert.Equal(t, n, bs.ended())
	for i := 0; i < n; i++ {
		id := "dev-" + strconv.Itoa(i)
		got := append(append([]string(nil), as.findings[id]...), bs.findings[id]...)
		if assert.NotEmpty(t, got, "%s: the conflict is found", id) {
			assert.Equal(t, "alice,bob", got[0])
		}
	}
}

// A takeover within the batch, and a client ID this instance holds live
// already, keep the pair's writes (an older connection of this instance
// must be overwritten and compare-deleted, and unlisted): nothing is folded
// as ended, and nothing is left live once every connection ended.
func TestEndedFoldKeepsTakeovers(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	c, s, clk := redisTracker(t, r, "i1", testOptions())
	kb := keys.Builder{Prefix: "guard:"}

	// A takeover within one batch: x1 connects, x2 takes it over, both end.
	x1 := c.NewConn("alice", "192.0.2.1", clk.now())
	x2 := c.NewConn("alice", "192.0.2.1", clk.now())
	require.NoError(t, c.handle(ctx, []event{
		{kind: evConnect, clientID: "dev", conn: x1},
		{kind: evConnect, clientID: "dev", conn: x2, other: &x1},
		{kind: evDisconnect, clientID: "dev", conn: x1},
		{kind: evDisconnect, clientID: "dev", conn: x2},
	}))
	assert.Zero(t, s.ended(), "a takeover within the batch keeps the pair's writes")

	// Listed already: y1 stays connected; y2, another principal (so read,
	// not quiet), takes it over and both end in the next batch.
	y1 := c.NewConn("alice", "192.0.2.1", clk.now())
	require.NoError(t, c.handle(ctx, []event{{kind: evConnect, clientID: "dev2", conn: y1}}))
	assert.Contains(t, r.CLI("HGETALL", kb.Conn("dev2")), c.StoreConn(y1).ID)
	y2 := c.NewConn("bob", "192.0.2.2", clk.now())
	require.NoError(t, c.handle(ctx, []event{
		{kind: evConnect, clientID: "dev2", conn: y2, other: &y1},
		{kind: evDisconnect, clientID: "dev2", conn: y2},
		{kind: evDisconnect, clientID: "dev2", conn: y1},
	}))
	assert.Zero(t, s.ended(), "a client ID listed live for this instance keeps the pair's writes")
	dump := dumpKeys(t, r, []string{"dev", "dev2"}, "i1")
	for _, k := range []string{kb.Conn("dev"), kb.Conn("dev2"), kb.BrokerConns("i1")} {
		assert.Equal(t, "none ttl -2", dump[k], k)
	}
	assert.Contains(t, dump[kb.Seen("dev")], c.StoreConn(x1).ID, "x1 recorded the use; x2's came within seenRefresh")
	assert.Contains(t, dump[kb.Seen("dev")], `"disconnected_ms":`, "and x1's end")
	assert.Contains(t, dump[kb.Seen("dev2")], c.StoreConn(y2).ID, "y2 recorded bob's use")
	assert.Equal(t, "1", strings.TrimSpace(r.CLI("HLEN", kb.TakeoverConns("dev"))), "the takeover is counted")
	assert.Equal(t, []string{"alice,bob"}, s.findings["dev2"], "bob took over alice's live connection")
}
