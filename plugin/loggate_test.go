package plugin

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// One line per interval, whatever the callers' number: of 8 goroutines
// let go at once, one is let through (1 000 times over, a fresh gate each:
// a gate that read and wrote its time apart would let two through in some
// of them; atk68); the next interval lets one more.
func TestLogGateOncePerInterval(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	var g *logGate
	for round := 0; round < 1000; round++ {
		g = new(logGate)
		var passed atomic.Int32
		var ready, done sync.WaitGroup
		start := make(chan struct{})
		for i := 0; i < 8; i++ {
			ready.Add(1)
			done.Add(1)
			go func() {
				defer done.Done()
				ready.Done()
				<-start
				if g.allowAt(now, time.Minute) {
					passed.Add(1)
				}
			}()
		}
		ready.Wait()
		close(start)
		done.Wait()
		if !assert.EqualValues(t, 1, passed.Load(), "round %d", round) {
			break
		}
	}
	assert.False(t, g.allowAt(now.Add(59*time.Second), time.Minute))
	assert.True(t, g.allowAt(now.Add(time.Minute), time.Minute))

	var real logGate // allow: time.Now
	assert.True(t, real.allow(time.Hour))
	assert.False(t, real.allow(time.Hour))
}
