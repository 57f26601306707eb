package fsm

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	bolt "go.etcd.io/bbolt"

	"coffer/internal/fsutil"
)

// Why snapshots are compacted copies.
//
// bbolt never shrinks its file: pages freed by overwrites, deletes and
// destroys stay in it, to be reused. tx.WriteTo copies the file whole, so a
// snapshot of a churned state used to carry every free page: to disk, to
// every follower that installs it and into every snapshot file. A snapshot
// is instead a fresh bbolt database built from the snapshot's read
// transaction, key by key in order into full pages, in a temporary file
// next to fsm.db; that file is streamed (its own tx.WriteTo) and removed.
// It is the same kind of file as before (a bbolt database with coffer's
// buckets), so Restore, InspectSnapshot and older snapshots are unchanged,
// and it holds exactly the state of the read transaction, applied index
// included. Memory stays bounded: the source is read through cursors over
// its mapping, and the copy commits every compactCommitBytes.

// compactCommitBytes is how much a compaction copies per transaction of
// the new database: a bbolt write transaction holds its dirty pages in
// memory until it commits.
const compactCommitBytes = 8 << 20

// compactEntryOverhead is counted with every key and value towards
// compactCommitBytes, for the node bbolt keeps per entry: many small keys
// commit as often as a few large ones of the same memory.
const compactEntryOverhead = 64

// compactTempPrefix names the temporary copies next to the database
// (fsm.db.compact-…); Open removes those a crash left.
func compactTempPrefix(path string) string { return filepath.Base(path) + ".compact-" }

// removeCompactLeftovers removes the temporary copies of snapshots and
// compactions a crash left next to the database. It runs with the database
// open, so its lock is held and no other process's copies are removed. It
// lists the directory rather than globbing it: the directory's name is the
// operator's and may hold characters a pattern treats specially.
func removeCompactLeftovers(path string) error {
	dir, prefix := filepath.Dir(path), compactTempPrefix(path)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), prefix) || e.IsDir() {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// writeCompacted writes a compacted copy of the state src reads to w: a
// bbolt database file with the same buckets, keys, values and sequences,
// without free pages. The copy is built in a temporary file next to path,
// removed before it returns whatever happens.
func writeCompacted(src *bolt.Tx, path string, w io.Writer) (int64, error) {
	var n int64
	err := withCompacted(src, path, func(db *bolt.DB) error {
		return db.View(func(tx *bolt.Tx) error {
			var err error
			n, err = tx.WriteTo(w)
			return err
		})
	})
	return n, err
}

// withCompacted compacts src into a temporary database next to path, calls
// fn with it open, then closes and removes it.
func withCompacted(src *bolt.Tx, path string, fn func(*bolt.DB) error) (err error) {
	name, err := compactTempFile(path)
	if err != nil {
		return err
	}
	defer func() {
		if rerr := os.Remove(name); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
			err = fmt.Errorf("fsm: remove compaction file: %w", rerr)
		}
	}()
	return compactInto(src, name, fn)
}

// compactTempFile creates an empty temporary file next to path for a
// compacted copy and returns its name.
func compactTempFile(path string) (string, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), compactTempPrefix(path)+"*")
	if err != nil {
		return "", fmt.Errorf("fsm: create compaction file: %w", err)
	}
	name := tmp.Name()
	if err := tmp.Close(); err != nil {
		_ = os.Remove(name)
		return "", fmt.Errorf("fsm: create compaction file: %w", err)
	}
	return name, nil
}

