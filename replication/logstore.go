package replication

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/fs"
	"github.com/hashicorp/raft-wal/metadb"
	"github.com/hashicorp/raft-wal/segment"
	"github.com/hashicorp/raft-wal/types"

	"coffer/internal/fsutil"
)

// The Raft log stores a node can keep its log in (Config.RaftLogStore).
const (
	// LogStoreBoltDB keeps the log in raft/raft.db, beside the stable store
	// (term and vote): one bbolt commit, two fsyncs, per append.
	LogStoreBoltDB = "boltdb"
	// LogStoreWAL keeps the log in segment files under raft/wal/
	// (hashicorp/raft-wal): one fsync per append. The stable store stays in
	// raft/raft.db.
	LogStoreWAL = "wal"
)

// DefaultLogStore is the log store of a Config that names none.
const DefaultLogStore = LogStoreWAL

// defaultWALSegmentSize is the size of one raft-wal segment file, preallocated
// when it is created. raft-wal frees log space only a whole segment at a
// time, once every entry in it is behind a snapshot; with coffer's entries
// of a few hundred bytes, 16 MiB holds several snapshot thresholds (8192
// entries), so the log on disk stays within a few segments, where raft-wal's
// 64 MiB default would keep 64 MiB per node preallocated for a log of a
// few MiB.
const defaultWALSegmentSize = 16 << 20

// migrateBatchBytes bounds one append while logs move between stores.
const migrateBatchBytes = 1 << 20

// Names under the raft directory. walDir present means the log is in the
// WAL (whatever raft.db still holds is left over from an interrupted move);
// absent, it is in raft.db. A move commits by renaming: walTmpDir to walDir
// (boltdb to wal), or walDir to walOldDir (wal to boltdb).
const (
	walDir    = "wal"
	walTmpDir = "wal.tmp"
	walOldDir = "wal.old"
)

// ValidLogStore reports whether s names a log store; empty means the
// default.
func ValidLogStore(s string) bool {
	return s == "" || s == LogStoreBoltDB || s == LogStoreWAL
}

// openLogStore returns the log store kind under dir, whose stable store
// (and, with boltdb, log store) is bolt. closer releases what it opened
// beyond bolt; nil when nothing. A data directory whose log is in the
// other store has it moved across first (moveBoltToWAL, moveWALToBolt), so switching
// -raft-log-store keeps the log; a move that a crash interrupted is
// finished or undone at the next start.
//
// segmentSize is the WAL's segment size; 0 means defaultWALSegmentSize.
func openLogStore(dir, kind string, segmentSize int, bolt *raftboltdb.BoltStore, logger hclog.Logger) (raft.LogStore, io.Closer, error) {
	if segmentSize == 0 {
		segmentSize = defaultWALSegmentSize
	}
	for _, leftover := range []string{walTmpDir, walOldDir} {
		if err := os.RemoveAll(filepath.Join(dir, leftover)); err != nil {
			return nil, nil, fmt.Errorf("replication: remove %s: %w", filepath.Join(dir, leftover), err)
		}
	}
	walPath := filepath.Join(dir, walDir)
	_, err := os.Stat(walPath)
	switch {
	case err == nil:
	case errors.Is(err, os.ErrNotExist):
		walPath = ""
	default:
		return nil, nil, fmt.Errorf("replication: inspect %s: %w", walPath, err)
	}

	if kind == LogStoreBoltDB {
		if walPath == "" {
			return bolt, nil, nil
		}
		if err := moveWALToBolt(dir, segmentSize, bolt, logger); err != nil {
			return nil, nil, err
		}
		return bolt, nil, nil
	}

	if walPath == "" {
		if err := moveBoltToWAL(dir, segmentSize, bolt, logger); err != nil {
			return nil, nil, err
		}
		walPath = filepath.Join(dir, walDir)
	}
	w, err := openWAL(walPath, segmentSize, logger)
	if err != nil {
		return nil, nil, err
	}
	// Entries still in raft.db are the source of a move to the WAL that a
	// crash cut short after it committed: the WAL has them all.
	if err := dropLogs(bolt); err != nil {
		w.Close()
		return nil, nil, fmt.Errorf("replication: drop log entries raft.db kept after a move to the WAL: %w", err)
	}
	return w, w, nil
}

// walStore is a raft-wal log with its metadata database, which WAL.Close
// leaves open (raft-wal v0.4.0): its file lock would stop the next open of
// the same directory in this process (a restarted node, a finished move).
type walStore struct {
	*wal.WAL
	meta *metadb.BoltMetaDB
}

// Close closes the WAL, then its metadata database.
func (w *walStore) Close() error {
	return errors.Join(w.WAL.Close(), w.meta.Close())
}

var _ raft.MonotonicLogStore = (*walStore)(nil)

