package fsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"

	"coffer/fsm/fsmpb"
)

// applyBatch applies cmds at the next indexes in one ApplyBatch (one bbolt
// transaction), as Raft does under load, and fails on any command's error.
func (h *harness) applyBatch(cmds []*fsmpb.Command) {
	h.t.Helper()
	logs := make([]*raft.Log, len(cmds))
	for i, c := range cmds {
		if c.LeaderTimeUnixNano == 0 {
			c.LeaderTimeUnixNano = h.now.UnixNano()
		}
		data, err := EncodeCommand(c)
		if err != nil {
			h.t.Fatal(err)
		}
		h.idx++
		logs[i] = &raft.Log{Index: h.idx, Term: 1, Type: raft.LogCommand, Data: data}
	}
	for i, resp := range h.f.ApplyBatch(logs) {
		if res := resp.(Result); res.Err != nil {
			h.t.Fatalf("%v %q: %v", cmds[i].Op, cmds[i].Path, res.Err)
		}
	}
}

// churn writes n secrets, overwrites each several times, then deletes the
// metadata (every version) of three in four, destroys versions of some of
// the rest and soft-deletes others: the state keeps a quarter of the
// secrets while the file keeps the pages of all of them.
func churn(h *harness, n int) {
	h.t.Helper()
	const batch = 250
	var cmds []*fsmpb.Command
	flush := func() {
		if len(cmds) > 0 {
			h.applyBatch(cmds)
			cmds = cmds[:0]
		}
	}
	add := func(c *fsmpb.Command) {
		cmds = append(cmds, c)
		if len(cmds) == batch {
			flush()
		}
	}
	path := func(i int) string { return fmt.Sprintf("secret/churn/%06d", i) }
	for round := 0; round < 4; round++ {
		h.now = h.now.Add(time.Second)
		for i := 0; i < n; i++ {
			add(&fsmpb.Command{Op: fsmpb.Op_OP_PUT, Path: path(i), Ciphertext: ctN(200 + i%64)})
		}
		flush()
	}
	for i := 0; i < n; i++ {
		switch i % 8 {
		case 0:
			add(versionsCmd(fsmpb.Op_OP_DESTROY, path(i), 1, 2))
		case 1:
			add(versionsCmd(fsmpb.Op_OP_DELETE, path(i), 4))
		default:
			add(&fsmpb.Command{Op: fsmpb.Op_OP_DELETE_METADATA, Path: path(i)})
		}
	}
	flush()
}

// liveBytes is the sum of the lengths of every bucket name, key and value
// of f's state: the live data, against which a snapshot's size is judged.
func liveBytes(t testing.TB, f *FSM) int64 {
	t.Helper()
	var n int64
	if err := f.view(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			n += int64(len(name))
			return b.ForEach(func(k, v []byte) error {
				n += int64(len(k) + len(v))
				return nil
			})
		})
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// compactLeftovers lists the compaction files next to the database at path.
func compactLeftovers(t testing.TB, path string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(filepath.Dir(path), compactTempPrefix(path)+"*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestSnapshotOfChurnedStateIsCompact: after overwrites, deletes and
// destroys the database file is mostly free pages; the snapshot carries
// none of them (at most 1.5× the live keys and values), restores into
// another FSM with every bucket byte-for-byte equal, and leaves no
// temporary file. The whole file, as snapshots were before, still
// restores to the same state.
func TestSnapshotOfChurnedStateIsCompact(t *testing.T) {
	h := newHarness(t, Options{})
	churn(h, 4000)
	fi, err := os.Stat(h.path)
	if err != nil {
		t.Fatal(err)
	}
	live := liveBytes(t, h.f)

	snap := snapshotBytes(t, h.f)
	whole := wholeFile(t, h.f)
	t.Logf("fsm.db %d bytes (tx size %d), live keys and values %d bytes, snapshot %d bytes (%.2f× live)",
		fi.Size(), len(whole), live, len(snap), float64(len(snap))/float64(live))
	if float64(len(snap)) > 1.5*float64(live) {
		t.Fatalf("snapshot is %d bytes, over 1.5× the %d bytes of live data", len(snap), live)
	}
	if len(whole) < 2*len(snap) {
		t.Fatalf("test set-up: the churned file (%d bytes) is not much larger than its compacted copy (%d)", len(whole), len(snap))
	}
	if left := compactLeftovers(t, h.path); len(left) != 0 {
		t.Fatalf("snapshot left temporary files: %v", left)
	}

	for name, data := range map[string][]byte{"compacted": snap, "whole file": whole} {
		dst := newHarness(t, Options{})
		if err := dst.f.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
			t.Fatalf("%s: Restore: %v", name, err)
		}
		if dst.f.AppliedIndex() != h.f.AppliedIndex() {
			t.Fatalf("%s: restored applied index %d, want %d", name, dst.f.AppliedIndex(), h.f.AppliedIndex())
		}
		if !bytes.Equal(deepDump(t, h.f), deepDump(t, dst.f)) {
			t.Fatalf("%s: restored state differs from the source", name)
		}
	}
	// The state continues identically on the restored copy.
	dst := newHarness(t, Options{})
	if err := dst.f.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
		t.Fatal(err)
	}
	dst.idx, dst.now = h.idx, h.now
	for _, x := range []*harness{h, dst} {
		x.mustOK(putCmd("secret/churn/000001", "after"))
		x.mustOK(putCmd("secret/churn/new", "new"))
	}
	if !bytes.Equal(deepDump(t, h.f), deepDump(t, dst.f)) {
		t.Fatal("states diverged after the restore")
	}
}

