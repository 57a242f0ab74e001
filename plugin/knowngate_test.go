package plugin

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
)

// A refused read of known sources does not silence a refused write for the
// interval, nor the other way round: each has its own line (atk66).
func TestKnownReadAndWriteRefusalsApart(t *testing.T) {
	var lines []string
	k := &knownSources{knownDeps: knownDeps{log: func(_ Level, s string) { lines = append(lines, s) }}}
	k.refusedBy("reading", errors.New("NOPERM this user has no permissions to run the 'zrange' command"))
	k.refusedBy("reading", errors.New("NOPERM again"))
	k.refusedBy("writing", errors.New("OOM command not allowed when used memory > 'maxmemory'."))
	k.refusedBy("writing", errors.New("OOM again"))
	if assert.Len(t, lines, 2, "%q", lines) {
		assert.Contains(t, lines[0], "redis refused reading known sources (NOPERM")
		assert.Contains(t, lines[1], "redis refused writing known sources (OOM")
	}
}
