package audit

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestOpenFileCreates0600AndAppends(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	d := openFile(t, path)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("new audit file has mode %v, want 0600", fi.Mode().Perm())
	}
	if err := d.Write([]byte("{\"n\":1}\n")); err != nil {
		t.Fatal(err)
	}
	d.Close()
	d = openFile(t, path) // an existing file is appended to, not truncated
	if err := d.Write([]byte("{\"n\":2}\n")); err != nil {
		t.Fatal(err)
	}
	d.Close()
	if err := d.Write([]byte("{\"n\":3}\n")); !errors.Is(err, ErrClosed) {
		t.Errorf("Write after Close = %v, want ErrClosed", err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if got := len(readLines(t, path)); got != 2 {
		t.Errorf("file has %d lines, want 2", got)
	}
	if got, want := d.Name(), "file:"+path; got != want {
		t.Errorf("Name = %q, want %q", got, want)
	}
}

func TestOpenFileErrorsSayWhatToDo(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "pipe")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	notDir := filepath.Join(dir, "plain")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		path, want string
		is         error
	}{
		{"", "audit file: the path is empty: give -audit-file the path of a file", nil},
		{dir, "audit file " + dir + ": is a directory: give -audit-file the path of a file", syscall.EISDIR},
		{filepath.Join(dir, "missing", "audit.log"), "audit file " + filepath.Join(dir, "missing", "audit.log") +
			": its directory does not exist: create it or choose another -audit-file", fs.ErrNotExist},
		{filepath.Join(notDir, "audit.log"), "audit file " + filepath.Join(notDir, "audit.log") +
			": a part of the path is not a directory: choose another -audit-file", syscall.ENOTDIR},
		{fifo, "audit file " + fifo + ": it is a named pipe with no reader: start the reader first, or choose another -audit-file", syscall.ENXIO},
	}
	for _, c := range cases {
		d, err := OpenFile(c.path)
		if err == nil {
			d.Close()
			t.Errorf("OpenFile(%q) succeeded", c.path)
			continue
		}
		if err.Error() != c.want {
			t.Errorf("OpenFile(%q) = %q, want %q", c.path, err, c.want)
		}
		if c.is != nil && !errors.Is(err, c.is) {
			t.Errorf("OpenFile(%q) = %v, not %v", c.path, err, c.is)
		}
	}

	// Permission: root writes anyway, so check the words on the error the
	// system gives; as another user, on a real read-only file too.
	perm := openError("/var/log/coffer/audit.log", &fs.PathError{Op: "open", Path: "/var/log/coffer/audit.log", Err: syscall.EACCES})
	want := "audit file /var/log/coffer/audit.log: permission denied: make it writable by the coffer user or choose another -audit-file"
	if perm.Error() != want || !errors.Is(perm, fs.ErrPermission) {
		t.Errorf("permission error = %q, want %q wrapping fs.ErrPermission", perm, want)
	}
	if os.Geteuid() != 0 {
		ro := filepath.Join(dir, "ro.log")
		if err := os.WriteFile(ro, nil, 0o400); err != nil {
			t.Fatal(err)
		}
		_, err := OpenFile(ro)
		if want := "audit file " + ro + ": permission denied: make it writable by the coffer user or choose another -audit-file"; err == nil || err.Error() != want {
			t.Errorf("OpenFile(read-only file) = %v, want %q", err, want)
		}
	}
}

