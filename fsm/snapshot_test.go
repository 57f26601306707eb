package fsm

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"

	"coffer/fsm/fsmpb"
)

// populate writes a little of everything.
func populate(h *harness, prefix string) {
	for i := 0; i < 12; i++ {
		h.now = h.now.Add(time.Second)
		c := putCmd(prefix+"/s", "v")
		c.RequestId = prefix + string(rune('a'+i))
		h.mustOK(c)
	}
	h.mustOK(putCmd(prefix+"/dir/t", "t"))
	h.mustOK(versionsCmd(fsmpb.Op_OP_DELETE, prefix+"/s", 5))
	h.mustOK(versionsCmd(fsmpb.Op_OP_DESTROY, prefix+"/s", 6))
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_PUT_METADATA, Path: prefix + "/m", CasRequired: true, MaxVersions: 3})
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, Sys: []*fsmpb.SysEntry{{Key: prefix + "/sys", Value: ct("x")}}})
}

func TestSnapshotRestoreFresh(t *testing.T) {
	src := newHarness(t, Options{})
	populate(src, "a")
	snap := snapshotBytes(t, src.f)

	dst := newHarness(t, Options{})
	if err := dst.f.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if dst.f.AppliedIndex() != src.f.AppliedIndex() {
		t.Fatalf("restored applied index %d, want %d", dst.f.AppliedIndex(), src.f.AppliedIndex())
	}
	if !bytes.Equal(dump(t, src.f), dump(t, dst.f)) {
		t.Fatal("restored state differs from the source")
	}
	// Both continue identically, idempotency table included.
	dst.now, dst.idx = src.now, src.idx
	for _, h := range []*harness{src, dst} {
		c := putCmd("a/s", "v")
		c.RequestId = "aa" // recorded by populate
		if res := h.apply(c); !res.Deduplicated {
			t.Fatalf("request_id not restored: %+v", res)
		}
		h.mustOK(putCmd("a/s", "after"))
	}
	if !bytes.Equal(dump(t, src.f), dump(t, dst.f)) {
		t.Fatal("states diverged after the restore")
	}
	// The restored file is the database: it survives a reopen.
	dst.reopen()
	if !bytes.Equal(dump(t, src.f), dump(t, dst.f)) {
		t.Fatal("restored state lost on reopen")
	}
	if _, err := os.Stat(restoreTempPath(dst.path)); !os.IsNotExist(err) {
		t.Fatalf("restore left its temp file: %v", err)
	}
}

func TestRestoreReplacesExistingState(t *testing.T) {
	src := newHarness(t, Options{})
	populate(src, "a")
	snap := snapshotBytes(t, src.f)

	dst := newHarness(t, Options{})
	populate(dst, "b")
	for i := 0; i < 30; i++ { // dst is ahead of the snapshot
		dst.mustOK(putCmd("b/more", "v"))
	}
	far := make(chan error, 1)
	go func() { far <- dst.f.WaitApplied(waitCtx(t), dst.f.AppliedIndex()+1000) }()
	ahead := dst.f.AppliedIndex()
	if ahead <= src.f.AppliedIndex() {
		t.Fatalf("test set-up: dst at %d is not ahead of the snapshot at %d", ahead, src.f.AppliedIndex())
	}

	if err := dst.f.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dump(t, src.f, bucketMeta), dump(t, dst.f, bucketMeta)) {
		t.Fatal("restore did not replace the state")
	}
	// Older data at a newer position: the applied index does not go back,
	// or readers holding a newer min_index would wait for ever.
	if dst.f.AppliedIndex() != ahead {
		t.Fatalf("applied index %d after restoring an older snapshot, want it kept at %d", dst.f.AppliedIndex(), ahead)
	}
	if err := dst.f.view(func(tx *bolt.Tx) error {
		persisted, _, err := readApplied(tx)
		if err == nil && persisted != ahead {
			t.Errorf("persisted applied index %d, want %d", persisted, ahead)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := dst.f.Get("b/s", 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("old data survived the restore: %v", err)
	}
	// Waiters beyond the restored index keep waiting until applies reach it.
	select {
	case err := <-far:
		t.Fatalf("waiter returned %v", err)
	default:
	}
	if err := dst.f.WaitApplied(waitCtx(t), src.f.AppliedIndex()); err != nil {
		t.Fatalf("waiter at the restored index: %v", err)
	}
	if err := dst.f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-far; !errors.Is(err, ErrClosed) {
		t.Fatalf("far waiter after close: %v", err)
	}
}

func TestRestoreWakesWaiters(t *testing.T) {
	src := newHarness(t, Options{})
	populate(src, "a")
	snap := snapshotBytes(t, src.f)
	dst := newHarness(t, Options{})
	done := make(chan error, 1)
	go func() { done <- dst.f.WaitApplied(waitCtx(t), src.f.AppliedIndex()) }()
	if err := dst.f.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("waiter after restore: %v", err)
	}
}

func TestRestoreRejectsGarbage(t *testing.T) {
	h := newHarness(t, Options{})
	populate(h, "a")
	before := dump(t, h.f)
	index := h.f.AppliedIndex()

	foreign := newHarness(t, Options{})
	foreignSnap := snapshotBytes(t, foreign.f)
	plain := plainBoltFile(t)

	for name, data := range map[string][]byte{
		"empty":     nil,
		"garbage":   bytes.Repeat([]byte("not a database"), 1000),
		"truncated": snapshotBytes(t, h.f)[:4096],
		"foreign":   plain,
	} {
		err := h.f.Restore(io.NopCloser(bytes.NewReader(data)))
		if !errors.Is(err, ErrInvalidSnapshot) {
			t.Errorf("%s: Restore = %v, want ErrInvalidSnapshot", name, err)
		}
		if !bytes.Equal(before, dump(t, h.f)) || h.f.AppliedIndex() != index {
			t.Fatalf("%s: a rejected snapshot changed the state", name)
		}
		if _, err := os.Stat(restoreTempPath(h.path)); !os.IsNotExist(err) {
			t.Fatalf("%s: temp file left behind: %v", name, err)
		}
	}
	// An empty coffer FSM is a valid snapshot (index 0).
	if err := h.f.Restore(io.NopCloser(bytes.NewReader(foreignSnap))); err != nil {
		t.Fatalf("restore of an empty FSM: %v", err)
	}
	if h.f.AppliedIndex() != index {
		t.Fatalf("applied index %d after restoring an empty state, want it kept at %d", h.f.AppliedIndex(), index)
	}
}

// TestSnapshotIsConsistentDuringApply takes a snapshot, keeps applying, and
// only then persists it: the snapshot holds the state at Snapshot time.
func TestSnapshotIsConsistentDuringApply(t *testing.T) {
	h := newHarness(t, Options{})
	populate(h, "a")
	want := dump(t, h.f)
	index := h.f.AppliedIndex()

	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 200; i++ { // enough to grow the file
		h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_PUT, Path: "grow/" + string(rune('a'+i%26)) + string(rune('a'+i/26)), Ciphertext: ct(string(bytes.Repeat([]byte{byte(i)}, 4095)))})
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	snap.Release() // idempotent

	dst := newHarness(t, Options{})
	if err := dst.f.Restore(io.NopCloser(&sink)); err != nil {
		t.Fatal(err)
	}
	if dst.f.AppliedIndex() != index || !bytes.Equal(want, dump(t, dst.f)) {
		t.Fatalf("snapshot saw later applies (index %d, want %d)", dst.f.AppliedIndex(), index)
	}
}