// openWAL opens (or creates) the raft-wal log in path. raft-wal's metrics
// stay off (its no-op collector), as Raft's own go-metrics are: coffer's
// Prometheus metrics do not carry either.
func openWAL(path string, segmentSize int, logger hclog.Logger) (*walStore, error) {
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("replication: create %s: %w", path, err)
	}
	// raft-wal fsyncs path after creating files in it, not path's own
	// entry in its parent: a machine crash must not lose the directory.
	if err := fsutil.SyncDir(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("replication: sync %s: %w", filepath.Dir(path), err)
	}
	meta := &metadb.BoltMetaDB{}
	w, err := wal.Open(path, wal.WithSegmentSize(segmentSize), wal.WithLogger(logger.Named("wal")), wal.WithMetaStore(meta),
		wal.WithSegmentFiler(indexlessSealFiler{segment.NewFiler(path, fs.New())}))
	if err != nil {
		meta.Close()
		return nil, fmt.Errorf("replication: open raft log %s: %w", path, err)
	}
	return &walStore{WAL: w, meta: meta}, nil
}

// indexlessSealFiler works around a bug of raft-wal v0.4.0 (its issue 31,
// fixed after the last release). When Raft deletes a conflicting suffix of
// the log, raft-wal marks the tail segment sealed in its metadata without
// writing the segment's index block; every read of that segment after the
// next open then fails ("sealed segment has no index block") and
// raft.NewRaft panics. Such a segment is opened instead the way raft-wal
// recovers an unsealed tail, by reading its frames (which writes nothing),
// and reads of it stop at the index the truncation kept.
type indexlessSealFiler struct {
	types.SegmentFiler
}

// Open opens a sealed segment for reading.
func (f indexlessSealFiler) Open(info types.SegmentInfo) (types.SegmentReader, error) {
	if info.SealTime.IsZero() || info.IndexStart != 0 {
		return f.SegmentFiler.Open(info)
	}
	w, err := f.SegmentFiler.RecoverTail(info)
	if err != nil {
		return nil, fmt.Errorf("replication: read raft log segment %d (sealed by a suffix truncation, without an index): %w", info.ID, err)
	}
	if info.MaxIndex > 0 && w.LastIndex() < info.MaxIndex {
		last := w.LastIndex()
		w.Close()
		return nil, fmt.Errorf("%w: raft log segment %d ends at index %d, its metadata says %d", types.ErrCorrupt, info.ID, last, info.MaxIndex)
	}
	return cutSegment{SegmentReader: w, max: info.MaxIndex}, nil
}

// Create starts a new tail segment (see sealReleaser).
func (f indexlessSealFiler) Create(info types.SegmentInfo) (types.SegmentWriter, error) {
	w, err := f.SegmentFiler.Create(info)
	if err != nil {
		return nil, err
	}
	return &sealReleaser{filer: f.SegmentFiler, info: info, w: w}, nil
}

// RecoverTail reopens the tail segment after a restart (see sealReleaser).
func (f indexlessSealFiler) RecoverTail(info types.SegmentInfo) (types.SegmentWriter, error) {
	w, err := f.SegmentFiler.RecoverTail(info)
	if err != nil {
		return nil, err
	}
	return &sealReleaser{filer: f.SegmentFiler, info: info, w: w}, nil
}

// sealReleaser is the tail segment's writer until the segment is sealed,
// and from then on a reader of the sealed file. raft-wal v0.4.0 keeps a
// sealed tail's writer as the segment's reader for as long as the segment
// lives, and a writer holds a commit buffer as large as the largest append
// it took (doubled): with 1 MiB values every segment kept 2 MiB or more,
// and a storm of them took every node of a three-node cluster past 2 GB of
// RSS in 25 s (360 MB of the follower's heap in those buffers), until a
// container's memory limit killed it. The reader opened at the seal reads
// the segment's index from the file, as after a restart.
type sealReleaser struct {
	filer types.SegmentFiler
	info  types.SegmentInfo

	// mu guards w and r: reads take it shared, the switch exclusively,
	// so the writer is closed only once no read uses it.
	mu sync.RWMutex
	w  types.SegmentWriter // nil once sealed
	r  types.SegmentReader // set once sealed
	// last is the segment's last index once sealed.
	last uint64
}

// Append implements types.SegmentWriter (never after the seal).
func (s *sealReleaser) Append(entries []types.LogEntry) error {
	s.mu.RLock()
	w := s.w
	s.mu.RUnlock()
	if w == nil {
		return types.ErrSealed
	}
	return w.Append(entries)
}

// Sealed implements types.SegmentWriter: once the writer reports the seal
// (its index written and synced by the append that sealed it), the
// segment is read through a reader of the file and the writer is closed.
func (s *sealReleaser) Sealed() (bool, uint64, error) {
	s.mu.RLock()
	w := s.w
	s.mu.RUnlock()
	if w == nil {
		return true, s.info.IndexStart, nil
	}
	sealed, indexStart, err := w.Sealed()
	if err != nil || !sealed {
		return sealed, indexStart, err
	}
	info := s.info
	info.IndexStart, info.MaxIndex, info.SealTime = indexStart, w.LastIndex(), time.Now()
	r, oerr := s.filer.Open(info)
	if oerr != nil {
		return sealed, indexStart, nil // keep reading through the writer
	}
	s.mu.Lock()
	s.info, s.last, s.r, s.w = info, info.MaxIndex, r, nil
	s.mu.Unlock()
	w.Close()
	return sealed, indexStart, nil
}

