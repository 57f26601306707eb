package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"

	"coffer/internal/fsutil"
)

// snapshot is a consistent view of the database: a bbolt read transaction
// begun by FSM.Snapshot, copied compacted (compact.go) and streamed by
// Persist while Apply continues.
type snapshot struct {
	tx      *bolt.Tx
	path    string // the database's: its compacted copies are made beside it
	once    sync.Once
	observe func(time.Duration, error)
}

var _ raft.FSMSnapshot = (*snapshot)(nil)

// Snapshot captures the current state for Raft. It only begins a read
// transaction; the copy happens in Persist. It fails after a storage failure
// (see Err) so that Raft keeps the logs this node has not applied. The
// returned snapshot must be released (Raft always does): an unreleased
// snapshot blocks Close and Restore.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return nil, ErrClosed
	}
	if err := f.Err(); err != nil {
		return nil, err
	}
	tx, err := f.db.Begin(false)
	if err != nil {
		return nil, fmt.Errorf("fsm: begin snapshot: %w", err)
	}
	return &snapshot{tx: tx, path: f.path, observe: f.opts.OnSnapshot}, nil
}

// Persist writes a compacted copy of the database as of the snapshot (a
// bbolt file without free pages) to sink and closes it, or cancels it on
// error. The copy is built in a temporary file next to the database,
// removed before Persist returns.
func (s *snapshot) Persist(sink raft.SnapshotSink) (err error) {
	if s.observe != nil {
		began := time.Now()
		defer func() { s.observe(time.Since(began), err) }()
	}
	if _, err := writeCompacted(s.tx, s.path, sink); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("fsm: write snapshot: %w", err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("fsm: close snapshot sink: %w", err)
	}
	return nil
}

// WriteTo writes the compacted copy of the database as of the snapshot to
// w, like Persist but for a copy that is not Raft's own snapshot (a
// snapshot file): it is not reported to Options.OnSnapshot, which counts
// Raft's.
func (s *snapshot) WriteTo(w io.Writer) (int64, error) {
	n, err := writeCompacted(s.tx, s.path, w)
	if err != nil {
		return n, fmt.Errorf("fsm: write snapshot: %w", err)
	}
	return n, nil
}

// Release ends the snapshot's read transaction. It is idempotent.
func (s *snapshot) Release() {
	s.once.Do(func() { _ = s.tx.Rollback() })
}

// restoreTempPath is where Restore stages an incoming snapshot.
func restoreTempPath(path string) string { return path + ".restore" }

// Restore replaces the whole state with a snapshot produced by Persist. The
// stream is written to a temporary file next to the database and checked
// (it must open, pass bbolt's consistency check and hold coffer's buckets
// and format) before it is renamed over the database, so a bad snapshot
// leaves the current state untouched and a crash leaves either the old or
// the new state. The applied index becomes the restored one, a storage
// failure (Err) is cleared, and WaitApplied callers are woken.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer func() { _ = rc.Close() }()

	f.mu.RLock()
	closed := f.closed
	f.mu.RUnlock()
	if closed {
		return ErrClosed
	}

	tmp := restoreTempPath(f.path)
	newDB, index, term, err := f.stageRestore(tmp, rc)
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	// The applied index never goes backwards: an operator's restore of an
	// older snapshot brings older data at a newer Raft index, and clients
	// that read with min_index must not be refused for ever. (A follower
	// installing the leader's snapshot is always behind it, so the
	// snapshot's index wins there.)
	if cur := f.applied.Load(); cur > index {
		if err := newDB.Update(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketMeta).Put(keyAppliedIndex, encodeUint64(cur))
		}); err != nil {
			_ = newDB.Close()
			_ = os.Remove(tmp)
			return fmt.Errorf("fsm: install snapshot: %w", err)
		}
		index = cur
	}
	if err := os.Rename(tmp, f.path); err != nil {
		_ = newDB.Close()
		_ = os.Remove(tmp)
		return fmt.Errorf("fsm: install snapshot: %w", err)
	}
	if err := fsutil.SyncDir(filepath.Dir(f.path)); err != nil {
		// The rename happened; the state is the new one even if the
		// directory entry is not yet durable.
		f.logger.Warn("could not sync the state directory after restore", "error", err)
	}

	// The open handle follows the renamed file. bbolt reads by handle, not
	// by path, so it serves the database at f.path from now on.
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		_ = newDB.Close()
		return ErrClosed
	}
	old := f.db
	f.db = newDB
	f.mu.Unlock()

	// Waits for snapshots of the old state to be released.
	if err := old.Close(); err != nil {
		f.logger.Warn("closing the replaced state database failed", "error", err)
	}
	f.setErr(nil)
	f.sysGen.Add(1)
	f.changes.reset(index)
	f.publishApplied(index)
	f.logger.Info("restored state from snapshot", "applied_index", index, "applied_term", term)
	if f.opts.OnRestore != nil {
		f.opts.OnRestore()
	}
	return nil
}

// stageRestore copies r to tmp, opens it and checks it.
func (f *FSM) stageRestore(tmp string, r io.Reader) (db *bolt.DB, index, term uint64, err error) {
	if err := os.Remove(tmp); err != nil && !os.IsNotExist(err) {
		return nil, 0, 0, fmt.Errorf("fsm: remove stale restore file: %w", err)
	}
	file, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("fsm: create restore file: %w", err)
	}
	_, err = io.Copy(file, r)
	if err == nil {
		err = file.Sync()
	}
	if cerr := file.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, 0, 0, fmt.Errorf("fsm: receive snapshot: %w", err)
	}

	db, err = openDB(tmp, f.opts.NoSync || f.unsynced)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("%w: %v", ErrInvalidSnapshot, err)
	}
	if index, term, err = checkRestored(db); err != nil {
		_ = db.Close()
		return nil, 0, 0, fmt.Errorf("%w: %v", ErrInvalidSnapshot, err)
	}
	// A snapshot of an older format lacks buckets (the lease table's,
	// secret_values) and is stamped with the current format.
	if err := db.Update(upgradeState); err != nil {
		_ = db.Close()
		return nil, 0, 0, fmt.Errorf("fsm: prepare restored state: %w", err)
	}
	return db, index, term, nil
}