// wholeFile is the database file as of now, free pages and all: what a
// snapshot was before it was compacted.
func wholeFile(t testing.TB, f *FSM) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := f.view(func(tx *bolt.Tx) error {
		_, err := tx.WriteTo(&buf)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// deepDump serialises every bucket, nested ones included, with its
// sequence, every key and value, byte-exact and independent of the page
// layout.
func deepDump(t testing.TB, f *FSM) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := f.view(func(tx *bolt.Tx) error { return dumpTx(tx, &buf) }); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func dumpTx(tx *bolt.Tx, buf *bytes.Buffer) error {
	put := func(tag byte, b []byte) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		buf.WriteByte(tag)
		buf.Write(n[:])
		buf.Write(b)
	}
	var walk func(b *bolt.Bucket, depth int) error
	walk = func(b *bolt.Bucket, depth int) error {
		put('q', binary.BigEndian.AppendUint64(nil, b.Sequence()))
		return b.ForEach(func(k, v []byte) error {
			if child := b.Bucket(k); child != nil {
				put('b', k)
				if err := walk(child, depth+1); err != nil {
					return err
				}
				put('e', nil)
				return nil
			}
			put('k', k)
			put('v', v)
			return nil
		})
	}
	return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
		put('B', name)
		if err := walk(b, 0); err != nil {
			return err
		}
		put('E', nil)
		return nil
	})
}