// LastIndex implements types.SegmentWriter.
func (s *sealReleaser) LastIndex() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.w != nil {
		return s.w.LastIndex()
	}
	return s.last
}

// GetLog implements types.SegmentReader.
func (s *sealReleaser) GetLog(idx uint64) (*types.PooledBuffer, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.w != nil {
		return s.w.GetLog(idx)
	}
	return s.r.GetLog(idx)
}

// Close implements io.Closer.
func (s *sealReleaser) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.w != nil {
		return s.w.Close()
	}
	return s.r.Close()
}

// cutSegment reads a segment up to max: the entries after it were deleted
// by a suffix truncation but are still in the file.
type cutSegment struct {
	types.SegmentReader
	max uint64
}

// GetLog returns the raw entry at idx, or types.ErrNotFound past max.
func (s cutSegment) GetLog(idx uint64) (*types.PooledBuffer, error) {
	if s.max > 0 && idx > s.max {
		return nil, types.ErrNotFound
	}
	return s.SegmentReader.GetLog(idx)
}

// moveBoltToWAL moves the log entries in raft.db to a new WAL under dir:
// it copies them into walTmpDir (every append fsynced), renames that to
// walDir (the commit), then deletes them from raft.db. With no entries it
// creates nothing: openWAL creates an empty WAL.
func moveBoltToWAL(dir string, segmentSize int, bolt *raftboltdb.BoltStore, logger hclog.Logger) error {
	last, err := bolt.LastIndex()
	if err != nil {
		return fmt.Errorf("replication: read raft.db: %w", err)
	}
	if last == 0 {
		return nil
	}
	tmp := filepath.Join(dir, walTmpDir)
	w, err := openWAL(tmp, segmentSize, logger)
	if err != nil {
		return err
	}
	n, err := copyLogs(w, bolt)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = fsutil.SyncDir(tmp)
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, walDir))
	}
	if err == nil {
		err = fsutil.SyncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("replication: move the raft log from raft.db to %s: %w", filepath.Join(dir, walDir), err)
	}
	logger.Info("moved the raft log from raft.db to the WAL", "entries", n)
	return nil
}

// moveWALToBolt moves the log entries of the WAL under dir into raft.db:
// it drops whatever raft.db holds (left over from an interrupted move),
// copies the entries (every bbolt commit fsynced), renames walDir to
// walOldDir (the commit) and deletes it.
func moveWALToBolt(dir string, segmentSize int, bolt *raftboltdb.BoltStore, logger hclog.Logger) error {
	path := filepath.Join(dir, walDir)
	w, err := openWAL(path, segmentSize, logger)
	if err != nil {
		return err
	}
	err = dropLogs(bolt)
	n := 0
	if err == nil {
		n, err = copyLogs(bolt, w)
	}
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	old := filepath.Join(dir, walOldDir)
	if err == nil {
		err = os.Rename(path, old)
	}
	if err == nil {
		err = fsutil.SyncDir(dir)
	}
	if err == nil {
		err = os.RemoveAll(old)
	}
	if err != nil {
		return fmt.Errorf("replication: move the raft log from %s to raft.db: %w", path, err)
	}
	logger.Info("moved the raft log from the WAL to raft.db", "entries", n)
	return nil
}

// copyLogs appends every entry of src to the empty dst, in batches of
// about migrateBatchBytes, and returns how many it copied.
func copyLogs(dst, src raft.LogStore) (int, error) {
	first, err := src.FirstIndex()
	if err != nil {
		return 0, err
	}
	last, err := src.LastIndex()
	if err != nil {
		return 0, err
	}
	if last == 0 {
		return 0, nil
	}
	var batch []*raft.Log
	size, n := 0, 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if err := dst.StoreLogs(batch); err != nil {
			return err
		}
		n += len(batch)
		batch, size = nil, 0
		return nil
	}
	for idx := first; idx <= last; idx++ {
		l := new(raft.Log)
		if err := src.GetLog(idx, l); err != nil {
			return n, fmt.Errorf("read entry %d: %w", idx, err)
		}
		batch = append(batch, l)
		size += len(l.Data) + len(l.Extensions) + 32
		if size >= migrateBatchBytes {
			if err := flush(); err != nil {
				return n, err
			}
		}
	}
	if err := flush(); err != nil {
		return n, err
	}
	if got, err := dst.LastIndex(); err != nil || got != last {
		return n, fmt.Errorf("copied up to entry %d of %d (%v)", got, last, err)
	}
	return n, nil
}

// dropLogs deletes every log entry from bolt.
func dropLogs(bolt *raftboltdb.BoltStore) error {
	first, err := bolt.FirstIndex()
	if err != nil {
		return err
	}
	last, err := bolt.LastIndex()
	if err != nil || last == 0 {
		return err
	}
	return bolt.DeleteRange(first, last)
}