// checkRestored validates a staged database and returns its applied index
// and term.
func checkRestored(db *bolt.DB) (index, term uint64, err error) {
	defer func() {
		// bbolt may panic on a page it cannot make sense of.
		if r := recover(); r != nil {
			err = fmt.Errorf("corrupt database: %v", r)
		}
	}()
	err = db.View(func(tx *bolt.Tx) error {
		var checkErr error
		for cerr := range tx.Check() {
			if checkErr == nil {
				checkErr = cerr
			}
		}
		if checkErr != nil {
			return fmt.Errorf("consistency check: %w", checkErr)
		}
		for _, name := range allBuckets {
			if tx.Bucket(name) == nil {
				return fmt.Errorf("bucket %s missing", name)
			}
		}
		var rerr error
		index, term, rerr = checkFormat(tx)
		return rerr
	})
	return index, term, err
}

// SnapshotInfo is what InspectSnapshot finds in a snapshot file.
type SnapshotInfo struct {
	// AppliedIndex and AppliedTerm are the state's own, read from the
	// database (never from a header a file could carry separately).
	AppliedIndex uint64
	AppliedTerm  uint64
}

// maxSnapshotIndex bounds a plausible applied index: a snapshot that
// claims more (2^64-1 wedged a leader in the security review) is refused.
const maxSnapshotIndex = 1 << 62

// InspectSnapshot checks a state snapshot file without installing
// anything: no meta page may claim more pages than the file has, its page
// structure must be sound (checkBoltTree: every page bbolt would follow is
// within the file, of the right type and reached once), it must open as a
// bbolt database whose every bucket and key can be walked, with coffer's
// buckets and format and a plausible applied index. It returns that
// index. Failures wrap ErrInvalidSnapshot. The file is never trusted: the
// structure is checked before bbolt maps it, and bbolt's walk runs in the
// calling goroutine with faults turned into panics, which are recovered.
// Inspect does the same and reports what the file holds.
func InspectSnapshot(path string) (SnapshotInfo, error) {
	ins, err := inspect(path, false)
	if err != nil {
		return SnapshotInfo{}, err
	}
	return SnapshotInfo{AppliedIndex: ins.AppliedIndex, AppliedTerm: ins.AppliedTerm}, nil
}

// bboltMagic starts the meta page of a bbolt database.
const bboltMagic = 0xED0CDAED

// checkFileBounds reads the two meta pages of a bbolt file and refuses it
// when it is shorter than the pages its metas claim: bbolt maps the file
// and would touch memory past its end (SIGBUS, which no recover stops) on
// a truncated copy. A file whose metas are both unreadable is refused too.
// Layout (bbolt 1.4): a page header of 16 bytes, then magic, version and
// page size (uint32 each), flags, the root bucket (16 bytes), the freelist
// page id and the high-water page id (uint64 each).
func checkFileBounds(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	buf := make([]byte, 64)
	valid := 0
	var pageSize int64 = 4096
	for i := int64(0); i < 2; i++ {
		if _, err := f.ReadAt(buf, i*pageSize); err != nil {
			return fmt.Errorf("the file is %d bytes, too short for a state database", size)
		}
		if binary.LittleEndian.Uint32(buf[16:]) != bboltMagic {
			continue
		}
		ps := int64(binary.LittleEndian.Uint32(buf[24:]))
		if ps < 512 || ps > 1<<16 || ps&(ps-1) != 0 {
			return fmt.Errorf("meta page %d names a page size of %d", i, ps)
		}
		if i == 0 {
			pageSize = ps
		}
		hwm := int64(binary.LittleEndian.Uint64(buf[56:]))
		if hwm < 0 || hwm > size/ps {
			return fmt.Errorf("meta page %d claims %d pages of %d bytes, the file has %d bytes: it is truncated", i, hwm, ps, size)
		}
		valid++
	}
	if valid == 0 {
		return errors.New("no readable meta page: not a state database")
	}
	return nil
}

// walkState reads every bucket and key of a staged state in this
// goroutine and checks coffer's layout; it returns the applied index and
// term.
func walkState(tx *bolt.Tx) (index, term uint64, err error) {
	for _, name := range allBuckets {
		b := tx.Bucket(name)
		if b == nil {
			return 0, 0, fmt.Errorf("bucket %s missing", name)
		}
		c := b.Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
		}
	}
	// The lease buckets and secret_values are walked when present (older
	// states lack them).
	for _, name := range append(leaseBuckets[:len(leaseBuckets):len(leaseBuckets)], bucketSecretValues) {
		if b := tx.Bucket(name); b != nil {
			c := b.Cursor()
			for k, _ := c.First(); k != nil; k, _ = c.Next() {
			}
		}
	}
	return checkFormat(tx)
}

// checkFormat checks a staged database's format and returns its applied
// index and term.
func checkFormat(tx *bolt.Tx) (index, term uint64, err error) {
	if _, err := checkFormatValue(tx.Bucket(bucketMeta).Get(keyFormat)); err != nil {
		return 0, 0, err
	}
	return readApplied(tx)
}
