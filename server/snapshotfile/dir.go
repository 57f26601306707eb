package snapshotfile

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"coffer/internal/fsutil"
)

// A scheduled snapshot is named
//
//	coffer-snapshot-<UTC time>-<applied index>-<node id>-<sha256>.snap
//
// e.g. coffer-snapshot-20261207T021530.250Z-4711-coffer1-<64 hex>.snap:
// the time it was taken (to the millisecond), the applied index and the
// node in its header, and the SHA-256 of the whole file. While it is
// written it is a temporary file .coffer-snapshot-<node id>-<digits>.tmp in
// the same directory, renamed to its name once complete and synced, so the
// name never stands for a partial file. Retention and listing only look at
// names of this shape: other files in the directory are left alone.
const (
	// Prefix starts the name of every scheduled snapshot.
	Prefix = "coffer-snapshot-"
	// Ext ends it.
	Ext        = ".snap"
	timeLayout = "20060102T150405.000Z"
	tempExt    = ".tmp"
)

// nameRE parses a snapshot's name: time, index, node, checksum. The node
// id may hold dashes; the checksum, which ends the name, holds none.
var nameRE = regexp.MustCompile(`^` + Prefix + `(\d{8}T\d{6}\.\d{3}Z)-(0|[1-9]\d{0,19})-([A-Za-z0-9_-][A-Za-z0-9._-]*)-([0-9a-f]{64})` + regexp.QuoteMeta(Ext) + `$`)

// ErrRenamed means a file's name does not match its header: it was
// renamed (its time, index or node are not what its name says).
var ErrRenamed = errors.New("its name does not match its header: the file was renamed; restore it only if you know which state it holds")

// ErrChecksum means a file's bytes do not hash to the SHA-256 in its name.
var ErrChecksum = errors.New("its SHA-256 is not the one in its name: the file is corrupt or truncated; do not restore it")

// Entry is a scheduled snapshot found in a directory.
type Entry struct {
	// Name is the file's name, Path its path.
	Name, Path string
	// Time, AppliedIndex, NodeID and SHA256 (hex) are read from the name.
	Time         time.Time
	AppliedIndex uint64
	NodeID       string
	SHA256       string
	// Size is the file's size in bytes.
	Size int64
	// NameErr is set for a file whose name starts like a scheduled
	// snapshot's but does not follow the pattern, or that is not a
	// regular file (the fields above, but Name, Path and Size, are then
	// empty).
	NameErr error
}

// Name returns the file name of a snapshot taken at t with header h whose
// bytes hash to sum.
func Name(t time.Time, h Header, sum []byte) string {
	return fmt.Sprintf("%s%s-%d-%s-%s%s", Prefix, t.UTC().Format(timeLayout), h.AppliedIndex, safeNodeID(h.NodeID), hex.EncodeToString(sum), Ext)
}

// safeNodeID is the node id as a file name part: letters, digits, '.',
// '_' and '-' stay, anything else becomes '_'.
func safeNodeID(id string) string {
	if id == "" {
		return "node"
	}
	b := []byte(id)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			b[i] = '_'
		}
	}
	if b[0] == '.' {
		b[0] = '_'
	}
	return string(b)
}

// tempPrefix starts the temporary files of nodeID's snapshots in progress.
func tempPrefix(nodeID string) string { return "." + Prefix + safeNodeID(nodeID) + "-" }

// ParseName reads a scheduled snapshot's name.
func ParseName(name string) (Entry, error) {
	m := nameRE.FindStringSubmatch(name)
	if m == nil {
		return Entry{}, fmt.Errorf("the name does not follow %s<time>-<index>-<node>-<sha256>%s", Prefix, Ext)
	}
	t, err := time.Parse(timeLayout, m[1])
	if err != nil {
		return Entry{}, fmt.Errorf("the time in the name is invalid: %v", err)
	}
	idx, err := strconv.ParseUint(m[2], 10, 64)
	if err != nil {
		return Entry{}, fmt.Errorf("the index in the name is invalid: %v", err)
	}
	return Entry{Name: name, Time: t, AppliedIndex: idx, NodeID: m[3], SHA256: m[4]}, nil
}

