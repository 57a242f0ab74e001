package e2e

import (
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// atk82 (a README-only hostile tester): a password file's argon2id line with
// a 1-byte digest was loaded at a SIGHUP, and about one password in 256
// opened it ("p1491" among them). Now the line is skipped with a line naming
// the file and line number, its user refused, the others kept.
func TestAtk82ShortDigestSkippedOnReload(t *testing.T) {
	e := newEnv(t)
	f, err := os.OpenFile(e.passwd, os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString("u21:$argon2id$v=19$m=8,t=1,p=1$c2FsdA$AA\n")
	require.NoError(t, err)
	require.NoError(t, f.Close())
	e.broker.Reload()
	line := e.logLine("password_file", "line 3", "shorter than 16 bytes")
	assert.NotContains(t, line, "c2FsdA", "the hash was logged")
	assert.EqualValues(t, refused, e.connect(as("127.0.82.1", "u21-dev", "u21", "p1491")), "p1491 opened the 1-byte digest")
	assert.EqualValues(t, accepted, e.connect(as("127.0.82.2", "alice-dev", "alice", "alice-pw")))
}
