package fsm

import (
	"bytes"
	"fmt"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/encoding/protowire"
)

// Inspection is what Inspect finds in a state snapshot: its Raft position,
// its layout and how its bytes are spent. It names buckets, never a key
// or a value.
type Inspection struct {
	// AppliedIndex and AppliedTerm are the state's own (meta bucket).
	AppliedIndex uint64
	AppliedTerm  uint64
	// Format is the state's layout version (meta bucket).
	Format uint64
	// FileBytes is the size of the state file; PageSize its bbolt page
	// size; Pages the pages under its high-water mark, of which UsedPages
	// hold the meta pages, the freelist and the buckets' trees and
	// FreePages nothing (a compacted snapshot has none).
	FileBytes int64
	PageSize  int64
	Pages     uint64
	UsedPages uint64
	FreePages uint64
	// Buckets are the top-level buckets, by name.
	Buckets []BucketStats
	// StoredBytes is the sum of every bucket's KeyBytes and ValueBytes:
	// the data the file holds, against FileBytes.
	StoredBytes int64
	// Secrets is the number of secrets (secret_meta keys); Versions the
	// versions their metadata retains, of which DestroyedVersions were
	// destroyed (their values are gone; secret_values, or secret_data for
	// those written by format 1, holds the others').
	Secrets           int64
	Versions          int64
	DestroyedVersions int64
}

// BucketStats is one top-level bucket of a state snapshot.
type BucketStats struct {
	// Name is the bucket's name, quoted (Go syntax) when it is not
	// printable text.
	Name string
	// Unexpected is set for a bucket that is not part of coffer's layout
	// (Restore keeps it but nothing reads it).
	Unexpected bool
	// Keys counts the keys, those of nested buckets included (coffer's
	// layout nests none); Buckets the nested buckets.
	Keys    int64
	Buckets int64
	// KeyBytes and ValueBytes are the bytes of the keys and values.
	KeyBytes   int64
	ValueBytes int64
}

// Inspect checks the state snapshot file at path as InspectSnapshot does
// (a restore's checks) and reports what it holds. Failures wrap
// ErrInvalidSnapshot and say what is wrong in one line. The file is
// untrusted: its page structure is checked before bbolt reads it
// (boltcheck.go), and a fault or panic while bbolt reads it anyway
// becomes an error.
func Inspect(path string) (*Inspection, error) {
	ins, err := inspect(path, true)
	if err != nil {
		return nil, err
	}
	return ins, nil
}

// inspect opens the state file at path read-only after checking its
// structure, checks coffer's layout and format, and, with stats, gathers
// an Inspection (else only the applied index and term).
func inspect(path string, stats bool) (ins *Inspection, err error) {
	// bbolt maps the file: a read outside it is a fault, which becomes a
	// panic here instead of a crash, and bbolt's assertions panic.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			ins, err = nil, fmt.Errorf("%w: corrupt database: %v", ErrInvalidSnapshot, oneLine(fmt.Sprint(r)))
		}
	}()
	if err := checkFileBounds(path); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidSnapshot, err)
	}
	tree, err := checkBoltTree(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidSnapshot, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidSnapshot, err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidSnapshot, err)
	}
	defer db.Close()
	ins = &Inspection{
		FileBytes: fi.Size(),
		PageSize:  tree.pageSize,
		Pages:     tree.pages,
		UsedPages: tree.usedPages,
		FreePages: tree.pages - tree.usedPages,
	}
	if err := db.View(func(tx *bolt.Tx) error {
		var err error
		if stats {
			err = ins.collect(tx)
		} else {
			ins.AppliedIndex, ins.AppliedTerm, err = walkState(tx)
		}
		return err
	}); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidSnapshot, err)
	}
	if ins.AppliedIndex >= maxSnapshotIndex {
		return nil, fmt.Errorf("%w: its applied index %d is not plausible", ErrInvalidSnapshot, ins.AppliedIndex)
	}
	return ins, nil
}

// collect fills the Inspection from the state's read transaction.
func (ins *Inspection) collect(tx *bolt.Tx) error {
	c := tx.Cursor()
	for name, v := c.First(); name != nil; name, v = c.Next() {
		b := tx.Bucket(name)
		if v != nil || b == nil {
			return fmt.Errorf("the root holds a key that is not a bucket (%d bytes)", len(name))
		}
		st := BucketStats{Name: bucketName(name), Unexpected: !slices.ContainsFunc(knownBuckets, func(k []byte) bool { return bytes.Equal(k, name) })}
		countBucket(b, &st)
		ins.Buckets = append(ins.Buckets, st)
		ins.StoredBytes += st.KeyBytes + st.ValueBytes
	}
	for _, name := range allBuckets {
		if tx.Bucket(name) == nil {
			return fmt.Errorf("bucket %s missing", name)
		}
	}
	var err error
	if ins.AppliedIndex, ins.AppliedTerm, err = checkFormat(tx); err != nil {
		return err
	}
	ins.Format = formatVersion
	sm := tx.Bucket(bucketSecretMeta).Cursor()
	for k, v := sm.First(); k != nil; k, v = sm.Next() {
		if v == nil {
			return fmt.Errorf("secret_meta holds a bucket")
		}
		versions, destroyed, err := countVersions(v)
		if err != nil {
			return fmt.Errorf("the metadata of secret %d does not decode: %v", ins.Secrets+1, err)
		}
		ins.Secrets++
		ins.Versions += versions
		ins.DestroyedVersions += destroyed
	}
	return nil
}

// knownBuckets are the top-level buckets of coffer's layout.
var knownBuckets = append(append(slices.Clone(allBuckets), leaseBuckets...), bucketSecretValues)

// countBucket adds the keys, values and nested buckets of b to st.
func countBucket(b *bolt.Bucket, st *BucketStats) {
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		st.Keys++
		st.KeyBytes += int64(len(k))
		if v != nil {
			st.ValueBytes += int64(len(v))
			continue
		}
		// A nested bucket (checkBoltTree bounded their depth).
		if child := b.Bucket(k); child != nil {
			st.Buckets++
			countBucket(child, st)
		}
	}
}

// countVersions counts the versions retained in an encoded
// fsmpb.SecretMeta, and how many of them are destroyed.
func countVersions(raw []byte) (versions, destroyed int64, err error) {
	err = eachField(raw, func(num protowire.Number, typ protowire.Type, b []byte) (int, error) {
		if num != fieldSecretVersions || typ != protowire.BytesType {
			return skipField, nil
		}
		msg, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return n, nil
		}
		vi, err := parseVersionMeta(msg)
		if err != nil {
			return 0, err
		}
		versions++
		if vi.destroyed {
			destroyed++
		}
		return n, nil
	})
	return versions, destroyed, err
}

// bucketName is a bucket's name as Inspection reports it: quoted when it
// is not printable text (a crafted file's names must not reach a terminal
// raw).
func bucketName(name []byte) string {
	s := string(name)
	if !utf8.ValidString(s) {
		return strconv.Quote(s)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

// oneLine keeps the first line of s: a recovered panic's message may span
// several.
func oneLine(s string) string {
	first, _, _ := strings.Cut(s, "\n")
	return first
}