// Save writes a snapshot into dir under its final name, atomically: write
// (which returns the header it wrote) fills a temporary file in dir, which
// is synced, renamed to Name(now, header, its SHA-256) and the directory
// synced. On any error the temporary file is removed and no file is left
// under a snapshot's name. The file's mode is 0600.
func Save(dir, nodeID string, now time.Time, write func(io.Writer) (Header, error)) (Entry, error) {
	f, err := os.CreateTemp(dir, tempPrefix(nodeID)+"*"+tempExt)
	if err != nil {
		return Entry{}, err
	}
	tmp := f.Name()
	done := false
	defer func() {
		if !done {
			f.Close()
			os.Remove(tmp)
		}
	}()
	sum := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(f, sum), 256<<10)
	h, err := write(bw)
	if err != nil {
		return Entry{}, err
	}
	if err := bw.Flush(); err != nil {
		return Entry{}, err
	}
	if err := f.Sync(); err != nil {
		return Entry{}, err
	}
	info, err := f.Stat()
	if err != nil {
		return Entry{}, err
	}
	if err := f.Close(); err != nil {
		return Entry{}, err
	}
	name := Name(now, h, sum.Sum(nil))
	path := filepath.Join(dir, name)
	if err := os.Rename(tmp, path); err != nil {
		return Entry{}, err
	}
	done = true
	if err := fsutil.SyncDir(dir); err != nil {
		return Entry{}, fmt.Errorf("the snapshot %s is written, but syncing its directory failed: %w", name, err)
	}
	e, err := ParseName(name)
	if err != nil {
		return Entry{}, err
	}
	e.Path, e.Size = path, info.Size()
	return e, nil
}

// List returns the scheduled snapshots in dir, newest first (by the time
// in their names, then the applied index), followed by the files whose
// names start with Prefix but do not parse (NameErr set). Other files are
// not listed.
func List(dir string) ([]Entry, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var good, bad []Entry
	for _, de := range des {
		name := de.Name()
		if !strings.HasPrefix(name, Prefix) {
			continue
		}
		path := filepath.Join(dir, name)
		fi, err := de.Info()
		if err != nil {
			continue // removed meanwhile
		}
		e, perr := ParseName(name)
		if perr == nil && !fi.Mode().IsRegular() {
			perr = errors.New("not a regular file")
		}
		if perr != nil {
			bad = append(bad, Entry{Name: name, Path: path, Size: fi.Size(), NameErr: perr})
			continue
		}
		e.Path, e.Size = path, fi.Size()
		good = append(good, e)
	}
	slices.SortFunc(good, newestFirst)
	slices.SortFunc(bad, func(a, b Entry) int { return strings.Compare(a.Name, b.Name) })
	return append(good, bad...), nil
}

// newestFirst orders entries by time, then applied index, newest first.
func newestFirst(a, b Entry) int {
	if c := b.Time.Compare(a.Time); c != 0 {
		return c
	}
	if a.AppliedIndex != b.AppliedIndex {
		if a.AppliedIndex > b.AppliedIndex {
			return -1
		}
		return 1
	}
	return strings.Compare(b.Name, a.Name)
}

