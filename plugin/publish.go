package plugin

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// publishRefusedLogEvery: a refused publish is logged at most once per this.
const publishRefusedLogEvery = 10 * time.Minute

// publishLog is when a refused publish was last logged (unix ms).
type publishLog struct{ at atomic.Int64 }

// publishChange tells the other brokers' replicas that key changed (an
// automatic ban, a throttle), bounded by ctx. Redis's refusal (an ACL user
// without PUBLISH rights) is logged, at most once per
// publishRefusedLogEvery: brokers whose Redis sends no keyspace
// notifications see the change only at their next reload, and no line said
// why (atk61). A timeout or a lost connection is the health probe's to
// report.
func (g *Guard) publishChange(ctx context.Context, key string) {
	err := g.bgStore.PublishChange(ctx, key)
	if err == nil || !store.IsReply(err) {
		return
	}
	now := time.Now().UnixMilli()
	last := g.published.at.Load()
	if (last != 0 && now-last < publishRefusedLogEvery.Milliseconds()) || !g.published.at.CompareAndSwap(last, now) {
		return
	}
	ch := keys.Builder{Prefix: g.cfg.KeyPrefix}.Changes()
	g.log(LevelWarning, fmt.Sprintf("mosquitto-guard: redis refused to publish a change on %s (%s): brokers whose Redis sends no keyspace notifications see this broker's automatic bans and throttles only at their next reload (replica_resync); give the plugin's Redis user the channel (ACL: &%s or allchannels) (said at most once per %v)",
		ch, store.OneLine(err), ch, publishRefusedLogEvery))
}
