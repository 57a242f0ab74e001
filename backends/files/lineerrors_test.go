package files

import (
	"bytes"
	"fmt"
	"runtime"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/backends/hashes"
)

// A file of bad lines is reported by its first MaxLineErrors reports and a
// count, not a report kept per line: a README-only attacker's 64 MiB of
// "x:y" lines (16.7 million reports) took the broker 3 to 5 GiB at a
// SIGHUP. Here 2 million bad lines and 300 duplicate usernames: what the
// parse keeps (its result, held) stays under 1 MiB, where a report per line
// kept over 100 MiB.
func TestParseKeepsTheFirstReportsOnly(t *testing.T) {
	var buf bytes.Buffer
	hash := hash6Password
	for i := 0; i < 300; i++ { // each username twice: a duplicate report each
		fmt.Fprintf(&buf, "dup%d:%s\ndup%d:%s\n", i, hash, i, hash)
	}
	const bad = 2_000_000
	for i := 0; i < bad; i++ {
		buf.WriteString("x:y\n")
	}
	data := buf.Bytes()

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	p, skipped := parse(data, "/p", hashes.Verifier{})
	runtime.GC()
	runtime.ReadMemStats(&after)
	held := int64(after.HeapAlloc) - int64(before.HeapAlloc)

	require.Equal(t, MaxLineErrors, len(skipped), "reports kept")
	assert.Equal(t, bad+300, p.skipped, "every report counted")
	for i := 1; i < len(skipped); i++ {
		assert.Less(t, skipped[i-1].Line, skipped[i].Line, "in file order")
	}
	assert.NotEmpty(t, skipped[0].Username, "the first reports are the first in the file: the duplicates' lines come first")
	t.Logf("held after parsing %d bad lines: %d KiB", bad, held/1024)
	assert.Less(t, held, int64(1<<20), "the parse keeps a report per line")
	runtime.KeepAlive(p)
	runtime.KeepAlive(skipped)
	runtime.KeepAlive(data)
}
