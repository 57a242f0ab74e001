package plugin

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// forgetting is a conflict store that counts ForgetScripts calls.
type forgetting struct {
	failingClaims
	n *atomic.Int64
}

func (f forgetting) ForgetScripts() { f.n.Add(1) }

// Redis answering again after it was seen down may have come back with an
// empty script cache (a restart, a failover): tracking's store is told, so
// that it sends its scripts by their source once more and the batches
// kept meanwhile are not replayed whole on NOSCRIPT (store.ForgetScripts,
// store's TestScriptsSentBySourceFirst). Within the health probe's period.
func TestRedisBackForgetsScripts(t *testing.T) {
	cfg, fs := aliceFlagStore(t)
	var n atomic.Int64
	g, err := NewWith(cfg, Output{Log: func(Level, string) {}}, Deps{Store: fs, Counter: &fakeCounter{}, Conflicts: forgetting{n: &n}})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	require.Zero(t, n.Load(), "told at start")
	g.health.down(errors.New("redis: connection refused"))
	require.Eventually(t, func() bool { return n.Load() == 1 }, 2*healthEvery+time.Second, 5*time.Millisecond, "not told when Redis answered again")
	time.Sleep(3 * healthEvery)
	require.EqualValues(t, 1, n.Load(), "told again while Redis stayed up")
}