// compactInto compacts src into the empty file name and calls fn with the
// copy open, then closes it.
func compactInto(src *bolt.Tx, name string, fn func(*bolt.DB) error) (err error) {
	// bbolt panics on a damaged page, and the copy reads every page: the
	// snapshot or the compaction fails instead of the node.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("fsm: the state database is damaged (%v): restore this node from a snapshot, or remove its data and let it rejoin", r)
		}
	}()
	// A temporary copy: not fsynced as it is written (a crash leaves a
	// file Open removes; fn syncs what must last), and no freelist to
	// write on commit. The copy is no larger
	// than the source's pages: mapping that much up front (address space
	// only) spares the remaps that would copy every pending node of the
	// open transaction as the copy grows.
	db, err := bolt.Open(name, 0o600, &bolt.Options{
		Timeout:         time.Second,
		NoSync:          true,
		NoGrowSync:      true,
		NoFreelistSync:  true,
		FreelistType:    bolt.FreelistMapType,
		InitialMmapSize: int(min(src.Size(), initialMmapSize)),
	})
	if err != nil {
		return fmt.Errorf("fsm: open compaction file: %w", err)
	}
	defer func() {
		if cerr := db.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("fsm: close compaction file: %w", cerr)
		}
	}()
	if _, err := compactTx(src, db, compactCommitBytes); err != nil {
		return fmt.Errorf("fsm: compact: %w", err)
	}
	return fn(db)
}

// compactTx copies every bucket of src (nested ones too), with its keys,
// values and sequence, into dst, which must be empty. Keys arrive in order,
// so every page is filled (FillPercent 1.0). dst commits each time about
// commitBytes have been copied; compactTx returns how many commits it
// made.
func compactTx(src *bolt.Tx, dst *bolt.DB, commitBytes int) (commits int, err error) {
	c := &compactor{db: dst, commitBytes: commitBytes}
	if c.tx, err = dst.Begin(true); err != nil {
		return 0, err
	}
	defer func() {
		if c.tx != nil {
			_ = c.tx.Rollback()
		}
	}()
	root := src.Cursor()
	for name, v := root.First(); name != nil; name, v = root.Next() {
		b := src.Bucket(name)
		if v != nil || b == nil {
			return c.gen, fmt.Errorf("root key %q is not a bucket", name)
		}
		if err := c.copyBucket(b, [][]byte{name}); err != nil {
			return c.gen, err
		}
	}
	err = c.tx.Commit()
	c.tx = nil
	return c.gen + 1, err
}

// compactor is one compaction's write side: the open transaction of the
// new database, how much it holds, and the bucket being filled.
type compactor struct {
	db          *bolt.DB
	tx          *bolt.Tx
	commitBytes int
	pending     int
	gen         int // rises at every commit: bucket handles die with their transaction
}

// copyBucket creates the bucket at path in the copy and copies b into it.
func (c *compactor) copyBucket(b *bolt.Bucket, path [][]byte) error {
	if err := c.charge(len(path[len(path)-1])); err != nil {
		return err
	}
	dst, err := c.create(path)
	if err != nil {
		return err
	}
	if err := dst.SetSequence(b.Sequence()); err != nil {
		return err
	}
	gen := c.gen
	cur := b.Cursor()
	for k, v := cur.First(); k != nil; k, v = cur.Next() {
		if v == nil {
			if child := b.Bucket(k); child != nil {
				if err := c.copyBucket(child, append(path[:len(path):len(path)], k)); err != nil {
					return err
				}
				continue
			}
			v = []byte{}
		}
		if err := c.charge(len(k) + len(v)); err != nil {
			return err
		}
		if gen != c.gen {
			if dst, err = c.open(path); err != nil {
				return err
			}
			gen = c.gen
		}
		if err := dst.Put(k, v); err != nil {
			return err
		}
	}
	return nil
}

// charge counts n bytes (and an entry's overhead) towards the open
// transaction and commits it first when it is full.
func (c *compactor) charge(n int) error {
	n += compactEntryOverhead
	if c.pending > 0 && c.pending+n > c.commitBytes {
		if err := c.tx.Commit(); err != nil {
			c.tx = nil
			return err
		}
		c.gen++
		c.pending = 0
		var err error
		if c.tx, err = c.db.Begin(true); err != nil {
			return err
		}
	}
	c.pending += n
	return nil
}

