package plugin

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// publishRefusedLogEvery: a refused publish is logged at most once per this.
const publishRefusedLogEvery = 10 * time.Minute

// publishChange tells the other brokers' replicas that key changed (an
// automatic ban, a throttle), bounded by ctx. Redis's refusal of rights
// (NOPERM: an ACL user without PUBLISH, or without the channel) is logged,
// at most once per publishRefusedLogEvery: brokers whose Redis sends no
// keyspace notifications see the change only at their next reload, and no
// line said why (atk61). Any other reply (BUSY, LOADING: Redis refusing
// every command for a moment, which the health probe reports) is not
// taken for missing rights, nor does it use the interval's line up (atk63).
// A timeout or a lost connection is the health probe's to report too.
func (g *Guard) publishChange(ctx context.Context, key string) {
	err := g.bgStore.PublishChange(ctx, key)
	var re redis.Error
	if !store.IsReply(err) || !errors.As(err, &re) || !strings.HasPrefix(re.Error(), "NOPERM") || !g.published.allow(publishRefusedLogEvery) {
		return
	}
	ch := keys.Builder{Prefix: g.cfg.KeyPrefix}.Changes()
	give := "the channel (ACL: &" + ch + " or allchannels)"
	// Redis 6 and 7 say "no permissions to run the 'publish' command" for
	// the command; for the channel, "access one of the channels" (7.0) or
	// "access the '<channel>' channel" (7.2), where a user or prefix may
	// hold the word "command" (atk64).
	if strings.Contains(strings.ToLower(re.Error()), "run the 'publish' command") {
		give = "the PUBLISH command (ACL: +publish)"
	}
	g.log(LevelWarning, fmt.Sprintf("mosquitto-guard: redis refused to publish a change on %s (%s): brokers whose Redis sends no keyspace notifications see this broker's automatic bans and throttles only at their next reload (replica_resync); give the plugin's Redis user %s (said at most once per %v)",
		ch, store.OneLine(err), give, publishRefusedLogEvery))
}