// TestRestoreWhileSnapshotOutstanding: Restore must not break a snapshot of
// the old state that Raft is still persisting.
func TestRestoreWhileSnapshotOutstanding(t *testing.T) {
	a := newHarness(t, Options{})
	populate(a, "a")
	b := newHarness(t, Options{})
	populate(b, "b")
	wantB := dump(t, b.f)
	snapA := snapshotBytes(t, a.f)

	pending, err := b.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	restored := make(chan error, 1)
	go func() { restored <- b.f.Restore(io.NopCloser(bytes.NewReader(snapA))) }()

	var sink memSink
	if err := pending.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	pending.Release()
	if err := <-restored; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dump(t, a.f), dump(t, b.f)) {
		t.Fatal("restore did not take effect")
	}
	c := newHarness(t, Options{})
	if err := c.f.Restore(io.NopCloser(&sink)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(wantB, dump(t, c.f)) {
		t.Fatal("the outstanding snapshot was corrupted by the restore")
	}
}

func TestPersistCancelsOnError(t *testing.T) {
	h := newHarness(t, Options{})
	populate(h, "a")
	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	sink := &failingSink{}
	if err := snap.Persist(sink); err == nil || !sink.cancelled {
		t.Fatalf("Persist = %v, cancelled = %v", err, sink.cancelled)
	}
}

type failingSink struct{ memSink }

func (s *failingSink) Write([]byte) (int, error) { return 0, errors.New("disk full") }

var _ raft.SnapshotSink = (*failingSink)(nil)

func TestSnapshotRoundTripKeepsResults(t *testing.T) {
	src := newHarness(t, Options{})
	populate(src, "a")
	snap := snapshotBytes(t, src.f)
	dst := newHarness(t, Options{})
	if err := dst.f.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"a/s", "a/dir/t"} {
		want, _ := src.f.Metadata(p)
		got, err := dst.f.Metadata(p)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("Metadata(%q) = %+v, %v; want %+v", p, got, err, want)
		}
	}
}

// plainBoltFile returns a valid bbolt database that is not a coffer state.
func plainBoltFile(t *testing.T) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "plain.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("other"))
		if err != nil {
			return err
		}
		return b.Put([]byte("k"), []byte("v"))
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestInspectSnapshot: a snapshot file that is whole passes and tells its
// applied index; truncated, empty, garbage
// and absurd-index files are refused with ErrInvalidSnapshot, never a
// fault (a truncated file used to make bbolt read past the end of its
// mapping: SIGBUS).
func TestInspectSnapshot(t *testing.T) {
	h := newHarness(t, Options{})
	h.mustOK(putCmd("s/a", "v"))
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, Sys: []*fsmpb.SysEntry{{Key: "core/keyring", Value: []byte("wrapped")}}})
	buf := bytes.NewBuffer(snapshotBytes(t, h.f))
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	info, err := InspectSnapshot(write("whole", buf.Bytes()))
	if err != nil || info.AppliedIndex != h.f.AppliedIndex() {
		t.Fatalf("whole: %+v %v", info, err)
	}
	absurdPath := write("absurd", buf.Bytes())
	db, err := bolt.Open(absurdPath, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keyAppliedIndex, encodeUint64(1<<64-1))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	// (A page corrupted in the middle is the snapshot MAC's to refuse,
	// before anything parses it: server/snapshot.go.)
	for name, path := range map[string]string{
		"truncated": write("truncated", buf.Bytes()[:buf.Len()/2]),
		"empty":     write("empty", nil),
		"garbage":   write("garbage", bytes.Repeat([]byte{0x5a}, 3*4096)),
		"absurd":    absurdPath,
	} {
		if _, err := InspectSnapshot(path); !errors.Is(err, ErrInvalidSnapshot) {
			t.Errorf("%s: %v, want ErrInvalidSnapshot", name, err)
		}
	}
}
