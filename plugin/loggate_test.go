package plugin

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// One line per interval, whatever the callers' number: of 8 goroutines
// asking at once, one is let through; the next interval lets one more.
func TestLogGateOncePerInterval(t *testing.T) {
	var g logGate
	now := time.Unix(1_800_000_000, 0)
	var passed atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if g.allowAt(now, time.Minute) {
				passed.Add(1)
			}
		}()
	}
	wg.Wait()
	assert.EqualValues(t, 1, passed.Load())
	assert.False(t, g.allowAt(now.Add(59*time.Second), time.Minute))
	assert.True(t, g.allowAt(now.Add(time.Minute), time.Minute))

	var real logGate // on the monotonic clock
	assert.True(t, real.allow(time.Hour))
	assert.False(t, real.allow(time.Hour))
}