// A path that cannot record fails the call, and once it can again (and the
// node reopens), calls succeed. Each way of failing also fails for root.
func TestUnwritableThenWritableAgain(t *testing.T) {
	ctx := context.Background()

	t.Run("writes fail (ENOSPC)", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "audit.log")
		if err := os.Symlink("/dev/full", path); err != nil {
			t.Fatal(err)
		}
		b := NewBroker("n", 0, openFile(t, path))
		defer b.Close()
		err := b.LogRequest(ctx, sampleRequest("lost"))
		if !errors.Is(err, ErrAuditFailed) || !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("LogRequest to /dev/full = %v, want ErrAuditFailed over ENOSPC", err)
		}
		if !strings.Contains(err.Error(), "audit file "+path+": write failed: no space left on the device") {
			t.Errorf("the error does not say which device failed and why: %v", err)
		}
		if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "s.client-token") {
			t.Errorf("the error carries a secret: %v", err)
		}
		if err := os.Remove(path); err != nil { // the operator fixes the path
			t.Fatal(err)
		}
		if err := b.Reopen(); err != nil {
			t.Fatalf("Reopen: %v", err)
		}
		if err := b.LogRequest(ctx, sampleRequest("kept")); err != nil {
			t.Fatalf("LogRequest after the fix: %v", err)
		}
		lines := readLines(t, path)
		if len(lines) != 1 || lines[0]["request_id"] != "kept" {
			t.Errorf("lines after the fix = %v, want only the record that succeeded", lines)
		}
		st := b.Stats()
		if st.Audited != 1 || st.Refused != 1 || st.Devices[0].Written != 1 || st.Devices[0].Failed != 1 {
			t.Errorf("stats = %+v, want 1 audited, 1 refused, 1 written, 1 failed", st)
		}
	})

	t.Run("directory removed", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "audit")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "audit.log")
		b := NewBroker("n", 0, openFile(t, path))
		defer b.Close()
		if err := b.LogRequest(ctx, sampleRequest("first")); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		if err := b.Reopen(); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("Reopen with the directory gone = %v, want ErrNotExist", err)
		}
		if err := b.LogRequest(ctx, sampleRequest("lost")); !errors.Is(err, ErrAuditFailed) {
			t.Fatalf("LogRequest with the directory gone = %v, want ErrAuditFailed", err)
		}
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		// No SIGHUP needed: a device without a file tries its path again.
		if err := b.LogRequest(ctx, sampleRequest("second")); err != nil {
			t.Fatalf("LogRequest once the directory is back: %v", err)
		}
		if lines := readLines(t, path); len(lines) != 1 || lines[0]["request_id"] != "second" {
			t.Errorf("lines = %v, want only the record after the fix", lines)
		}
	})

	t.Run("not writable", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "audit.log")
		b := NewBroker("n", 0, openFile(t, path))
		defer b.Close()
		// As root a mode does not stop writes: put a directory where the file
		// was instead, which stops root too.
		breakIt, fixIt := func() error { return os.Chmod(path, 0o400) }, func() error { return os.Chmod(path, 0o600) }
		if os.Geteuid() == 0 {
			breakIt = func() error {
				if err := os.Rename(path, path+".1"); err != nil {
					return err
				}
				return os.Mkdir(path, 0o700)
			}
			fixIt = func() error { return os.Remove(path) }
		}
		if err := breakIt(); err != nil {
			t.Fatal(err)
		}
		if err := b.Reopen(); err == nil {
			t.Fatal("Reopen of an unwritable path succeeded")
		}
		if err := b.LogRequest(ctx, sampleRequest("lost")); !errors.Is(err, ErrAuditFailed) {
			t.Fatalf("LogRequest to an unwritable path = %v, want ErrAuditFailed", err)
		}
		if err := fixIt(); err != nil {
			t.Fatal(err)
		}
		if err := b.Reopen(); err != nil {
			t.Fatalf("Reopen after the fix: %v", err)
		}
		if err := b.LogRequest(ctx, sampleRequest("kept")); err != nil {
			t.Fatalf("LogRequest after the fix: %v", err)
		}
		lines := readLines(t, path)
		if got := lines[len(lines)-1]["request_id"]; got != "kept" {
			t.Errorf("last line is %v, want the record after the fix", got)
		}
	})
}

// SIGHUP after logrotate: the renamed file keeps the old lines, new lines go
// to a new file at the path.
func TestReopenAfterRename(t *testing.T) {
	b, path := newFileBroker(t, 0)
	ctx := context.Background()
	for _, id := range []string{"a", "b"} {
		if err := b.LogRequest(ctx, sampleRequest(id)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := b.Reopen(); err != nil {
		t.Fatalf("Reopen: %v", err)
	}
	for _, id := range []string{"c", "d", "e"} {
		if err := b.LogRequest(ctx, sampleRequest(id)); err != nil {
			t.Fatal(err)
		}
	}
	ids := func(p string) (out []string) {
		for _, l := range readLines(t, p) {
			out = append(out, l["request_id"].(string))
		}
		return out
	}
	if got := strings.Join(ids(path+".1"), ","); got != "a,b" {
		t.Errorf("rotated file holds %s, want a,b", got)
	}
	if got := strings.Join(ids(path), ","); got != "c,d,e" {
		t.Errorf("new file holds %s, want c,d,e", got)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("reopened file: %v, mode %v, want 0600", err, fi.Mode().Perm())
	}
}

// A write that stops inside a line (here: the file-size limit cuts it)
// leaves the next line whole, on a line of its own.
func TestTornLineDoesNotSpoilTheNext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	d := openFile(t, path)
	defer d.Close()
	first := []byte(`{"n":1}` + "\n")
	if err := d.Write(first); err != nil {
		t.Fatal(err)
	}

	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}
	limited := old
	limited.Cur = uint64(len(first) + 5)
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &limited); err != nil {
		t.Skipf("cannot lower the file-size limit: %v", err)
	}
	torn := []byte(`{"n":2,"pad":"xxxxxxxxxx"}` + "\n")
	err := d.Write(torn)
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(err, syscall.EFBIG) {
		t.Fatalf("write beyond the file-size limit = %v, want EFBIG", err)
	}
	third := []byte(`{"n":3}` + "\n")
	if err := d.Write(third); err != nil {
		t.Fatalf("write after the limit was raised: %v", err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := string(first) + string(torn[:5]) + "\n" + string(third)
	if string(raw) != want {
		t.Errorf("file holds %q, want %q (the torn fragment alone on its line)", raw, want)
	}
}
