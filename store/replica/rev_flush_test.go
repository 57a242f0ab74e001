package replica

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Hostile review of f15e57f: a flush check that finds the mark gone is a
// loss even when the mark cannot be set again (a Redis full under
// noeviction refusing the SETNX with OOM, an ACL tightened meanwhile).
// Before f15e57f OnFlushed was called on the check's finding; f15e57f
// moved the call into mark, which a refused mark never reaches: the known
// sources were neither forgotten nor written again.
func TestOnFlushedCalledAtAFlushWhoseMarkIsRefused(t *testing.T) {
	r, _, flushed := flushedSync(t, nil)
	time.Sleep(2 * flushCheckEvery)
	require.Zero(t, flushed.Load())
	r.CLI("CONFIG", "SET", "maxmemory", "1") // noeviction: every write refused with OOM
	r.CLI("FLUSHALL")
	assert.Eventually(t, func() bool { return flushed.Load() > 0 }, 2*flushCheckEvery+time.Second, 10*time.Millisecond)
}
