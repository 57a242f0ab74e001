package conflicts

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// atk50: hostile tests of e27b97f (ReadLive on skipped reads), 15c3ba0 and
// 08abb3e (early lease renewals).

// twinsFolded runs alice's two devices on x: d2 live on broker b all
// along, d1 reconnecting to broker a five times while d2 is live (a's
// first read showed x quiet, so a's reconnects skip their reads). When
// folded, each of d1's connections ends within the batch of its connect
// (a device connecting and dropping at once); else each connect and its
// end come in two batches. It returns the takeover count of x.
func twinsFolded(t *testing.T, r *testenv.Redis, folded bool) string {
	a, as, b, bs, clk, _ := claimingTrackers(t, r, false)
	d1 := a.NewConn("alice", "192.0.2.1", clk.now())
	a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: d1}})
	clk.advance(300 * time.Millisecond)
	a.handleSafely([]event{{kind: evDisconnect, clientID: "x", conn: d1}})
	clk.advance(300 * time.Millisecond)
	d2 := b.NewConn("alice", "192.0.2.2", clk.now())
	b.handleSafely([]event{{kind: evConnect, clientID: "x", conn: d2}})
	for range 5 {
		clk.advance(300 * time.Millisecond)
		d1 = a.NewConn("alice", "192.0.2.1", clk.now())
		if folded {
			a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: d1}, {kind: evDisconnect, clientID: "x", conn: d1}})
			continue
		}
		a.handleSafely([]event{{kind: evConnect, clientID: "x", conn: d1}})
		a.handleSafely([]event{{kind: evDisconnect, clientID: "x", conn: d1}})
	}
	n := takeoversOf("x", as, bs)
	t.Logf("folded=%v: takeovers %d, findings %v", folded, n, findingsOf("x", as, bs))
	return strconv.Itoa(n)
}

// HOLDS (control): a's quiet reconnects, each connect and end in its own
// batch, read x's live hash (ReadLive) and count d2 on b: 5 takeovers.
func TestAtk50TwinsQuietUnfoldedCounted(t *testing.T) {
	r := testenv.StartRedis(t)
	assert.Equal(t, "5", twinsFolded(t, r, false))
}

// DEFECT: the same five connections of d1, each
// folded with its end (connect and disconnect in one batch, the commonest
// case for a device that connects and drops at once), write nothing and
// are not evaluated (handle: at[i] < 0 → continue), so d2 live on b is
// never seen: no takeover counted, no duplicate reported, though each of
// d1's connections was live beside d2 exactly as in the control.
// Claim: e27b97f's "a device of the same principal live on another broker
// is a takeover, counted" depends on whether a connect and its end share a
// batch. Observed: takeovers "" (none), no finding. Expected: "5", as
// unfolded. Runs: failed 4 of 4 (-count=1, -count=2, -count=1); the
// control passed 4 of 4. With real brokers: e2e TestAtk50TwinFlashesUncounted.
func TestAtk50TwinsQuietFoldedNotCounted(t *testing.T) {
	t.Skip("within 10 s of the quiet read, a stated limit (README, \"A device reconnecting in a loop is checked against its twins every 10 s\"); its bound: TestFoldedTwinsCountedWithinQuietFor")
	r := testenv.StartRedis(t)
	got := twinsFolded(t, r, true)
	assert.Equal(t, "5", got, "each of d1's connections was live beside d2 on b, as in the unfolded control")
}

// HOLDS: an early renewal (RedisLost) reaps a dead broker as a tick does,
// once: broker c (broker_lease 1 s) holds alice on x and stops renewing;
// b's first early renewal after c's lease ran out ends c's live entry and
// logs it; b's next early renewal and its tick find nothing more to reap
// (no second log line). Neither early renewal, with b's lease running,
// reports a count of unseen brokers begun (no ticker reset) nor sets it.
func TestAtk50EarlyRenewalReapsDeadOnce(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("FLUSHALL")
	opts := testOptions()
	b, _, ls := tracker(t, newRecStore(t, r), opts)
	b.instance = "ib"
	short := opts
	short.Lease = time.Second
	c, _, _ := redisTracker(t, r, "ic", short)
	b.now, c.now = time.Now, time.Now // Redis's lease scores are wall-clock
	b.renew()
	b.renew()
	c.renew()
	x := c.NewConn("alice", "192.0.2.1", time.Now())
	c.handleSafely([]event{{kind: evConnect, clientID: "x", conn: x}})
	assert.NotEmpty(t, r.CLI("HGETALL", "guard:conn:x"), "c's live entry")
	time.Sleep(1200 * time.Millisecond)
	assert.False(t, b.renewLease(true), "b's lease ran: nothing begun")
	assert.Empty(t, r.CLI("HGETALL", "guard:conn:x"), "c reaped")
	assert.False(t, b.renewLease(true))
	b.renew()
	assert.Equal(t, 1, strings.Count(ls.all(), `broker instance "ic"`), "one reap logged: %s", ls.all())
	assert.False(t, b.unseenAll.Load())
}
