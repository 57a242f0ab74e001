package conflicts

import (
	"context"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
)

// renew extends this broker's lease, learns which brokers are alive, and
// ends the live connections of brokers whose lease ran out (store.Reap).
// The disconnects kept for retry are written first.
func (t *Tracker) renew() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	t.flushRetry(ctx)
	live, dead, err := t.store.RenewLease(ctx, t.instance, t.opts.Lease)
	if err != nil {
		return // Redis down: the plugin's health check reports it; live brokers are kept as they were
	}
	t.live.Store(&live)
	for _, d := range dead {
		// An error (ErrLeaseRuns: the broker is back) clears nothing to report.
		if err := t.store.Reap(ctx, d, t.now().UnixMilli(), t.opts.Lease, t.opts.Window); err == nil {
			t.log(LevelNotice, "mosquitto-guard: cleared the live connections of broker instance "+logval.Quote(d)+": its lease ran out")
		}
	}
}

// Close ends this broker's live connections in Redis (store.Reap: each
// one's end written to its principal's seen record, its live entry
// removed): clients still connected at shutdown get no DISCONNECT. Call it
// once Run has returned. ctx bounds it (the plugin's cleanup gives it what
// is left of its 1.5 s), and 2 s: past it, the broker's lease running out
// ends the rest on the other brokers, or on this one's next start (within
// broker_lease). Its own lease is not read: this broker knows it stops now.
func (t *Tracker) Close(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_ = t.store.Reap(ctx, t.instance, t.now().UnixMilli(), 0, t.opts.Window)
}
