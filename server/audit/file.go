package audit

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"syscall"
)

// fileDevice appends audit lines to a file. Its methods are safe for
// concurrent use, and no method holds the lock across the write itself, so
// a write hung on a dead disk or a full pipe never blocks Reopen or Close.
type fileDevice struct {
	path string

	mu sync.Mutex
	// f is the open file; nil after a failed write or reopen, in which case
	// the next Write opens the path again (the device heals by itself once
	// the path is writable).
	f *os.File
	// inflight is the file a Write is writing to right now, if any. A Reopen
	// leaves it to that Write to close.
	inflight *os.File
	// torn means a write stopped inside a line, so the next line starts with
	// a newline to keep itself whole.
	torn   bool
	closed bool
}

var _ Device = (*fileDevice)(nil)

// OpenFile opens the audit file at path for appending, creating it with mode
// 0600 if it is missing. The error, if any, names the path and says what to
// do ("audit file /var/log/coffer/audit.log: permission denied: make it
// writable by the coffer user or choose another -audit-file").
//
// A named pipe is accepted only when a reader has it open already, so that
// opening never blocks.
func OpenFile(path string) (Device, error) {
	if path == "" {
		return nil, errors.New("audit file: the path is empty: give -audit-file the path of a file")
	}
	f, err := openAppend(path)
	if err != nil {
		return nil, err
	}
	return &fileDevice{path: path, f: f}, nil
}

// openAppend opens path for appending. O_NONBLOCK changes nothing for a
// regular file; for a named pipe it makes the open fail at once when no
// reader is there, instead of waiting for one (Go still parks a write on a
// full pipe, in its poller rather than in a thread).
func openAppend(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY|os.O_CREATE|syscall.O_NONBLOCK, 0o600)
	if err != nil {
		return nil, openError(path, err)
	}
	return f, nil
}

// Name returns "file:" and the path.
func (d *fileDevice) Name() string { return "file:" + d.path }

// Write appends line, which ends in a newline, in one write call.
func (d *fileDevice) Write(line []byte) error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return fmt.Errorf("audit file %s: %w", d.path, ErrClosed)
	}
	f := d.f
	if f == nil {
		// Open outside the lock: an open hung on a dead disk must not block
		// Reopen or Close either.
		d.mu.Unlock()
		nf, err := openAppend(d.path)
		if err != nil {
			return err
		}
		d.mu.Lock()
		switch {
		case d.closed:
			d.mu.Unlock()
			nf.Close()
			return fmt.Errorf("audit file %s: %w", d.path, ErrClosed)
		case d.f == nil:
			d.f = nf
		default: // a Reopen got there first
			nf.Close()
		}
		f = d.f
	}
	if d.torn {
		line = append([]byte{'\n'}, line...)
	}
	d.inflight = f
	d.mu.Unlock()

	n, err := f.Write(line)

	d.mu.Lock()
	defer d.mu.Unlock()
	d.inflight = nil
	if f != d.f {
		// Reopened or closed meanwhile: this handle is retired, and whatever
		// happened to it no longer concerns the path's current file.
		f.Close()
		return wrapWrite(d.path, err)
	}
	if err != nil {
		// Drop the handle; the next Write opens the path again.
		if n > 0 {
			d.torn = true
		}
		d.f = nil
		f.Close()
		return wrapWrite(d.path, err)
	}
	d.torn = false
	return nil
}

// Reopen closes the file and opens the path anew: after logrotate renamed
// the file, new lines go to a new file at the path. If the path cannot be
// opened, the device has no file and its writes fail (each trying the path
// again) until it can.
func (d *fileDevice) Reopen() error {
	nf, err := openAppend(d.path) // outside the lock, as in Write
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		if nf != nil {
			nf.Close()
		}
		return fmt.Errorf("audit file %s: %w", d.path, ErrClosed)
	}
	if old := d.f; old != nil && old != d.inflight {
		old.Close()
	}
	d.f = nf // nil if the open failed
	if err != nil {
		return err
	}
	d.torn = false
	return nil
}

// Close closes the file, including one a write is blocked on (which
// unblocks a write parked on a full pipe). It is idempotent.
func (d *fileDevice) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	f, inflight := d.f, d.inflight
	d.f = nil
	d.mu.Unlock()

	var err error
	if f != nil {
		if cerr := f.Close(); cerr != nil && !errors.Is(cerr, os.ErrClosed) {
			err = fmt.Errorf("audit file %s: close: %w", d.path, cerr)
		}
	}
	if inflight != nil && inflight != f {
		inflight.Close()
	}
	return err
}

// fileError is an audit file's error: a message that names the path and
// says what to do, over the system's error (so errors.Is(err,
// fs.ErrPermission) still works).
type fileError struct {
	msg string
	err error
}

func (e *fileError) Error() string { return e.msg }
func (e *fileError) Unwrap() error { return e.err }

// openError explains why path could not be opened.
func openError(path string, err error) error {
	var what string
	switch {
	case errors.Is(err, fs.ErrPermission):
		what = "permission denied: make it writable by the coffer user or choose another -audit-file"
	case errors.Is(err, syscall.EISDIR):
		what = "is a directory: give -audit-file the path of a file"
	case errors.Is(err, syscall.ENOTDIR):
		what = "a part of the path is not a directory: choose another -audit-file"
	case errors.Is(err, fs.ErrNotExist):
		what = "its directory does not exist: create it or choose another -audit-file"
	case errors.Is(err, syscall.EROFS):
		what = "the file system is read-only: choose another -audit-file"
	case errors.Is(err, syscall.ENXIO):
		what = "it is a named pipe with no reader: start the reader first, or choose another -audit-file"
	case errors.Is(err, syscall.ENOSPC):
		what = "no space left on the device: free some, or choose another -audit-file"
	default:
		what = "cannot open it (" + errnoText(err) + "): make it writable by the coffer user or choose another -audit-file"
	}
	return &fileError{msg: "audit file " + path + ": " + what, err: err}
}

// wrapWrite explains why a write to path failed; nil stays nil.
func wrapWrite(path string, err error) error {
	if err == nil {
		return nil
	}
	var what string
	switch {
	case errors.Is(err, syscall.ENOSPC):
		what = "write failed: no space left on the device: free some space on it"
	case errors.Is(err, syscall.EDQUOT):
		what = "write failed: disk quota exceeded: raise the coffer user's quota"
	case errors.Is(err, syscall.EFBIG):
		what = "write failed: the file reached the largest size allowed: rotate it (logrotate, then SIGHUP)"
	case errors.Is(err, syscall.EPIPE):
		what = "write failed: the reader of the pipe went away: restart it"
	case errors.Is(err, os.ErrClosed):
		what = "write failed: the file was closed (reopened or shut down) during the write"
	default:
		what = "write failed (" + errnoText(err) + "): check the disk and the file"
	}
	return &fileError{msg: "audit file " + path + ": " + what, err: err}
}

// errnoText is the system's words for err without the path os adds.
func errnoText(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}
