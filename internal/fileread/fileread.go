package fileread

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// The reasons Open and ReadAll refuse a file; errors.Is tells them apart.
var (
	// ErrNotRegular: a named pipe, a device, a socket or a directory.
	ErrNotRegular = errors.New("not a regular file")
	// ErrTooLarge: more bytes than the caller's bound.
	ErrTooLarge = errors.New("too large")
	// ErrWouldWait: a read would wait for data (a pseudo-file such as
	// /proc/kmsg, regular by its mode but no file on a disk).
	ErrWouldWait = errors.New("a read would wait (not a file on a disk)")
)

// tooLargeError is ErrTooLarge, said with the bound.
type tooLargeError struct{ max int64 }

func (e tooLargeError) Error() string {
	if e.max >= 1<<20 {
		return fmt.Sprintf("larger than %d MiB", e.max>>20)
	}
	return fmt.Sprintf("larger than %d bytes", e.max)
}

func (e tooLargeError) Is(target error) bool { return target == ErrTooLarge }

func tooLarge(max int64) error { return tooLargeError{max} }

// Open opens path for reading: a regular file of at most max bytes. It
// never blocks: O_NONBLOCK makes opening a named pipe without a writer
// return at once (and a regular file ignores it), and the pipe is then
// ErrNotRegular.
func Open(path string, max int64) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	switch {
	case err != nil:
		f.Close()
		return nil, err
	case !st.Mode().IsRegular():
		f.Close()
		return nil, ErrNotRegular
	case st.Size() > max:
		f.Close()
		return nil, tooLarge(max)
	}
	return f, nil
}

// ReadAll reads f to its end, at most max bytes even if it grows meanwhile.
// It never waits: Go parks a read of a pollable file opened O_NONBLOCK until
// data comes, so the reads are raw ones, and a read that would wait is
// ErrWouldWait.
func ReadAll(f *os.File, max int64) ([]byte, error) {
	size := int64(0)
	if st, err := f.Stat(); err == nil && st.Size() <= max {
		size = st.Size()
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	data := make([]byte, 0, size+512)
	for {
		if len(data) == cap(data) {
			data = append(data, 0)[:len(data)]
		}
		var n int
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			n, rerr = syscall.Read(int(fd), data[len(data):cap(data)])
			return true // done: never wait on Go's poller
		}); err != nil {
			return nil, err
		}
		switch {
		case rerr == syscall.EINTR:
			continue
		case rerr == syscall.EAGAIN:
			return nil, ErrWouldWait
		case rerr != nil:
			return nil, rerr
		case n == 0:
			return data, nil
		}
		data = data[:len(data)+n]
		if int64(len(data)) > max {
			return nil, tooLarge(max)
		}
	}
}

// Read is Open and ReadAll.
func Read(path string, max int64) ([]byte, error) {
	f, err := Open(path, max)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ReadAll(f, max)
}
