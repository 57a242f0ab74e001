package plugin

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// A source that succeeded within conflict_window is known, whatever the
// window (the option allows 1 minute to 366 days): a device that connects
// every few minutes keeps connecting through an attack on its username.
// A source is written at most once per knownRefresh (1 hour), and both the
// in-memory recent map and the Redis set are read against the time of the
// last write: with conflict_window 10m, a device that succeeded 5 minutes
// ago, and first 15 minutes ago, is not known.
func TestAttackI12bKnownWithinShortWindow(t *testing.T) {
	k, _, _ := knownOnRedis(t, 10*time.Minute)

	ip := netip.MustParseAddr("192.0.2.7")
	now := time.Now()
	k.succeeded("fleet", ip, "dev-1", now.Add(-15*time.Minute))
	k.succeeded("fleet", ip, "dev-1", now.Add(-5*time.Minute))
	time.Sleep(300 * time.Millisecond) // written (knownLinger 100 ms)

	byIP, byID := k.known("fleet", ip, "dev-1", now)
	time.Sleep(200 * time.Millisecond) // the set loaded from Redis
	byIP2, byID2 := k.known("fleet", ip, "dev-1", now)
	assert.True(t, byIP || byIP2, "the IP succeeded 5 minutes ago, within conflict_window 10m")
	assert.True(t, byID || byID2, "the client ID succeeded 5 minutes ago, within conflict_window 10m")
}