// TestCompactCopiesEverything: nested buckets (three deep), sequences,
// empty values, large values on overflow pages and empty buckets all come
// through, with commits forced every few entries, including in the middle
// of a nested bucket.
func TestCompactCopiesEverything(t *testing.T) {
	dir := t.TempDir()
	src, err := bolt.Open(filepath.Join(dir, "src.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if err := src.Update(func(tx *bolt.Tx) error {
		for _, name := range []string{"a", "empty", "z"} {
			b, err := tx.CreateBucket([]byte(name))
			if err != nil {
				return err
			}
			if err := b.SetSequence(uint64(len(name)) * 1000); err != nil {
				return err
			}
			if name == "empty" {
				continue
			}
			for i := 0; i < 300; i++ {
				if err := b.Put([]byte(fmt.Sprintf("k%04d", i)), bytes.Repeat([]byte{byte(i)}, i%50)); err != nil {
					return err
				}
			}
			if err := b.Put([]byte("big"), bytes.Repeat([]byte("x"), 3*4096+7)); err != nil {
				return err
			}
			inner, err := b.CreateBucket([]byte("k0100/inner"))
			if err != nil {
				return err
			}
			if err := inner.SetSequence(7); err != nil {
				return err
			}
			for i := 0; i < 100; i++ {
				if err := inner.Put([]byte(strconv.Itoa(i)), []byte("value")); err != nil {
					return err
				}
			}
			deepest, err := inner.CreateBucket([]byte("deeper"))
			if err != nil {
				return err
			}
			if err := deepest.Put([]byte("leaf"), nil); err != nil {
				return err
			}
			if _, err := deepest.CreateBucket([]byte("empty-nested")); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	dst, err := bolt.Open(filepath.Join(dir, "dst.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	var commits int
	if err := src.View(func(tx *bolt.Tx) (err error) {
		commits, err = compactTx(tx, dst, 512)
		return err
	}); err != nil {
		t.Fatalf("compactTx: %v", err)
	}
	var want, got bytes.Buffer
	if err := src.View(func(tx *bolt.Tx) error { return dumpTx(tx, &want) }); err != nil {
		t.Fatal(err)
	}
	if err := dst.View(func(tx *bolt.Tx) error { return dumpTx(tx, &got) }); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(want.Bytes(), got.Bytes()) {
		t.Fatal("the compacted copy differs from its source")
	}
	// About 30 KiB of entries (with their overhead) in 512-byte parts.
	if commits < 40 {
		t.Fatalf("the copy was committed in %d parts, want one every 512 bytes", commits)
	}
}

// TestCompactionFilesAreRemoved: a copy a crash left is removed at Open;
// a snapshot whose sink fails, or whose writer fails part-way, leaves no
// copy behind.
func TestCompactionFilesAreRemoved(t *testing.T) {
	h := newHarness(t, Options{})
	populate(h, "a")
	stale := filepath.Join(filepath.Dir(h.path), compactTempPrefix(h.path)+"123456")
	if err := os.WriteFile(stale, []byte("half a copy"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Not ours: a file of another name stays.
	other := filepath.Join(filepath.Dir(h.path), "other.db.compact-1")
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	h.reopen()
	if left := compactLeftovers(t, h.path); len(left) != 0 {
		t.Fatalf("Open kept a stale compaction file: %v", left)
	}
	if _, err := os.Stat(other); err != nil {
		t.Fatalf("Open removed another database's file: %v", err)
	}

	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	if err := snap.Persist(&failingSink{}); err == nil {
		t.Fatal("Persist into a failing sink succeeded")
	}
	w := &failAfter{n: 4096}
	if _, err := snap.(io.WriterTo).WriteTo(w); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("WriteTo into a writer that fails part-way: %v", err)
	}
	if left := compactLeftovers(t, h.path); len(left) != 0 {
		t.Fatalf("failed snapshots left compaction files: %v", left)
	}
	// The snapshot is still good after the failures.
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	dst := newHarness(t, Options{})
	if err := dst.f.Restore(io.NopCloser(&sink)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(deepDump(t, h.f), deepDump(t, dst.f)) {
		t.Fatal("restored state differs")
	}
}

// failAfter accepts n bytes, then fails.
type failAfter struct{ n int }

func (w *failAfter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		k := w.n
		w.n = 0
		return k, errors.New("disk full")
	}
	w.n -= len(p)
	return len(p), nil
}

// TestCompactAtOpen: a database that is mostly free pages (after a mass
// delete) is compacted when it opens: the file shrinks, every bucket and
// the applied index stay byte-for-byte, the state goes on, and no
// temporary file is left; a compact file is left alone at the next open.
func TestCompactAtOpen(t *testing.T) {
	defer func(size int64) { compactAtOpenMinSize = size }(compactAtOpenMinSize)
	compactAtOpenMinSize = 1 << 20

	h := newHarness(t, Options{})
	churn(h, 4000)
	want := deepDump(t, h.f)
	index := h.f.AppliedIndex()
	before := fileSize(t, h.path)

	h.reopen()
	after := fileSize(t, h.path)
	t.Logf("fsm.db %d bytes before the open, %d after", before, after)
	if after*2 > before {
		t.Fatalf("fsm.db is %d bytes after the open, was %d: not compacted", after, before)
	}
	if !bytes.Equal(want, deepDump(t, h.f)) || h.f.AppliedIndex() != index {
		t.Fatal("compaction at open changed the state")
	}
	if left := compactLeftovers(t, h.path); len(left) != 0 {
		t.Fatalf("compaction left temporary files: %v", left)
	}
	h.mustOK(putCmd("secret/churn/000001", "after"))
	want = deepDump(t, h.f)

	// (The put grew the file by bbolt's allocation step: its size says
	// nothing; a rewrite would be a new file.)
	was, err := os.Stat(h.path)
	if err != nil {
		t.Fatal(err)
	}
	h.reopen()
	if now, err := os.Stat(h.path); err != nil || !os.SameFile(was, now) {
		t.Fatalf("a compact file was rewritten at open (%v)", err)
	}
	if !bytes.Equal(want, deepDump(t, h.f)) {
		t.Fatal("state lost across the second open")
	}
}

func fileSize(t testing.TB, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// TestListPageIsBoundedByItsLimit: a page of a prefix with very many
// children costs what its limit asks, not what the prefix holds: the
// first page, a page in the middle and the last one allocate about the
// same, whether the children are secrets or directories (each directory
// is skipped with one seek, not by walking its keys).
func TestListPageIsBoundedByItsLimit(t *testing.T) {
	h := newHarness(t, Options{NoSync: true})
	const n, limit = 20000, 100
	var cmds []*fsmpb.Command
	for i := 0; i < n; i++ {
		cmds = append(cmds, putCmd(fmt.Sprintf("big/s%06d", i), "v"))
		if i%10 == 0 { // a directory of ten secrets beside every tenth
			for j := 0; j < 10; j++ {
				cmds = append(cmds, putCmd(fmt.Sprintf("big/d%06d/%d", i, j), "v"))
			}
		}
		if len(cmds) >= 500 {
			h.applyBatch(cmds)
			cmds = cmds[:0]
		}
	}
	h.applyBatch(cmds)
	for _, after := range []string{"", "d010000/", "s010000", "s019950"} {
		var keys []string
		allocs := testing.AllocsPerRun(5, func() {
			var err error
			if keys, _, err = h.f.ListPage("big/", after, limit); err != nil {
				t.Fatal(err)
			}
		})
		if len(keys) == 0 || len(keys) > limit {
			t.Fatalf("after %q: %d keys", after, len(keys))
		}
		t.Logf("after %q: %d keys, %.0f allocations", after, len(keys), allocs)
		// A string per key and a seek past every directory (measured:
		// 1.5 allocations per secret, 7-11 per directory): a bound per
		// key of the page, an order below the prefix's 22,000 children.
		if allocs > 20*limit {
			t.Fatalf("after %q: a page of %d keys made %.0f allocations: it is not bounded by its limit", after, limit, allocs)
		}
	}
}

// TestCompactionLeftoversInDirWithGlobCharacters: the data directory's name
// is the operator's (-data-dir) and may hold characters a glob pattern
// treats specially: Open still starts, removes its own leftover copies and
// no file of a directory whose name the pattern would also match.
func TestCompactionLeftoversInDirWithGlobCharacters(t *testing.T) {
	root := t.TempDir()
	for _, name := range []string{"node[1]", "node[", "node*"} {
		dir := filepath.Join(root, name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "fsm.db")
		stale := path + ".compact-123"
		if err := os.WriteFile(stale, []byte("half a copy"), 0o600); err != nil {
			t.Fatal(err)
		}
		// A directory the unescaped pattern node[1] or node* matches.
		other := filepath.Join(root, "node1", "fsm.db.compact-9")
		if err := os.MkdirAll(filepath.Dir(other), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(other, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := Open(path, Options{Logger: testLogger(t)})
		if err != nil {
			t.Fatalf("Open in %q: %v", name, err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Open in %q kept its stale compaction file (%v)", name, err)
		}
		if _, err := os.Stat(other); err != nil {
			t.Errorf("Open in %q removed another directory's file: %v", name, err)
		}
	}
}

// TestCompactDamagedPageFailsCleanly: a database with a damaged page (its
// page type overwritten on disk) makes the compacted copy fail with an
// error, where bbolt panics: a snapshot or the compaction at Open fails,
// not the node.
func TestCompactDamagedPageFailsCleanly(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "src.db")
	src, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("a"))
		if err != nil {
			return err
		}
		for i := 0; i < 2000; i++ {
			if err := b.Put([]byte(fmt.Sprintf("k%05d", i)), bytes.Repeat([]byte("v"), 100)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	pageSize := src.Info().PageSize
	src.Close()

	// Every page but the two meta pages and the freelist gets an invalid
	// page type (the flags at offset 8 of its header).
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	freelist := binary.LittleEndian.Uint64(raw[16+4*4+16:]) // meta: magic, version, page size, flags, root bucket, freelist
	for id := 2; (id+1)*pageSize <= len(raw); id++ {
		if uint64(id) == freelist {
			continue
		}
		binary.LittleEndian.PutUint16(raw[id*pageSize+8:], 0xdead)
	}
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	src, err = bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatalf("the damaged file should still open (only its data pages are damaged): %v", err)
	}
	defer src.Close()
	tx, err := src.Begin(false)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	name := filepath.Join(dir, "copy.db")
	err = compactInto(tx, name, func(*bolt.DB) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("compacting a damaged database: %v, want an error saying it is damaged", err)
	}
}
