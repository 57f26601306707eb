package fsm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/go-hclog"

	"coffer/internal/fsutil"
)

// Why the state database may skip fsync.
//
// An acknowledged write is durable once a quorum holds its Raft log entry
// on disk (raft-boltdb fsyncs every append). fsm.db is derived from that
// log: Raft hands the FSM committed entries again after a restart, from its
// newest snapshot on, and the FSM skips those it has applied. So fsm.db
// need not be fsynced at each commit, as long as it is never *torn*:
//
//   - A crash of the process (kill -9, panic, OOM) loses nothing: every
//     commit was written to the kernel (pwrite) before it returned, and the
//     kernel writes it out whatever becomes of the process.
//   - A crash of the machine (power loss, kernel panic) can lose unsynced
//     pages in any order, so bbolt's meta page may point at pages that never
//     reached the disk. Such a file must not be trusted.
//
// The FSM tells the two apart with the kernel's boot id. Before its first
// unsynced commit it writes the current boot id to fsm.db.unsynced (and
// fsyncs it); a clean Close syncs the database and removes the marker. At
// Open, a marker from another boot means the machine went down with
// unsynced commits: the database is set aside as fsm.db.discarded and an
// empty one takes its place, so Raft restores its newest snapshot and
// replays the log (replication.fsmCoversSnapshots sees AppliedIndex 0).
// A marker from this boot means only the process died: the file is whole.
//
// Without a boot id (not Linux) every commit is fsynced, as before.

// bootIDPath is where Linux publishes a random id of the current boot. A
// variable for tests.
var bootIDPath = "/proc/sys/kernel/random/boot_id"

// unsyncedMarker and discardedPath name the files next to the database.
func unsyncedMarker(path string) string { return path + ".unsynced" }
func discardedPath(path string) string  { return path + ".discarded" }

// currentBootID returns the kernel's boot id, or "" when there is none.
func currentBootID() string {
	b, err := os.ReadFile(bootIDPath)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// prepareUnsynced runs before the database opens. It reports whether
// commits may skip fsync, after setting aside a database that a machine
// crash may have torn and marking the database as having unsynced commits
// from this boot.
func prepareUnsynced(path string, logger hclog.Logger) (bool, error) {
	id := currentBootID()
	if id == "" {
		logger.Info("no boot id available: every state commit is fsynced")
		return false, nil
	}
	marker := unsyncedMarker(path)
	old, err := os.ReadFile(marker)
	switch {
	case err == nil && strings.TrimSpace(string(old)) != id:
		if _, err := os.Stat(path); err == nil {
			if err := os.Rename(path, discardedPath(path)); err != nil {
				return false, fmt.Errorf("fsm: set aside %s, which the machine's restart may have torn: %w", path, err)
			}
			logger.Warn("the machine restarted while the state database had unsynced commits: set it aside and rebuilding it from the Raft snapshot and log",
				"set_aside", discardedPath(path))
		}
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return false, fmt.Errorf("fsm: read %s: %w", marker, err)
	}
	if err := writeSynced(marker, []byte(id+"\n")); err != nil {
		return false, fmt.Errorf("fsm: write %s: %w", marker, err)
	}
	return true, nil
}

// finishUnsynced runs after a clean close: the database is synced, so the
// marker goes.
func finishUnsynced(path string) error {
	if err := os.Remove(unsyncedMarker(path)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return fsutil.SyncDir(filepath.Dir(path))
}

// writeSynced writes data to path (mode 0600) and makes it and its
// directory entry durable.
func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return fsutil.SyncDir(filepath.Dir(path))
}
