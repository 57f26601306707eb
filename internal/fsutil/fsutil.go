// Package fsutil holds the file-system steps that make a change durable,
// shared by the packages that write files of their own (fsm, replication,
// server/snapshotfile).
package fsutil

import "os"

// SyncDir fsyncs the directory dir, so that the entries created, renamed
// or removed in it survive a machine crash.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