// create makes the bucket at path, whose parent exists.
func (c *compactor) create(path [][]byte) (*bolt.Bucket, error) {
	var b *bolt.Bucket
	var err error
	if len(path) == 1 {
		b, err = c.tx.CreateBucket(path[0])
	} else {
		parent, perr := c.open(path[:len(path)-1])
		if perr != nil {
			return nil, perr
		}
		b, err = parent.CreateBucket(path[len(path)-1])
	}
	if err != nil {
		return nil, err
	}
	b.FillPercent = 1.0
	return b, nil
}

// open finds the bucket at path in the open transaction.
func (c *compactor) open(path [][]byte) (*bolt.Bucket, error) {
	b := c.tx.Bucket(path[0])
	for _, name := range path[1:] {
		if b == nil {
			break
		}
		b = b.Bucket(name)
	}
	if b == nil {
		return nil, fmt.Errorf("bucket %q vanished from the copy", path)
	}
	b.FillPercent = 1.0
	return b, nil
}

// Compaction at Open. bbolt reuses free pages but never returns them: a
// state that shrank (a mass delete) keeps its largest size on disk and in
// every restart's page cache. When most of a large file is free, Open
// copies the live state into a new file, fsyncs it and renames it over
// the database. The copy costs about a second per 100 MB of live data
// (on a 2-core VM; the file is at least half free pages, so well under a
// second per 100 MB of file), once: the file is compact afterwards.
var (
	// compactAtOpenMinSize is the smallest database (its pages, not the
	// file bbolt preallocates) compacted at Open (a variable for tests).
	compactAtOpenMinSize int64 = 64 << 20
	// compactAtOpenMinFree is the share of free pages that makes Open
	// compact.
	compactAtOpenMinFree = 0.5
)

// compactAtOpen compacts the database db at path when it is large and
// mostly free pages, and returns the database to use: the compacted one,
// opened with noSync, or db itself when there was nothing to gain or the
// copy failed (logged: the uncompacted state is whole and serves as
// before).
func compactAtOpen(path string, db *bolt.DB, noSync bool, logger hclog.Logger) (*bolt.DB, error) {
	var dataSize int64
	if err := db.View(func(tx *bolt.Tx) error {
		dataSize = tx.Size()
		return nil
	}); err != nil || dataSize < compactAtOpenMinSize {
		return db, nil
	}
	pages := dataSize / int64(db.Info().PageSize)
	free := db.Stats().FreePageN
	if float64(free) < compactAtOpenMinFree*float64(pages) {
		return db, nil
	}
	began := time.Now()
	name, err := compactTempFile(path)
	if err != nil {
		logger.Warn("could not compact the state database at start; it keeps its free pages", "error", err)
		return db, nil
	}
	var size int64
	err = db.View(func(tx *bolt.Tx) error {
		return compactInto(tx, name, func(c *bolt.DB) error {
			if err := c.Sync(); err != nil {
				return err
			}
			return c.View(func(tx *bolt.Tx) error { size = tx.Size(); return nil })
		})
	})
	if err == nil {
		err = os.Rename(name, path)
	}
	if err != nil {
		_ = os.Remove(name)
		logger.Warn("could not compact the state database at start; it keeps its free pages", "error", err)
		return db, nil
	}
	// From here fsm.db is the compacted copy, whole on disk; the old
	// handle reads the replaced file until it closes.
	if err := fsutil.SyncDir(filepath.Dir(path)); err != nil {
		logger.Warn("could not sync the state directory after compacting", "error", err)
	}
	if err := db.Close(); err != nil {
		logger.Warn("closing the state database before its compacted copy failed", "error", err)
	}
	newDB, err := openDB(path, noSync)
	if err != nil {
		return nil, err
	}
	logger.Info("compacted the state database at start",
		"bytes", dataSize, "free_pages", free, "pages", pages, "compacted_bytes", size, "took", time.Since(began).Round(time.Millisecond))
	return newDB, nil
}
