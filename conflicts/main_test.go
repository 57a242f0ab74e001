package conflicts

import (
	"os"
	"testing"
)

// TestMain runs the package's tests with a renewal that waits for its dead
// brokers' reaps up to renewBound, as it did before they ran beside the
// worker: a test that renews and then reads what a reap wrote sees it
// done on a busy machine too (reapInline).
func TestMain(m *testing.M) {
	reapInline = renewBound
	os.Exit(m.Run())
}