// Verify reads the whole file of e and checks that it hashes to the
// SHA-256 in its name and starts with a snapshot header whose applied
// index, node and time are those of its name; it returns the header. It needs no key: the MAC is checked at restore.
func Verify(e Entry) (*Header, error) {
	if e.NameErr != nil {
		return nil, e.NameErr
	}
	// Non-blocking, then checked: what List saw as a regular file may be
	// a named pipe by now, which a plain open would wait on forever.
	f, err := os.OpenFile(e.Path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return nil, err
	} else if !fi.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	sum := sha256.New()
	tr := io.TeeReader(bufio.NewReaderSize(f, 256<<10), sum)
	h, _, herr := ReadHeader(tr)
	if _, err := io.Copy(io.Discard, tr); err != nil {
		return nil, err
	}
	if hex.EncodeToString(sum.Sum(nil)) != e.SHA256 {
		return nil, ErrChecksum
	}
	if herr != nil {
		return nil, herr
	}
	// The checksum covers the bytes, not the name: a file renamed to a
	// newer time or index would pass as the newest.
	if h.AppliedIndex != e.AppliedIndex || safeNodeID(h.NodeID) != e.NodeID || h.CreatedUnix != e.Time.Unix() {
		return nil, fmt.Errorf("%w (its header: applied index %d, node %s, taken %s)", ErrRenamed, h.AppliedIndex, safeNodeID(h.NodeID), time.Unix(h.CreatedUnix, 0).UTC().Format(time.RFC3339))
	}
	return h, nil
}

// MaxClockSkew is how far ahead of a node's clock a snapshot's name may
// be dated and still count as taken in the past (the clocks of the nodes
// sharing a directory differ a little).
const MaxClockSkew = time.Minute

// inFuture reports whether e is dated after now, beyond MaxClockSkew: its
// time is not to be trusted (a clock that was ahead when it was taken, a
// clock stepped back since, or a planted file).
func inFuture(e Entry, now time.Time) bool { return e.Time.After(now.Add(MaxClockSkew)) }

// Newest returns the newest of entries (as List returns them) dated no
// later than now (within MaxClockSkew): a name dated in the future must
// not postpone the schedule nor make the newest snapshot look fresh.
func Newest(entries []Entry, now time.Time) (Entry, bool) {
	for _, e := range entries {
		if e.NameErr == nil && !inFuture(e, now) {
			return e, true
		}
	}
	return Entry{}, false
}

// Prune removes the scheduled snapshots of dir beyond the keep newest
// (files named otherwise are never touched) and returns the names it
// removed. Snapshots dated in the future of now (see Newest) rank below
// every other: the snapshot a node has just taken holds the newest state
// whatever the clocks say, and must not be the one retention removes. It
// goes on past a file it cannot remove and reports the failures together.
func Prune(dir string, keep int, now time.Time) ([]string, error) {
	entries, err := List(dir)
	if err != nil {
		return nil, err
	}
	// Stable: newest first within the trusted and the future-dated.
	slices.SortStableFunc(entries, func(a, b Entry) int {
		af, bf := inFuture(a, now), inFuture(b, now)
		switch {
		case af == bf:
			return 0
		case af:
			return 1
		}
		return -1
	})
	var removed []string
	var errs []error
	kept := 0
	for _, e := range entries {
		if e.NameErr != nil {
			continue
		}
		if kept < keep {
			kept++
			continue
		}
		if err := os.Remove(e.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, e.Name)
	}
	return removed, errors.Join(errs...)
}

// CleanTemp removes the temporary files nodeID left in dir when it
// stopped in the middle of a snapshot (a crash): only its own, so that
// nodes sharing a directory do not remove each other's snapshots in
// progress. Call it before the node takes its first snapshot.
func CleanTemp(dir, nodeID string) ([]string, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	prefix := tempPrefix(nodeID)
	var removed []string
	var errs []error
	for _, de := range des {
		rest, ok := strings.CutPrefix(de.Name(), prefix)
		if !ok {
			continue
		}
		digits, ok := strings.CutSuffix(rest, tempExt)
		if !ok || digits == "" || strings.Trim(digits, "0123456789") != "" {
			continue // another node's, whose id starts like this one's
		}
		if err := os.Remove(filepath.Join(dir, de.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, de.Name())
	}
	return removed, errors.Join(errs...)
}
