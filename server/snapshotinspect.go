package server

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"coffer/fsm"
	"coffer/server/snapshotfile"
)

// SnapshotFileReport is what InspectSnapshotFile finds in a snapshot file.
type SnapshotFileReport struct {
	// Size is the file's size in bytes.
	Size int64
	// Layout is the file's header and where its body and MAC lie.
	Layout snapshotfile.Layout
	// Checksum is set when the file's name is a scheduled snapshot's and
	// its bytes hash to the SHA-256 in it (a file whose name carries a
	// checksum it does not match is refused).
	Checksum bool
	// State is what the state machine's snapshot holds.
	State *fsm.Inspection
}

// InspectSnapshotFile checks the snapshot file at path as far as it can
// without the cluster's keys and reports what it holds: the header, the
// SHA-256 in a scheduled snapshot's name, the length of the MAC trailer,
// and the state (fsm.Inspect, which checks it as a restore does). The MAC
// itself needs the keys: a restore checks it. The state is copied into a
// temporary file in tmpDir (os.TempDir() when empty), removed before it
// returns. Errors are one line and name no key or value.
func InspectSnapshotFile(path, tmpDir string) (*SnapshotFileReport, error) {
	// Non-blocking, then checked: a named pipe would block a plain open.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	rep := &SnapshotFileReport{Size: fi.Size()}
	if e, err := snapshotfile.ParseName(filepath.Base(path)); err == nil {
		e.Path, e.Size = path, fi.Size()
		if _, err := snapshotfile.Verify(e); err != nil {
			return nil, fmt.Errorf("the checksum in its name: %v", err)
		}
		rep.Checksum = true
	}
	if rep.Layout, err = snapshotfile.ReadLayout(f, fi.Size()); err != nil {
		if errors.Is(err, snapshotfile.ErrNotSnapshot) {
			return nil, errors.New("not a coffer snapshot file (it does not start with coffer's magic)")
		}
		return nil, err
	}
	tmp, err := os.CreateTemp(tmpDir, "coffer-inspect-*.state")
	if err != nil {
		return nil, fmt.Errorf("copying the state to a temporary file: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = io.Copy(tmp, io.NewSectionReader(f, rep.Layout.BodyOffset, rep.Layout.BodyLen))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("copying the state to a temporary file: %w", err)
	}
	if rep.State, err = fsm.Inspect(tmp.Name()); err != nil {
		detail := strings.TrimPrefix(err.Error(), fsm.ErrInvalidSnapshot.Error()+": ")
		return nil, fmt.Errorf("the state it holds is damaged or not coffer's: %s", detail)
	}
	return rep, nil
}
