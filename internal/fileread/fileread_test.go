package fileread

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// within runs f and fails the test if it has not returned in 3 s: every
// call of this package must return at once.
func within(t *testing.T, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(3 * time.Second):
		t.Fatal("still waiting after 3 s")
		return nil
	}
}

// What is not a regular file within the bound is refused at once, each
// reason told apart, the bound said in the message.
func TestReadRefusesAtOnce(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	big := filepath.Join(dir, "big")
	require.NoError(t, os.WriteFile(big, make([]byte, 2<<20+1), 0o600))
	for path, want := range map[string]error{fifo: ErrNotRegular, dir: ErrNotRegular, "/dev/zero": ErrNotRegular, big: ErrTooLarge} {
		err := within(t, func() error { _, err := Read(path, 2<<20); return err })
		assert.ErrorIs(t, err, want, path)
	}
	_, err := Read(big, 2<<20)
	assert.EqualError(t, err, "larger than 2 MiB")
	b, err := Read(big, 2<<20+1)
	require.NoError(t, err, "a file of exactly the bound is read")
	assert.Len(t, b, 2<<20+1)
}

// ReadAll never parks on Go's poller: a pollable file with no data (a pipe
// here; /proc/kmsg for a password file, regular by its mode) is
// ErrWouldWait at once, where os.File's Read would wait for ever.
func TestReadAllNeverWaits(t *testing.T) {
	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	defer w.Close()
	err = within(t, func() error { _, err := ReadAll(r, 1<<20); return err })
	assert.ErrorIs(t, err, ErrWouldWait)
	// With data and its writer gone, it reads it all, and the bound holds.
	_, err = w.Write([]byte("0123456789"))
	require.NoError(t, err)
	w.Close()
	err = within(t, func() error { _, err := ReadAll(r, 4); return err })
	assert.ErrorIs(t, err, ErrTooLarge)
}
