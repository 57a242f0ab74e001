package fileread

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// atk53: a README audit (commit 648f3ea) of the Development section.

// DEFECT. README line 2438-2444, the layout drawing: "internal/ batchq
// (...), logline (...), logval (...), logflood (...), offheap (...),
// testenv (...), mqttc (...)": internal/fileread, which config
// (brokerconf.go, managed.go) and backends/files read every operator's file
// through since 18ea716, is not in it. README line 2458: "Each package's
// `doc.go` says what it holds": internal/fileread, internal/batchq and
// internal/offheap have none (their package comment is in fileread.go,
// batchq.go, table.go).
func TestAtk53DevelopmentDrawingNamesThisPackage(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	require.NoError(t, err)
	s := string(readme)
	start := strings.Index(s, "\ninternal/ ")
	require.GreaterOrEqual(t, start, 0)
	end := strings.Index(s[start+1:], "\npackaging/")
	require.Greater(t, end, 0)
	entry := s[start : start+1+end]
	t.Logf("README's internal/ entry:%s", entry)
	assert.Contains(t, entry, "fileread", "README: the layout drawing lists internal's packages")
	for _, pkg := range []string{"fileread", "batchq", "offheap"} {
		_, err := os.Stat(filepath.Join("..", pkg, "doc.go"))
		assert.NoError(t, err, "README: each package's doc.go says what it holds (internal/%s)", pkg)
	}
}
