package conflicts

import (
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The table's marks, {0, 0} (empty) and {0, 1} (tombstone), are no key:
// Tracker.memo sets a's low bit, and the table refuses them.
func TestMemoKeyNeverMark(t *testing.T) {
	tr := New(testOptions(), Deps{Store: &nullStore{}})
	for i := 0; i < 1000; i++ {
		k := tr.memo("dev-"+strconv.Itoa(i), "p")
		require.NotZero(t, k.a&1)
	}
	assert.Panics(t, func() { tr.ids.Put(memoKey{}, packedMemo{}) })
	assert.Panics(t, func() { tr.ids.Put(memoKey{0, 1}, packedMemo{}) })
	assert.Zero(t, tr.ids.Mapped())
}

// The worker unmaps the memos when it returns (the plugin's cleanup stops
// it): nothing of them is left mapped once Run is over.
func TestRunUnmapsMemos(t *testing.T) {
	mem := newMemStore()
	tr := New(testOptions(), Deps{Store: mem})
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { tr.Run(stop); close(done) }()
	for i := range 100 {
		tr.Connected("dev-"+strconv.Itoa(i), tr.NewConn("alice", "192.0.2.1", time.Now()), nil)
	}
	require.Eventually(t, func() bool {
		mem.mu.Lock()
		defer mem.mu.Unlock()
		return mem.writes >= 100
	}, 5*time.Second, 10*time.Millisecond)
	close(stop)
	<-done
	assert.Positive(t, tr.peak, "the worker kept memos")
	assert.Zero(t, tr.ids.Mapped(), "the memos are still mapped")
	assert.Zero(t, tr.ids.Len())
}
